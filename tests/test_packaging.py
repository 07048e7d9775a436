"""The project's files agree with each other: pins, environment.yml, entry points, notebooks."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_dependency_is_pinned_exactly() -> None:
    project = _pyproject()["project"]
    pins = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert pins, "no dependencies declared"
    loose = [p for p in pins if "==" not in p]
    assert loose == []


def test_environment_yml_installs_the_same_pins_and_the_package() -> None:
    project = _pyproject()["project"]
    pins = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert python == ["python=3.11"]
    assert project["requires-python"] == ">=3.11"
    assert sorted(p for p in pip if p != "-e .") == sorted(pins)
    assert "-e ." in pip


def test_the_console_script_and_the_deployment_entrypoint_exist() -> None:
    assert _pyproject()["project"]["scripts"] == {"placeholder-etl": "placeholder_etl.cli:app"}
    source = (ROOT / "flows" / "etl.py").read_text()
    assert "from placeholder_etl.flow import etl" in source
