"""The README and docs/ say what the code does: the settings table, the layout, the links."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import ROOT


def test_the_settings_table_is_generated_from_the_models() -> None:
    """docs/configuration.md's table is what tools/settings_table.py writes."""
    check = [sys.executable, str(ROOT / "tools" / "settings_table.py"), "--check"]
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


def test_every_link_between_the_docs_resolves() -> None:
    """Relative links in README.md and docs/*.md name files that exist; every docs page is
    linked from the README."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 8
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in pages[1:] if f"](docs/{p.name})" not in readme]
    assert unlinked == []
