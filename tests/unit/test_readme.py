"""The README says what the code does: its settings table and its layout."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import ROOT


def test_the_settings_table_is_generated_from_the_models() -> None:
    check = [sys.executable, str(ROOT / "tools" / "readme_settings.py"), "--check"]
    result = subprocess.run(check, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_every_file_the_layout_names_exists() -> None:
    """Each entry: a name (or ``a.py, b.py``) before its description; indented entries are
    inside the folder above them."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    parents: dict[int, str] = {}
    named = []
    for line in block.strip("\n").splitlines():
        depth = (len(line) - len(line.lstrip(" "))) // 2
        entry = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        for name in entry.split(", "):
            path = parents.get(depth - 1, "") + name if depth else name
            named.append(path)
            if name.endswith("/"):
                parents[depth] = path
    assert len(named) > 30
    missing = [name for name in named if not (ROOT / name).exists()]
    assert missing == []
