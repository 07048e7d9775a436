"""The base install is what a Dask worker needs: no Jupyter, and the flow imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

UV = Path(sys.executable).parent / "uv"


def test_the_base_install_has_no_jupyter_and_imports_the_flow(tmp_path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([UV, "pip", "install", "-q", "--python", python, ROOT], check=True, timeout=900)
    installed = subprocess.run(
        [UV, "pip", "list", "--python", python], capture_output=True, text=True, check=True
    ).stdout.lower()
    for extra in ("jupyterlab", "papermill", "nbconvert", "matplotlib", "dask-saturn", "s3fs"):
        assert f"\n{extra} " not in installed, extra
    probe = "import placeholder_etl.flow, placeholder_api; print('ok')"
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
