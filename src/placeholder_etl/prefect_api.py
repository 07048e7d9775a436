"""Make a Prefect API reachable from this process and from the Dask workers it spawns.

With no ``PREFECT_API_URL``, Prefect starts an ephemeral server inside each process that needs
one; Dask worker processes would each start their own and time out. So when no API is
configured, :func:`prefect_api` starts one ephemeral server up front, exports its URL in the
environment (which spawned workers inherit) and stops it on exit, before the caller's last line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

__all__ = ["drain", "export_api_url", "prefect_api"]

#: Longest wait for the ephemeral server to answer its health check.
STARTUP_TIMEOUT_S = 120


@contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the Prefect API URL in use, starting an ephemeral server if none is configured."""
    configured = get_current_settings().api.url
    if configured:
        yield configured
        return
    from prefect.server.api.server import SubprocessASGIServer

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no phoning home offline
    os.environ.setdefault("DO_NOT_TRACK", "1")
    server = SubprocessASGIServer()
    # a first start creates the SQLite database: on a busy 2-core machine that can take
    # longer than Prefect's default 20 s wait
    server.start(timeout=STARTUP_TIMEOUT_S)
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _stop_quietly(server)
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:  # pragma: no cover - only when the variable was set to an empty string
            os.environ["PREFECT_API_URL"] = previous


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
