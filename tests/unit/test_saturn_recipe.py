"""The Saturn Cloud recipes against the current format.

``saturn.json`` and ``saturn-job.json`` are templates that name no repository; the recipes
checked here are the ones ``tools/saturn_recipes.py write`` makes of them for a repository.
"""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tools.saturn_recipes import (
    RECIPE_FILES,
    REPO_PLACEHOLDER,
    ROOT,
    SECRET_MARKERS,
    SECRET_NAME,
    JobRecipe,
    WorkspaceRecipe,
    is_cron,
    load_recipe,
    parse_recipe,
    pip_vcs_url,
    saturn_environment,
    write_recipes,
)

#: a repository URL for the tests (the .invalid top-level domain never resolves)
FORK = "https://git.example.invalid/you/placeholder-etl.git"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """The recipes as ``tools/saturn_recipes.py write --repo FORK`` writes them."""
    out = tmp_path_factory.mktemp("saturn")
    paths = write_recipes(out, repo=FORK)
    return {path.name: path for path in paths}


@pytest.fixture(params=["workspace", "job"])
def path(request, written) -> Path:
    """Each written recipe in turn."""
    return written[{"workspace": "saturn.json", "job": "saturn-job.json"}[request.param]]


@pytest.fixture
def workspace(written) -> Path:
    return written["saturn.json"]


@pytest.fixture
def job(written) -> Path:
    return written["saturn-job.json"]


def raw(path) -> dict[str, Any]:
    """The recipe as plain JSON."""
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", RECIPE_FILES)
def test_the_templates_say_which_url_to_set_and_do_not_validate_until_it_is(name) -> None:
    template = raw(ROOT / name)
    [repository] = template["spec"]["git_repositories"]
    assert repository["url"] == REPO_PLACEHOLDER
    assert f"git+{REPO_PLACEHOLDER}@main" in template["spec"]["start_script"]
    with pytest.raises(ValidationError, match="make saturn-recipes"):
        parse_recipe(template)
    assert "github.com" not in (ROOT / name).read_text()


def test_write_fills_in_the_repository_everywhere(written) -> None:
    for path in written.values():
        text = path.read_text()
        assert REPO_PLACEHOLDER not in text
        spec = load_recipe(path).spec
        [repository] = spec.git_repositories
        assert repository.url == FORK
        assert f'pip install "git+{FORK}@main"' in spec.start_script


def test_write_takes_the_checkouts_origin_and_names_a_missing_one(tmp_path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("saturn.json", "saturn-job.json", "environment.yml"):
        (checkout / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    with pytest.raises(SystemExit, match=r"no `origin` remote.*--repo URL"):
        write_recipes(tmp_path / "out", root=checkout)
    ssh = "git@git.example.invalid:you/placeholder-etl.git"
    subprocess.run(["git", "-C", str(checkout), "remote", "add", "origin", ssh], check=True)
    [workspace, _] = write_recipes(tmp_path / "out", root=checkout, branch="dev")
    spec = load_recipe(workspace).spec
    assert spec.git_repositories[0].url == ssh
    assert spec.git_repositories[0].reference == "dev"
    assert "git+ssh://git@git.example.invalid/you/placeholder-etl.git@dev" in spec.start_script


def test_write_refuses_a_url_saturn_cannot_clone(tmp_path) -> None:
    with pytest.raises(SystemExit) as refused:
        write_recipes(tmp_path, repo=str(ROOT))  # a path: fine for make deploy, not for Saturn
    assert str(refused.value) == (
        f"error: saturn.json for {ROOT}: workspace.spec.git_repositories.0.url: "
        f"'{ROOT}' is not an https or ssh git URL Saturn can clone"
    )  # one line, no pydantic boilerplate


def test_the_command_line_writes_the_recipes(tmp_path) -> None:
    options = ["--out", str(tmp_path), "--repo", FORK]
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "saturn_recipes.py"), "write", *options],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(RECIPE_FILES)
    assert done.stdout.split() == [str(tmp_path / name) for name in RECIPE_FILES]


@pytest.mark.parametrize(
    ("repo", "pip"),
    [
        (FORK, f"git+{FORK}"),
        ("ssh://git@host.invalid/a/b.git", "git+ssh://git@host.invalid/a/b.git"),
        ("git@host.invalid:a/b.git", "git+ssh://git@host.invalid/a/b.git"),
    ],
)
def test_pip_vcs_url(repo: str, pip: str) -> None:
    assert pip_vcs_url(repo) == pip


