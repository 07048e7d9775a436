"""`make server`, `make deploy` and every deployment run by a worker, offline, from a fresh clone.

The module starts `make server` on a free loopback port (SQLite in a temporary PREFECT_HOME),
clones this checkout (its last commit) and runs `make deploy` in the clone against that
server, then runs each deployment of prefect.yaml once through `prefect worker start
--run-once`: the *-local ones with this environment (a worker with a checkout), daily-git with
a Python of its own that has the dependencies and another copy of the package (this checkout's
src/, as an editable install puts it), so the run must use its fresh clone's code and leave that
Python's packages (`pip freeze`) as they were.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from placeholder_api.server import make_server
from tests.helpers import listening_sockets, make_command, process_tree, run_cli, run_etl

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = [
    d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
]
# What `make deploy` works out from the checkout it runs in unless the environment sets it.
DEPLOY_SETTINGS = ("PLACEHOLDER_ETL_REPO", "PLACEHOLDER_ETL_BRANCH")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


@dataclass(frozen=True)
class Server:
    """A running `make server`: its process (make, the leader of its own group) and the env
    that talks to it."""

    pid: int
    env: dict[str, str]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[Server]:
    """`make server PREFECT_PORT=<free port>`, stopped (its whole process group) at the end."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for inherited in ("PREFECT_API_URL", *DEPLOY_SETTINGS):
        env.pop(inherited, None)
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        make_command("server", f"PREFECT_PORT={port}"),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
            assert process.poll() is None, (home / "server.log").read_text()[-3000:]
        else:
            pytest.fail("prefect server did not start in 120 s")
        yield Server(process.pid, {**env, "PREFECT_API_URL": url})
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _client(env: dict[str, str]):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(env["PREFECT_API_URL"])


