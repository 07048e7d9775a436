"""The HTTP transport under :class:`~placeholder_etl.core.client.ApiClient`.

urllib3 connections that arm a whole-request deadline (a watchdog thread shuts the socket
of an attempt that runs out of time, however slowly the server drips its answer), the pools
and the requests adapter that use them with a per-request retry budget, and the Retry that
caps ``Retry-After``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import socket
import threading
import time
from contextlib import suppress
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

__all__ = ["CappedRetry", "Deadline", "DeadlineAdapter", "RetriesAreCounted", "request_state"]


class CappedRetry(Retry):
    """urllib3 Retry that never sleeps longer than ``max_retry_after`` for a Retry-After."""

    max_retry_after: float = 30.0

    def get_retry_after(self, response: Any) -> float | None:
        after = super().get_retry_after(response)
        return None if after is None else min(after, self.max_retry_after)


class RetriesAreCounted(logging.Filter):
    """urllib3 warns at every retry; the client counts them (the manifest, "tried N times"
    in the error), so they are shown as INFO: only where INFO is (``--verbose``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith("Retrying"):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# --------------------------------------------------------------------------- the deadline

#: What the request being made in this thread may use: its deadline and its retry budget.
request_state = threading.local()
_lock = threading.Lock()


class Deadline:
    """One request's deadline: each attempt's connect, headers and body within ``seconds``.

    Armed by the connection as an attempt starts (:class:`_Connection`); when it passes, the
    watchdog shuts the attempt's socket down, so the read blocked on it ends at once
    however slowly the server drips. ``cut`` says the current attempt was cut, ``cuts`` how
    many were.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.generation = 0
        self.conn: Any = None
        self.cut = False
        self.cuts = 0
        self.closed = False

    def arm(self, conn: Any) -> None:
        """A new attempt starts on ``conn`` (in the requesting thread)."""
        with _lock:
            self.generation += 1
            self.conn, self.cut = conn, False
            conn.placeholder_deadline = self
            generation = self.generation
        _watchdog.watch(time.monotonic() + self.seconds, self, generation)

    def expire(self, generation: int) -> None:
        """The watchdog: attempt ``generation`` is out of time; cut it if it still runs."""
        with _lock:
            conn = self.conn
            if self.closed or generation != self.generation or conn is None:
                return
            if getattr(conn, "placeholder_deadline", None) is not self:
                return  # the connection went back to the pool and serves another request
            self.cut, self.cuts = True, self.cuts + 1
            sock = conn.sock
        if sock is not None:
            with suppress(OSError):  # the base class's: an SSL socket's own drops its state
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def close(self) -> None:
        """The request is over: never cut its connection again."""
        with _lock:
            self.closed = True
            if getattr(self.conn, "placeholder_deadline", None) is self:
                self.conn.placeholder_deadline = None
            self.conn = None


class _Watchdog:
    """One daemon thread that expires deadlines in time order."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Deadline, int]] = []
        self._wake = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, due: float, deadline: Deadline, generation: int) -> None:
        with self._wake:
            heapq.heappush(self._due, (due, next(self._order), deadline, generation))
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(
                    target=self._run, name="request-deadlines", daemon=True
                )
                self._thread.start()
            if self._due[0][2] is deadline:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while True:
                    if not self._due:
                        self._wake.wait()
                        continue
                    due, _, deadline, generation = self._due[0]
                    if deadline.closed:  # finished in time: drop it without waiting
                        heapq.heappop(self._due)
                        continue
                    left = due - time.monotonic()
                    if left <= 0:
                        heapq.heappop(self._due)
                        break
                    self._wake.wait(left)
            deadline.expire(generation)


_watchdog = _Watchdog()


class _ArmsDeadline:
    """Mixed into a connection class: arms the deadline of the request made in this thread."""

    placeholder_deadline: Deadline | None = None

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline = getattr(request_state, "deadline", None)
        if deadline is not None:
            deadline.arm(self)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _Connection(_ArmsDeadline, HTTPConnection):
    """An HTTP connection that arms the deadline of the request made in this thread."""


class _HTTPSConnection(_ArmsDeadline, HTTPSConnection):
    """:class:`_Connection` over TLS."""


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _Pool, "https": _HTTPSPool}


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter with the deadline's connections and a per-request retry budget.

    ``max_retries`` is the budget this thread's request has left (a body that broke off
    spent some), else the configured :class:`Retry`.
    """

    @property  # type: ignore[override]
    def max_retries(self) -> Retry:
        return getattr(request_state, "retry", None) or self._configured_retry

    @max_retries.setter
    def max_retries(self, value: Retry) -> None:
        self._configured_retry = value

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager
