"""Make a Prefect API reachable from this process and from the Dask workers it spawns.

With no ``PREFECT_API_URL``, Prefect starts an ephemeral server inside each process that needs
one; Dask worker processes would each start their own and time out. So when no API is
configured, :func:`prefect_api` uses a server already running here at Prefect's default
address, or starts one ephemeral server up front, exports its URL in the environment (which
spawned workers inherit) and stops it on exit, before the caller's last line.
"""

from __future__ import annotations

import http.client
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

__all__ = ["PrefectApi", "drain", "export_api_url", "prefect_api"]

#: Longest wait for the ephemeral server to answer its health check.
STARTUP_TIMEOUT_S = 120


class PrefectApi(NamedTuple):
    """The Prefect API a run uses."""

    url: str
    temporary: bool  # started for this run, stopped with it


@contextmanager
def prefect_api(say: Callable[[str], None] = lambda _: None) -> Iterator[PrefectApi]:
    """Yield the Prefect API in use: the configured one; else a server running on this
    machine at Prefect's default address; else a temporary server started for the run.

    Args:
        say: told, for a person, which server is used and what starting one cost.
    """
    configured = get_current_settings().api.url
    if configured:
        yield PrefectApi(configured, temporary=False)
        return
    local = get_current_settings().server.api  # where `prefect server start` listens
    if _answers(local.host, local.port):
        url = f"http://{local.host}:{local.port}/api"
        say(f"Prefect server: {url} (running here; PREFECT_API_URL is not set)")
        with _api_url(url):
            yield PrefectApi(url, temporary=False)
        return
    from prefect.server.api.server import SubprocessASGIServer

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no phoning home offline
    os.environ.setdefault("DO_NOT_TRACK", "1")
    say("Prefect server: none configured, starting a temporary one for this run…")
    started = time.perf_counter()
    server = SubprocessASGIServer()
    # a first start creates the SQLite database: on a busy 2-core machine that can take
    # longer than Prefect's default 20 s wait
    server.start(timeout=STARTUP_TIMEOUT_S)
    say(
        f"Prefect server: temporary, ready in {time.perf_counter() - started:.1f} s "
        "(`prefect server start` and PREFECT_API_URL skip this and keep the runs)"
    )
    try:
        with _api_url(server.api_url):
            yield PrefectApi(server.api_url, temporary=True)
    finally:
        _stop_quietly(server)


@contextmanager
def _api_url(url: str) -> Iterator[None]:
    """Use ``url`` as the Prefect API here and in the processes started from here."""
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


def _stop_quietly(server: object) -> None:
    """Send the logs still queued, then stop the server without logging to it any more."""
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED

    drain()
    prefect_logger = logging.getLogger("prefect")
    level = prefect_logger.level
    prefect_logger.setLevel(logging.WARNING)
    try:
        with temporary_settings(updates={PREFECT_LOGGING_TO_API_ENABLED: False}):
            server.stop()  # type: ignore[attr-defined]
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