def walk(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every dict key and every string in ``value``, with where it is."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{where}.{key} (key)", str(key)
            yield from walk(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, f"{where}[{index}]")
    elif isinstance(value, str):
        yield where, value


def inline_secrets(data: dict[str, Any]) -> list[str]:
    """Places in a recipe that look like a credential written inline."""
    found = [
        f"{where}: contains {marker!r}"
        for where, text in walk(data)
        for marker in SECRET_MARKERS
        if marker in text
    ]
    env = data.get("spec", {}).get("environment_variables") or {}
    found += [f"environment_variables.{name}" for name in env if SECRET_NAME.search(name)]
    return found


def test_recipe_validates_in_the_current_format(path) -> None:
    recipe = load_recipe(path)
    assert recipe.schema_version == "2025.10.01"
    assert set(raw(path)) <= {"schema_version", "type", "spec"}, "`state` is read-only"
    assert recipe.spec.name.startswith("placeholder-etl")
    assert recipe.spec.instance_type
    assert recipe.spec.disk_space == "10Gi"


def test_workspace_and_job_types(workspace, job) -> None:
    workspace, job = load_recipe(workspace), load_recipe(job)
    assert isinstance(workspace, WorkspaceRecipe)
    assert workspace.spec.name == "placeholder-etl"
    assert workspace.spec.ide == "jupyter"
    assert workspace.spec.auto_shutoff == "1 hour"
    assert isinstance(job, JobRecipe)
    assert job.spec.name != workspace.spec.name
    assert job.spec.schedule == "0 6 * * *"
    assert job.spec.concurrency_policy == "Forbid"
    assert job.spec.retries == 1
    command = shlex.split(job.spec.command)
    assert command[:2] == ["placeholder-etl", "run"]
    for option, value in [
        ("--runner", "dask"),
        ("--dask-cluster", "saturn"),
        ("--output-dir", f"{job.spec.working_directory}/output"),
    ]:
        assert command[command.index(option) + 1] == value


def test_job_and_workspace_share_the_environment(workspace, job) -> None:
    """Everything but the resource-specific fields is the same in both recipes."""
    workspace, job = raw(workspace)["spec"], raw(job)["spec"]
    own = {"name", "description", "ide", "auto_shutoff", "command", "schedule"}
    own |= {"concurrency_policy", "retries"}
    assert {k: v for k, v in workspace.items() if k not in own} == {
        k: v for k, v in job.items() if k not in own
    }


def test_dask_cluster(path) -> None:
    cluster = load_recipe(path).spec.dask_cluster
    assert cluster is not None
    assert cluster.num_workers >= 1
    assert cluster.scheduler.instance_type == "large"
    assert cluster.worker.instance_type == "large"
    assert cluster.worker.num_processes == 1
    assert cluster.worker.num_threads == 2
    assert cluster.worker.use_spot_instances is False


def test_conda_installs_environment_yml_and_start_script_installs_package(path) -> None:
    spec = load_recipe(path).spec
    conda = spec.extra_packages.conda
    assert conda.use_mamba is True
    assert conda.install is None
    expected = saturn_environment((ROOT / "environment.yml").read_text())
    assert conda.environment_yml == expected, (
        "the recipe's environment is out of date: run `python tools/saturn_recipes.py sync`"
    )
    assert "-e ." not in conda.environment_yml
    script = spec.start_script or ""
    assert f"pip install -e {spec.working_directory}" in script
    assert f"git+{FORK}@main" in script  # Dask workers have no clone


def test_saturn_environment_drops_only_the_local_package() -> None:
    text = "dependencies:\n  - pip\n  - pip:\n      - pandas==3.1.1\n      - -e .\n"
    assert saturn_environment(text) == "dependencies:\n  - pip\n  - pip:\n      - pandas==3.1.1\n"


def test_git_repository_is_the_working_directory(path) -> None:
    spec = load_recipe(path).spec
    assert spec.working_directory == "/home/jovyan/workspace/placeholder-etl"
    [repo] = spec.git_repositories
    assert repo.path == spec.working_directory
    assert repo.url == FORK
    assert (repo.reference, repo.reference_type) == ("main", "branch")
    assert repo.on_restart == "preserve changes"


def test_no_inline_secrets(path) -> None:
    data = raw(path)
    assert inline_secrets(data) == []
    spec = load_recipe(path).spec
    attached = {s.location: s for s in spec.secrets if s.attachment_type == "environment_variable"}
    assert {"PREFECT_API_KEY", "PREFECT_API_URL", "PLACEHOLDER_ETL_NOTIFY_WEBHOOK"} <= set(attached)
    assert not set(attached) & set(spec.environment_variables)
    env = spec.environment_variables
    assert env["PLACEHOLDER_ETL_API_URL"] == "https://jsonplaceholder.typicode.com"
    assert env["PLACEHOLDER_ETL_OUTPUT_DIR"] == f"{spec.working_directory}/output"


def test_inline_secret_check_catches_credentials(workspace) -> None:
    data = copy.deepcopy(raw(workspace))
    data["spec"]["environment_variables"]["PREFECT_API_KEY"] = "pnu_0123456789abcdef"
    data["spec"]["start_script"] += "curl -H 'Authorization: Bearer abc' https://x\n"
    found = inline_secrets(data)
    assert any("PREFECT_API_KEY" in f for f in found)
    assert any("'pnu_'" in f for f in found)
    assert any("'Bearer'" in f for f in found)


# --- the model rejects broken recipes ---------------------------------------------------------


def broken(path, change) -> dict[str, Any]:
    """A copy of the recipe at ``path`` with ``change(spec)`` applied."""
    data = copy.deepcopy(raw(path))
    change(data["spec"])
    return data


@pytest.mark.parametrize(
    ("change", "error"),
    [
        pytest.param(
            lambda s: s.update(instance_typ=s.pop("instance_type")), "instance_typ", id="typo"
        ),
        pytest.param(lambda s: s.pop("instance_type"), "instance_type", id="no-instance-type"),
        pytest.param(lambda s: s.pop("image"), "image", id="no-image"),
        pytest.param(lambda s: s.update(name="Placeholder ETL"), "name", id="name-not-slug"),
        pytest.param(
            lambda s: s["dask_cluster"]["worker"].update(num_thread=2), "num_thread", id="dask-typo"
        ),
        pytest.param(
            lambda s: s["dask_cluster"].update(num_workers=0), "num_workers", id="0-workers"
        ),
        pytest.param(lambda s: s.update(disk_space="10 GB"), "disk_space", id="disk-space"),
        pytest.param(lambda s: s.update(image={"name": "x"}), "image", id="image-no-version"),
        pytest.param(
            lambda s: s["extra_packages"]["conda"].update(install="pandas"),
            "conda",
            id="conda-both",
        ),
        pytest.param(
            lambda s: s["git_repositories"][0].update(on_restart="keep"), "on_restart", id="git"
        ),
        pytest.param(
            lambda s: s["secrets"][0].update(value="pnu_x"), "value", id="secret-with-value"
        ),
        pytest.param(
            lambda s: s["secrets"][0].update(attachment_type="env"), "attachment_type", id="secret"
        ),
        pytest.param(lambda s: s.update(ide="emacs"), "ide", id="ide"),
    ],
)
def test_model_rejects_broken_workspace(change, error: str, workspace) -> None:
    with pytest.raises(ValidationError, match=error):
        parse_recipe(broken(workspace, change))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        pytest.param(lambda s: s.pop("command"), "command", id="no-command"),
        pytest.param(lambda s: s.update(schedule="every day"), "cron", id="bad-cron"),
        pytest.param(lambda s: s.update(schedule="0 25 * * *"), "cron", id="hour-25"),
        pytest.param(lambda s: s.update(concurrency_policy="forbid"), "concurrency", id="policy"),
        pytest.param(lambda s: s.update(ide="jupyter"), "ide", id="job-has-no-ide"),
    ],
)
def test_model_rejects_broken_job(change, error: str, job) -> None:
    with pytest.raises(ValidationError, match=error):
        parse_recipe(broken(job, change))


