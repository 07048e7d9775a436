"""Deployments and notifications against a real `prefect server start` on loopback.

The test starts the server itself (SQLite in a temporary PREFECT_HOME), runs `make deploy`
against it, triggers a deployment and runs it with `prefect worker start --run-once`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from placeholder_api.server import make_server
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """`prefect server start` on a free loopback port; yields the env to talk to it."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
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
        yield env
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


@pytest.fixture(scope="module")
def deployed(prefect_server) -> dict[str, str]:
    """`make deploy` run once against the server; yields the server's env."""
    result = subprocess.run(
        ["make", "-C", str(ROOT), "deploy"],
        env=prefect_server,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return prefect_server


def test_make_deploy_schedules_every_deployment(deployed) -> None:
    prefect_server = deployed
    wanted = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    with _client(prefect_server) as client:
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
                assert directory == str(ROOT)
        crons = [
            s.schedule
            for d in wanted
            for s in client.read_deployment_by_name(f"placeholder-etl/{d['name']}").schedules
        ]
        assert any(getattr(s, "timezone", None) == "Europe/London" for s in crons)


def test_a_worker_runs_a_triggered_deployment(deployed, tmp_path) -> None:
    prefect_server = deployed
    out = tmp_path / "out"
    with _client(prefect_server) as client:
        deployment = client.read_deployment_by_name("placeholder-etl/daily-local")
        for other in client.read_deployments():  # keep scheduled runs out of --run-once
            for schedule in other.schedules:
                client.update_deployment_schedule(other.id, schedule.id, active=False)
    with make_server(users=15) as server:
        with _client(prefect_server) as client:
            run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters={
                    "api_url": server.url,
                    "output_dir": str(out),
                    "cluster": {"runner": "local"},
                    "fetch": {"cache_dir": str(tmp_path / "cache")},
                },
            )
        worker = subprocess.run(
            [BIN / "prefect", "worker", "start", "--pool", "placeholder-etl", "--run-once"],
            env=prefect_server,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
        assert server.stats()["requests"] == 2
    with _client(prefect_server) as client:
        assert client.read_flow_run(run.id).state.is_completed()
    (users,) = out.glob("users_[0-9]*.csv")
    assert len(users.read_text().splitlines()) == 16


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
    setup = run_cli("setup-alerts", "--webhook", webhook.url, env=prefect_server, timeout=120)
    assert setup.returncode == 0, setup.stderr[-2000:]
    assert webhook.url not in setup.stdout + setup.stderr
    with _client(prefect_server) as client:
        (automation,) = client.read_automations_by_name("placeholder-etl-failure-notification")
        assert automation.enabled
        assert automation.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    with make_server(users=5, fault="malformed") as server:
        result = run_cli(
            "run",
            "--api-url",
            server.url,
            "--runner",
            "local",
            "--no-cache",
            "--output-dir",
            str(tmp_path / "out"),
            env=prefect_server,
        )
    assert result.returncode == 1
    messages = webhook.wait_for(1, timeout=90)
    assert len(messages) == 1, messages
    assert "placeholder-etl: flow run" in messages[0]["text"]
    assert "Failed" in messages[0]["text"]
    assert "response is not JSON" in messages[0]["text"]
