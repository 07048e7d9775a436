"""The layers stay apart: the core imports no Prefect, Dask or Jupyter; the test API imports
nothing of the pipeline; the command line's --help imports no Prefect; ``__all__`` is true."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import placeholder_api
import placeholder_etl
from tests.helpers import ROOT

HEAVY = ("prefect", "dask", "distributed", "prefect_dask", "IPython", "papermill", "matplotlib")


def _imported_by(code: str) -> set[str]:
    """Top-level packages a fresh interpreter has imported after running ``code``."""
    probe = f"{code}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def _modules(package) -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        if not info.name.endswith("__main__")
    ]


def test_the_core_imports_no_prefect_dask_or_jupyter() -> None:
    core = [m for m in _modules(placeholder_etl) if m.startswith("placeholder_etl.core.")]
    assert len(core) >= 10
    imported = _imported_by("; ".join(f"import {m}" for m in core))
    assert imported.isdisjoint(HEAVY), imported & set(HEAVY)


def test_the_command_line_imports_no_prefect_until_it_runs() -> None:
    imported = _imported_by("import placeholder_etl.cli")
    assert imported.isdisjoint(HEAVY), imported & set(HEAVY)


def test_the_test_api_is_a_package_of_its_own() -> None:
    imported = _imported_by("import placeholder_api, placeholder_api.cli")
    assert "placeholder_etl" not in imported
    assert imported.isdisjoint(HEAVY)


def _sources_outside(module_file: Path) -> str:
    """The project's code and notebooks, but for ``module_file``."""
    files = [
        path
        for folder in ("src", "tests", "flows", "notebooks", "benchmarks")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".ipynb") and path != module_file
    ]
    return "\n".join(path.read_text() for path in files)


@pytest.mark.parametrize("module", _modules(placeholder_etl) + _modules(placeholder_api))
def test_all_lists_what_the_module_defines_and_others_use(module) -> None:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    if names is None:
        return
    assert [name for name in names if not hasattr(mod, name)] == []
    elsewhere = _sources_outside(Path(mod.__file__).resolve())
    assert [name for name in names if not re.search(rf"\b{name}\b", elsewhere)] == []
