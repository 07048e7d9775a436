"""Installs that are not a checkout: the base install is what a Dask worker needs (no Jupyter,
and the flow imports); a built wheel runs everything the CLI offers, the report included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from placeholder_etl.core.results import Manifest
from tests.helpers import ROOT, kill_group

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


def _source_copy(target: Path) -> Path:
    """The files a build of this checkout sees (tracked, and new ones not ignored), links
    kept as links, copied to ``target``: the build writes nothing into the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not source.is_symlink() and not source.exists():  # deleted, not yet committed
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name, follow_symlinks=False)
    return target


def test_a_wheel_install_renders_the_report_outside_any_checkout(prefect_api_url, tmp_path):
    """`uv build` (an sdist, then the wheel from it, as pip does), the wheel with its
    `notebooks` extra in a fresh venv, then `placeholder-etl run --report` from a folder that
    is not a checkout, without this checkout on the path."""
    source = _source_copy(tmp_path / "source")
    dist = tmp_path / "dist"
    subprocess.run([UV, "build", "-q", "--out-dir", dist, source], check=True, timeout=600)
    (wheel,) = dist.glob("placeholder_etl-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, venv], check=True)
    python = venv / "bin" / "python"
    install = [UV, "pip", "install", "-q", "--python", python, f"{wheel}[notebooks]"]
    subprocess.run(install, check=True, timeout=900)
    shutil.rmtree(source)  # nothing left to fall back on

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    probe = "from placeholder_etl import report; print(report.notebooks_dir())"
    where = subprocess.run(
        [python, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the installed copy
    assert (Path(where) / "05-run-report.ipynb").read_bytes() == (
        ROOT / "notebooks" / "05-run-report.ipynb"
    ).read_bytes()

    command = [venv / "bin" / "placeholder-etl", "run", "--api-url", "bundled", "--report"]
    command += ["--output-dir", "out", "--cache-dir", str(tmp_path / "cache")]
    run = subprocess.Popen(
        command,
        cwd=elsewhere,
        env=env,  # PREFECT_API_URL: the session's Prefect server
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = run.communicate(timeout=600)
    finally:
        kill_group(run)  # on a timeout, or whatever the run left in its group
    assert run.returncode == 0, stderr[-3000:]
    out = elsewhere / "out"
    (manifest_file,) = out.glob("manifest_*.json")
    manifest = Manifest.read(str(manifest_file))
    (report,) = out.glob("report_*.html")
    assert report.name == f"report_{manifest.created}.html"
    assert f"report: {report}" in stdout
    html = report.read_text()
    assert manifest.tables["users"].file in html  # the headline lists every table
    assert html.count('src="data:image/png;base64') >= 1