def test_model_rejects_old_or_unknown_formats(workspace) -> None:
    data = raw(workspace)
    for version in ("2022.08.01", "2025-10-01", "2025.13.01"):
        with pytest.raises(ValidationError, match="schema_version"):
            parse_recipe({**data, "schema_version": version})
    with pytest.raises(ValidationError, match="type"):
        parse_recipe({**data, "type": "notebook"})
    with pytest.raises(ValidationError, match="type"):  # the old flat format has no type
        parse_recipe({"schema_version": "2022.08.01", "name": "x", "jupyter_server": {}})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PREFECT_API_KEY", "abc"),
        ("SATURN_TOKEN", "abc"),
        ("PLACEHOLDER_ETL_NOTIFY_WEBHOOK", "https://example.invalid/hook"),
        ("DB_PASSWORD", "hunter2"),
        ("PREFECT_API_URL", "https://x.invalid/?auth=Bearer abc"),
        ("NOTIFY", "https://hooks.slack.com/services/T0/B0/x"),
    ],
)
def test_model_rejects_inline_secret_env_var(name: str, value: str, workspace) -> None:
    data = broken(workspace, lambda s: s["environment_variables"].update({name: value}))
    with pytest.raises(ValidationError, match=name):
        parse_recipe(data)
    assert inline_secrets(data)


@pytest.mark.parametrize(
    ("expression", "valid"),
    [
        ("0 6 * * *", True),
        ("*/15 0-23 1,15 JAN-DEC MON-FRI", True),
        ("0 6 * *", False),
        ("60 6 * * *", False),
        ("0 6 * * 8", False),
        ("0 6 5-1 * *", False),
        ("@daily", False),
    ],
)
def test_cron(expression: str, valid: bool) -> None:
    assert is_cron(expression) is valid
