"""The project's files agree with each other: pins, extras, environment.yml, entry points."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch

import yaml

from tests.helpers import ROOT


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins() -> list[str]:
    """Every third-party requirement: the base install and every extra."""
    project = _project()
    extras = [r for reqs in project["optional-dependencies"].values() for r in reqs]
    return [r for r in project["dependencies"] + extras if not r.startswith("placeholder-etl")]


def test_every_dependency_is_pinned_exactly() -> None:
    assert _pins(), "no dependencies declared"
    assert [p for p in _pins() if "==" not in p] == []


def test_the_base_install_is_what_a_dask_worker_needs() -> None:
    """Jupyter, papermill, plotting and Saturn's client are extras, never the base."""
    project = _project()
    base = {r.split("==")[0] for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert not base & {"jupyterlab", "papermill", "nbconvert", "ipykernel", "matplotlib"}
    assert "dask-saturn" not in base
    assert {r.split("==")[0] for r in extras["notebooks"]} >= {"jupyterlab", "papermill"}
    assert "placeholder-etl[notebooks,saturn,s3]" in extras["dev"]  # the tests need everything


def test_environment_yml_installs_the_same_pins_and_the_package() -> None:
    project = _project()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert python == ["python=3.11"]
    assert project["requires-python"] == ">=3.11"
    assert sorted(p for p in pip if not p.startswith("-e ")) == sorted(set(_pins()))
    assert "-e .[notebooks,saturn,s3]" in pip


def test_the_console_scripts_and_the_deployment_entrypoint_exist() -> None:
    assert _project()["scripts"] == {
        "placeholder-etl": "placeholder_etl.cli:main",
        "placeholder-api": "placeholder_api.cli:main",
    }
    source = (ROOT / "flows" / "etl.py").read_text()
    assert "from placeholder_etl.flow import etl" in source


def test_the_report_notebook_ships_with_the_package_as_one_copy() -> None:
    """The package's report notebook (package data, so --report works from a wheel) is a link
    to notebooks/05-run-report.ipynb, the copy people edit; the default report finds it."""
    from placeholder_etl.report import REPORT_NOTEBOOK, notebooks_dir

    shipped = ROOT / "src" / "placeholder_etl" / "notebooks" / REPORT_NOTEBOOK
    assert shipped.is_symlink()
    assert shipped.resolve() == (ROOT / "notebooks" / REPORT_NOTEBOOK).resolve()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["placeholder_etl"]
    assert any(fnmatch(f"notebooks/{REPORT_NOTEBOOK}", pattern) for pattern in patterns)
    assert (notebooks_dir() / REPORT_NOTEBOOK).resolve() == shipped.resolve()
