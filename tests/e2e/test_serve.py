"""`placeholder-etl serve` runs what the Prefect server asks it to, to completion."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import requests

from placeholder_etl.core.results import Manifest
from tests.helpers import kill_group, seed_transform


def _wait_for_deployment(client, name: str, serve: subprocess.Popen, log, timeout: float):
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert serve.poll() is None, log.read_text()[-3000:]
        try:
            return client.read_deployment_by_name(f"placeholder-etl/{name}")
        except ObjectNotFound:
            time.sleep(0.5)
    raise AssertionError(f"no deployment {name} after {timeout} s:\n{log.read_text()[-3000:]}")


def _wait_for_final_state(client, run_id, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.read_flow_run(run_id).state
        if state is not None and state.is_final():
            return state
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} not finished after {timeout} s: {state}")


def test_serve_runs_a_triggered_run_to_completion(prefect_api_url, api, tmp_path) -> None:
    from prefect.client.orchestration import get_client

    name = f"served-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "placeholder_etl", "serve", "--name", name]
    out = tmp_path / "out"
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        serve = subprocess.Popen(
            [*command, "--api-url", api.url, "--output-dir", str(out)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            # the served runner looks for runs every 2 s (default 10 s)
            env={**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "2"},
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        with get_client(sync_client=True) as client:
            deployment = _wait_for_deployment(client, name, serve, log, timeout=120)
            assert deployment.entrypoint == "placeholder_etl.flow.etl"
            assert deployment.parameters["api_url"] == api.url
            run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"fetch": {"cache_dir": str(tmp_path / "cache")}}
            )
            state = _wait_for_final_state(client, run.id, timeout=240)
        assert state.is_completed(), f"{state.type}: {state.message}\n{log.read_text()[-3000:]}"
    finally:
        kill_group(serve)

    (manifest_file,) = out.glob("manifest_*.json")
    manifest = Manifest.read(str(manifest_file))
    assert manifest.flow_run_id == str(run.id)
    assert manifest.resources == ["users"]
    users = out / manifest.tables["users"].file
    assert manifest.tables["users"].rows == 25
    expected = seed_transform(requests.get(f"{api.url}/users", timeout=10).json())
    assert users.read_text() == expected
