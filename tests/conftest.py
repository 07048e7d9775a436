"""Shared fixtures: an isolated PREFECT_HOME, the bundled API server, a Prefect test server."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before Prefect is imported anywhere: keep the suite away from the user's ~/.prefect and
# telemetry, and never talk to a Prefect API configured outside the tests.
_HOME = Path(
    os.environ.get("PYTEST_PREFECT_HOME") or tempfile.mkdtemp(prefix="placeholder-etl-prefect-")
)
os.environ["PREFECT_HOME"] = str(_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_API_KEY", None)
os.environ["DASK_LOGGING__DISTRIBUTED"] = "warning"

from placeholder_etl.server import make_server


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """A real Prefect API server (SQLite) for the whole session, also exported to children."""
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = get_current_settings().api.url
        assert url, "the Prefect test harness did not set an API URL"
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture
def api() -> Iterator:
    """The bundled API server with 25 users, on a free loopback port."""
    with make_server(users=25, seed=7) as server:
        yield server


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A page cache of this test's own."""
    return tmp_path / "cache"


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None):
    """Run ``placeholder-etl ARGS`` in a subprocess; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "placeholder_etl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes (to prove nothing changed)."""
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


class WebhookReceiver:
    """A Slack-style webhook endpoint on loopback that keeps every JSON body it is sent."""

    def __init__(self, status: int = 200) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received: list[dict] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/T000/B000/secret"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[dict]:
        """Wait until ``count`` messages arrived (or time out); return them all."""
        import time

        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return list(self.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    """A local webhook receiver."""
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()
