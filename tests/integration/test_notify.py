"""Failure notifications: the flow's hook posts one Slack-compatible message, never hides errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from placeholder_api.server import make_server
from placeholder_etl.notify import failure_text, post_webhook
from tests.helpers import WebhookReceiver, kill_group, run_etl

pytestmark = pytest.mark.usefixtures("prefect_api_url")


def test_failure_text_names_flow_task_error_and_link() -> None:
    text = failure_text(
        "placeholder-etl",
        "brave-otter",
        "Failed",
        "extract users p1-1",
        "users page 2 from http://x: response is not JSON",
        "http://ui/runs/1",
    )
    assert text.splitlines() == [
        ":rotating_light: Flow run `placeholder-etl/brave-otter` failed.",
        "Failed task: `extract users p1-1`",
        "Error: users page 2 from http://x: response is not JSON",
        "<http://ui/runs/1|Open the run in Prefect>",
    ]


def test_a_failing_run_posts_one_message(tmp_path, webhook) -> None:
    with make_server(users=30, fault="malformed", fault_page=2) as server:
        result = run_etl(
            *(server.url, tmp_path / "out", "--verbose", "--page-size", "10"),
            *("--pages-per-task", "1", "--notify-webhook", webhook.url),
            cache=tmp_path / "cache",
            runner="local",
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: users page 2 from ")
    (message,) = webhook.wait_for(1, timeout=5)
    assert set(message) == {"text"}
    text = message["text"]
    assert "Flow run `placeholder-etl/" in text
    assert " failed." in text
    assert "Failed task: `extract users p2-2`" in text
    assert (
        f"Error: users page 2 from {server.url}/users?_page=2&_limit=10: response is not JSON"
        in text
    )
    assert webhook.url not in result.stdout + result.stderr  # a secret: never logged


def test_a_crashed_run_posts_one_message(tmp_path, webhook) -> None:
    """The flow process is told to stop (SIGTERM, as a worker or a container runtime does)
    while it fetches: the run is Crashed, and the on_crashed hook posts the message."""
    out = tmp_path / "out"
    with make_server(users=200, latency=0.5) as server:
        run = subprocess.Popen(
            [
                *(sys.executable, "-m", "placeholder_etl", "run", "--api-url", server.url),
                *("--runner", "local", "--page-size", "10", "--in-flight", "1"),
                *("--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")),
            ],
            env={**os.environ, "PLACEHOLDER_ETL_NOTIFY_WEBHOOK": webhook.url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while server.stats()["pages"].get("users", {}).get("2") is None:  # pages, not the count
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, "the run fetched no page"
                time.sleep(0.05)
            os.kill(run.pid, signal.SIGTERM)
            messages = webhook.wait_for(1, timeout=60)
            _, stderr = run.communicate(timeout=120)
        finally:
            kill_group(run)
    assert run.returncode != 0
    assert "Crash detected!" in stderr
    (message,) = messages
    text = message["text"]
    assert text.startswith(":rotating_light: Flow run `placeholder-etl/")
    assert text.splitlines()[0].endswith(" crashed.")
    assert "Error: " in text
    assert "/runs/flow-run/" in text
    assert not out.exists()  # nothing was committed


def test_a_successful_run_sends_nothing(tmp_path, webhook) -> None:
    with make_server(users=5) as server:
        result = run_etl(
            *(server.url, tmp_path / "out", "--verbose"),
            cache=tmp_path / "cache",
            env={"PLACEHOLDER_ETL_NOTIFY_WEBHOOK": webhook.url},
            runner="local",
        )
    assert result.returncode == 0, result.stderr[-2000:]
    assert webhook.received == []


def test_an_undeliverable_notification_does_not_hide_the_error(tmp_path) -> None:
    broken = WebhookReceiver(status=500)
    try:
        with make_server(users=5, fault="drift") as server:
            result = run_etl(
                *(server.url, tmp_path / "out", "--verbose", "--notify-webhook", broken.url),
                cache=tmp_path / "cache",
                runner="local",
            )
    finally:
        broken.close()
    assert result.returncode == 1
    assert "could not deliver the failure notification to 127.0.0.1: HTTP 500" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: users page 1 from ")
    assert "field email: missing" in last
    assert broken.url not in result.stderr


def test_post_webhook_reports_an_unreachable_endpoint(caplog) -> None:
    receiver = WebhookReceiver()
    url = receiver.url
    receiver.close()
    assert post_webhook(url, "hello", timeout=2) is False
    assert "could not deliver the failure notification to 127.0.0.1" in caplog.text
    assert "secret" not in caplog.text


def test_secrets_never_reach_logs_manifests_artifacts_or_reports(tmp_path, webhook) -> None:
    from prefect.artifacts import Artifact

    secrets = {
        "PREFECT_API_KEY": "pnu_secretprefectkey0123456789",
        "SATURN_TOKEN": "saturn-secret-token-0123456789",
        "PLACEHOLDER_ETL_NOTIFY_WEBHOOK": webhook.url,
    }
    out = tmp_path / "out"
    with make_server(users=5) as server:
        result = run_etl(
            *(server.url, out, "--verbose", "--resources", "all", "--report"),
            cache=tmp_path / "cache",
            env=secrets,
            runner="local",
        )
    assert result.returncode == 0, result.stderr[-2000:]
    written = "".join(p.read_text(errors="replace") for p in out.iterdir() if p.is_file())
    assert "report_" in "".join(p.name for p in out.iterdir())
    artifacts = "".join(
        str(Artifact.get(key, _sync=True).data)
        for key in ("placeholder-etl-tables", "placeholder-etl-summary", "placeholder-etl-report")
    )
    for value in secrets.values():
        assert value not in result.stdout + result.stderr
        assert value not in written
        assert value not in artifacts