def test_prefect_server_loopback_only_and_its_ui_talks_to_its_own_port(prefect_server) -> None:
    api = prefect_server.env["PREFECT_API_URL"]
    port = int(api.split(":")[-1].split("/")[0])
    settings = requests.get(api.removesuffix("/api") + "/ui-settings", timeout=10).json()
    assert settings["api_url"] == api  # not the default port 4200
    sockets = listening_sockets(process_tree(prefect_server.pid))
    assert ("127.0.0.1", port) in sockets
    assert {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone of this checkout (its last commit: commit what you want tested); its origin
    is this checkout, its branch the current one."""
    target = tmp_path_factory.mktemp("fresh") / "placeholder-etl"
    _git("clone", "--quiet", str(ROOT), str(target), cwd=ROOT)
    return target


@pytest.fixture(scope="module")
def deployed(prefect_server, clone) -> dict[str, str]:
    """`make deploy` run once in the clone against the server; yields the server's env."""
    result = subprocess.run(
        make_command("deploy", directory=clone),
        env=prefect_server.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # neither the Makefile's warnings nor Prefect's ("WARNING | prefect.utilities.templating -
    # Value for placeholder 'clone.directory' not found": a pull step's output in prefect.yaml)
    output = result.stdout + result.stderr
    assert "warning" not in output.lower(), output[-3000:]
    return prefect_server.env


def test_make_deploy_schedules_every_deployment(deployed, clone) -> None:
    wanted = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    with _client(deployed) as client:
        pool = client.read_work_pool("placeholder-etl")
        assert pool.type == "process"
        for spec in wanted:
            deployment = client.read_deployment_by_name(f"placeholder-etl/{spec['name']}")
            assert deployment.work_pool_name == "placeholder-etl"
            assert deployment.entrypoint == "flows/etl.py:etl"
            assert deployment.schedules, spec["name"]
            assert all(s.active for s in deployment.schedules), spec["name"]
            assert set(deployment.parameters) >= {"api_url", "output_dir"}
            if spec["name"].endswith("-local"):
                (step,) = deployment.pull_steps
                directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
                assert directory == str(clone)
            else:
                clone_step = deployment.pull_steps[0]["prefect.deployments.steps.git_clone"]
                assert clone_step["repository"] == str(ROOT)  # the clone's origin
                assert clone_step["branch"] == _git("branch", "--show-current", cwd=clone)
        crons = [
            s.schedule
            for d in wanted
            for s in client.read_deployment_by_name(f"placeholder-etl/{d['name']}").schedules
        ]
        assert any(getattr(s, "timezone", None) == "Europe/London" for s in crons)


def test_make_deploy_clones_origin_or_else_the_checkout_itself(clone, tmp_path) -> None:
    """What `make deploy` tells daily-git to clone (dry run: nothing is deployed)."""
    lonely = tmp_path / "no-origin"
    _git("clone", "--quiet", str(clone), str(lonely), cwd=tmp_path)
    _git("remote", "remove", "origin", cwd=lonely)
    own = {k: v for k, v in os.environ.items() if k not in DEPLOY_SETTINGS}
    elsewhere = "https://git.example.org/fork.git"
    for checkout, repository, env in [
        (clone, ROOT, own),
        (lonely, lonely, own),
        (clone, elsewhere, {**own, "PLACEHOLDER_ETL_REPO": elsewhere}),  # the user's choice
    ]:
        dry = subprocess.run(
            make_command("-n", "deploy", directory=checkout),
            env={**env, "PREFECT_API_URL": "http://127.0.0.1:9/api"},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert f"daily-git clones {repository} branch " in dry.stdout
        assert f"PLACEHOLDER_ETL_REPO='{repository}'" in dry.stdout  # what prefect deploy gets
    assert "github.com" not in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("target", ["deploy", "serve"])
def test_make_targets_that_need_a_lasting_server_say_so_without_one(target, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    refused = subprocess.run(
        make_command(target),
        env={**env, "PREFECT_HOME": str(tmp_path / "prefect-home")},  # no profile setting either
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[0] == (
        "error: set PREFECT_API_URL (make server) or run 'prefect cloud login' first"
    )
    assert refused.stdout == ""  # nothing started


@pytest.fixture
def python_with_another_copy(tmp_path) -> Path:
    """A Python with this environment's dependencies and this checkout's ``src/`` on its path,
    as an editable install of this checkout puts them, but not the deployment's clone.

    A venv whose .pth files add this environment's site-packages and ``ROOT/src`` as plain
    paths (the editable install's own .pth in site-packages is not processed).
    """
    venv = tmp_path / "worker-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(purelib) / "dependencies.pth").write_text("\n".join(paths) + "\n")
    (Path(purelib) / "checkout.pth").write_text(f"{ROOT / 'src'}\n")
    probe = subprocess.run(
        [
            python,
            "-c",
            "import prefect, pandas, pip, placeholder_etl; print(placeholder_etl.__file__)",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert Path(probe.stdout.strip()).parent == ROOT / "src" / "placeholder_etl"
    return python


def _pip_freeze(python: Path, env: dict[str, str]) -> str:
    return subprocess.run(
        [python, "-m", "pip", "freeze", "--all"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def _code_of_run(client, run_id) -> Path:
    """Where the run's placeholder_etl was imported from (the flow's first log line)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    found = [
        m for log in logs if (m := re.fullmatch(r"placeholder-etl \S+ from (.+)", log.message))
    ]
    assert len(found) == 1, [log.message for log in logs]
    return Path(found[0].group(1))


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_every_deployment_runs_through_a_worker(name, deployed, clone, tmp_path, request) -> None:
    """Each deployment, as deployed, run once by a worker on a work queue of this test's own:
    the *-local ones run their checkout's code; daily-git runs its clone's and installs nothing
    into the worker's Python."""
    if name.endswith("-git"):
        python = request.getfixturevalue("python_with_another_copy")
    else:
        python = Path(sys.executable)
    packages = _pip_freeze(python, deployed)
    queue = f"test-{name}-{uuid.uuid4().hex[:8]}"  # no other run (scheduled ones) on it
    out = tmp_path / "out"
    with make_server(users=15) as server:
        with _client(deployed) as client:
            deployment = client.read_deployment_by_name(f"placeholder-etl/{name}")
            run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters={
                    "api_url": server.url,
                    "output_dir": str(out),
                    "fetch": {"cache_dir": str(tmp_path / "cache")},
                },
                work_queue_name=queue,
            )
        start = ["worker", "start", "--pool", "placeholder-etl", "--work-queue", queue]
        worker = subprocess.run(
            [python, "-m", "prefect", *start, "--run-once"],
            env=deployed,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )
        logs = worker.stdout[-4000:] + worker.stderr[-4000:]
        assert worker.returncode == 0, logs
    with _client(deployed) as client:
        state = client.read_flow_run(run.id).state
        code = _code_of_run(client, run.id)
    assert state.is_completed(), f"{state.type}: {state.message}\n{logs}"
    (users,) = out.glob("users_[0-9]*.csv")
    assert len(users.read_text().splitlines()) == 16
    if deployment.parameters["resources"] == "all":
        (activity,) = out.glob("user_activity_[0-9]*.csv")
        assert len(activity.read_text().splitlines()) == 16
    assert _pip_freeze(python, deployed) == packages
    if name.endswith("-git"):  # a clone of the clone's origin (this checkout), made for the run
        assert code.parts[-2:] == ("src", "placeholder_etl"), code
        assert code.parents[1].name.startswith(ROOT.name), code  # git_clone adds the branch
        assert code.parents[1] not in (ROOT, clone), code
        assert not code.exists(), code  # the worker removed it after the run
    else:
        assert code == clone / "src" / "placeholder_etl"


def test_a_deployment_run_with_a_bad_setting_is_refused_naming_it(deployed, tmp_path) -> None:
    """The server checks parameters against the flow's schema before any run starts."""
    from prefect.exceptions import PrefectHTTPStatusError

    with make_server(users=5) as server, _client(deployed) as client:
        deployment = client.read_deployment_by_name("placeholder-etl/daily-local")
        with pytest.raises(PrefectHTTPStatusError) as refused:
            client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"api_url": server.url, "fetch": {"task_retries": -1}},
            )
        assert server.stats()["requests"] == 0
    text = refused.value.response.text
    assert "fetch.task_retries" in text
    assert "less than the minimum of 0" in text


def test_the_server_side_automation_notifies_on_failure(prefect_server, tmp_path, webhook):
    env = prefect_server.env
    setup = run_cli("setup-alerts", "--webhook", webhook.url, env=env, timeout=120)
    assert setup.returncode == 0, setup.stderr[-2000:]
    assert webhook.url not in setup.stdout + setup.stderr
    with _client(env) as client:
        (automation,) = client.read_automations_by_name("placeholder-etl-failure-notification")
        assert automation.enabled
        assert automation.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    with make_server(users=5, fault="malformed") as server:
        result = run_etl(server.url, tmp_path / "out", env=env, runner="local")
    assert result.returncode == 1
    messages = webhook.wait_for(1, timeout=90)
    assert len(messages) == 1, messages
    assert "placeholder-etl: flow run" in messages[0]["text"]
    assert "Failed" in messages[0]["text"]
    assert "response is not JSON" in messages[0]["text"]
