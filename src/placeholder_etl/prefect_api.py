"""Make a Prefect API reachable from this process and from the Dask workers it spawns.

With no ``PREFECT_API_URL``, Prefect starts an ephemeral server inside each process that needs
one; Dask worker processes would each start their own and time out. So when no API is
configured, :func:`prefect_api` uses a server already running here at Prefect's default
address, or starts one temporary server up front (:class:`TemporaryServer`), exports its URL
in the environment (which spawned workers inherit) and stops it on exit, before the caller's
last line. The command line starts that server before it imports the flow
(:func:`start_server_if_needed`), so the two overlap.

Prefect is imported inside the functions: starting the server early is the point.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

__all__ = [
    "TemporaryServer",
    "drain",
    "export_api_url",
    "flow_run_ui_url",
    "prefect_api",
    "start_server_if_needed",
]

#: Longest wait for the temporary server to answer its health check (a first start creates
#: its SQLite database: on a busy 2-core machine that can take longer than Prefect's 20 s).
STARTUP_TIMEOUT_S = 120

Say = Callable[[str], None]

#: The API URLs of the temporary servers this process started and has not stopped yet.
_temporary: set[str] = set()


def _quiet(_: str) -> None:
    """Say nothing."""


class PrefectApi(NamedTuple):
    """The Prefect API a run uses."""

    url: str
    temporary: bool  # started for this run, stopped with it


class TemporaryServer:
    """A Prefect server for one run: Prefect's own app (no UI, as its ephemeral server), in a
    process of its own on 127.0.0.1, started at once and waited for with :meth:`wait`.

    Unlike Prefect's ``SubprocessASGIServer`` its process does not build the
    ``rfc3987_syntax`` grammar that importing jsonschema builds (unused by Prefect; about 3 s
    of a ~9 s start here), and its output goes to a file, shown only if it fails to start.
    """

    #: The server process: no rfc3987 grammar, then uvicorn on Prefect's app factory.
    _CODE = (
        "import sys; sys.modules['rfc3987_syntax'] = None; import uvicorn; "
        "uvicorn.run('prefect.server.api.server:create_app', factory=True, host='127.0.0.1', "
        "port=int(sys.argv[1]), log_level='error', lifespan='on')"
    )

    def __init__(self) -> None:
        from prefect.settings import get_current_settings

        self._env = {
            **os.environ,
            **get_current_settings().to_environment_variables(exclude_unset=True),
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no phoning home, no offline errors
            "DO_NOT_TRACK": "1",
        }
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.started = time.perf_counter()
        self._start()

    def _start(self) -> None:
        with socket.socket() as probe:  # a free port (Prefect picks one at random)
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._process = subprocess.Popen(
            [sys.executable, "-c", self._CODE, str(self.port)],
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        """Its API URL."""
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self, timeout: float = STARTUP_TIMEOUT_S) -> float:
        """Wait until it answers its health check.

        Returns:
            Seconds since it was started.

        Raises:
            RuntimeError: it exited or did not answer within ``timeout`` (with its output).
        """
        deadline = time.monotonic() + timeout
        while not _answers("127.0.0.1", self.port):
            code = self._process.poll()
            if code == 3:  # uvicorn: the port was taken meanwhile
                self._start()
            elif code is not None or time.monotonic() > deadline:
                output = self._output
                self.stop()
                raise RuntimeError(f"the temporary Prefect server did not start: {output}")
            time.sleep(0.1)
        return time.perf_counter() - self.started

    @property
    def _output(self) -> str:
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip()
        return text[-2000:] or f"no output, exit status {self._process.returncode}"

    def stop(self) -> None:
        """Stop it (SIGTERM, SIGKILL after 10 s)."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()


def start_server_if_needed(say: Say = _quiet) -> TemporaryServer | None:
    """Start a temporary server now when :func:`prefect_api` will need one (no configured
    API, none running here), so that it starts while the caller does other work."""
    if _configured() or _local_server():
        return None
    say("Prefect server: none configured, starting a temporary one for this run…")
    return TemporaryServer()


@contextmanager
def prefect_api(say: Say = _quiet, server: TemporaryServer | None = None) -> Iterator[PrefectApi]:
    """Yield the Prefect API in use: the configured one; else a server running on this
    machine at Prefect's default address; else a temporary server started for the run.

    Args:
        say: told, for a person, which server is used and what starting one cost.
        server: a temporary server already started (:func:`start_server_if_needed`).
    """
    configured = _configured()
    if configured and server is None:
        yield PrefectApi(configured, temporary=False)
        return
    local = None if server else _local_server()
    if local:
        say(f"Prefect server: {local} (running here; PREFECT_API_URL is not set)")
        with _api_url(local):
            yield PrefectApi(local, temporary=False)
        return
    if server is None:
        say("Prefect server: none configured, starting a temporary one for this run…")
        server = TemporaryServer()
    try:
        seconds = server.wait()
        say(
            f"Prefect server: temporary, at {server.url}, ready in {seconds:.1f} s "
            "(`make server` keeps one running, and its runs)"
        )
        _temporary.add(server.url)
        with _api_url(server.url):
            yield PrefectApi(server.url, temporary=True)
    finally:
        _temporary.discard(server.url)
        _stop_quietly(server)


def flow_run_ui_url(flow_run_id: str | None) -> str | None:
    """The flow run's page in the Prefect UI (``PREFECT_UI_URL``, by default derived from the
    API URL); None when there is no lasting page to open: no UI URL, or the API is a
    temporary server of this process, which stops with the run and has no UI."""
    from prefect.settings import get_current_settings
    from prefect.utilities.urls import url_for

    if not flow_run_id or get_current_settings().api.url in _temporary:
        return None
    try:
        return url_for("flow-run", obj_id=flow_run_id) or None
    except Exception:  # noqa: BLE001 - no UI known: the id alone
        return None


def _configured() -> str | None:
    """The Prefect API URL of the environment or the active profile."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def _local_server() -> str | None:
    """The API of a server answering where ``prefect server start`` listens, if one does."""
    from prefect.settings import get_current_settings

    local = get_current_settings().server.api
    return f"http://{local.host}:{local.port}/api" if _answers(local.host, local.port) else None


@contextmanager
def _api_url(url: str) -> Iterator[None]:
    """Use ``url`` as the Prefect API here and in the processes started from here."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:  # pragma: no cover - only when the variable was set to an empty string
            os.environ["PREFECT_API_URL"] = previous


def _answers(host: str, port: int) -> bool:
    """Whether a Prefect server answers its health check there (within 0.5 s; no proxy)."""
    connection = http.client.HTTPConnection(host, port, timeout=0.5)
    try:
        connection.request("GET", "/api/health")
        response = connection.getresponse()
        return response.status == 200 and response.read().strip() == b"true"
    except OSError:
        return False
    finally:
        connection.close()


def drain() -> None:
    """Send the logs and events Prefect still has queued (else it warns about them at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    EventsWorker.drain_all(timeout=5)


def _stop_quietly(server: TemporaryServer) -> None:
    """Send the logs still queued, then stop the server without logging to it any more."""
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    drain()
    prefect_logger = logging.getLogger("prefect")
    level = prefect_logger.level
    prefect_logger.setLevel(logging.WARNING)
    try:
        with temporary_settings(updates={PREFECT_LOGGING_TO_API_ENABLED: False}):
            server.stop()
    finally:
        prefect_logger.setLevel(level)


def export_api_url() -> None:
    """Inside a flow run, put the API URL in the environment so spawned workers find it."""
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is not None and context.client is not None:
        os.environ["PREFECT_API_URL"] = str(context.client.api_url).rstrip("/")
