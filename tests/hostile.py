"""Hostile and broken APIs of our own: a stdlib ``http.server`` on 127.0.0.1, one behaviour each.

Beside the bundled server's faults (``placeholder_api``), these misbehave at the HTTP level:
bodies cut short or dripped a byte at a time, redirects out of the API or in a loop, totals
of a trillion, pages that ignore ``_page``, ids beyond 64 bits. Every request is recorded
(path, query, ``Authorization``), so a test can tell what really reached the server. Every
loop is bounded: a dripping answer stops when the client hangs up, when the server closes,
or after its last byte.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from placeholder_api.fakedata import make_record

__all__ = ["MODES", "HostileServer", "hostile_server"]

#: Each behaviour, for data pages (a count request, ``_limit=1``, is answered normally
#: unless the mode says "every request").
MODES = {
    "ok": "json-server paging with X-Total-Count",
    "no-total": "json-server paging, no X-Total-Count",
    "ignore-page": "honours _limit, ignores _page (always the first records), no total",
    "ignore-page-total": "ignores _page, with X-Total-Count",
    "empty-after-first": "X-Total-Count says USERS, pages after the first are []",
    "huge-total": "X-Total-Count: 1000000000000 on every request",
    "hang": "reads every request (the count too) and never answers (until it closes)",
    "cut-body": "Content-Length N, N/2 bytes sent, connection closed",
    "drip-body": "headers at once, the body one byte per DRIP seconds",
    "drip-headers": "the status line and headers one byte per DRIP seconds",
    "redirect-file": "302 to file:///etc/passwd",
    "redirect-loop": "302 to the same URL, again and again",
    "redirect-host": "302 to the same path on another server (OTHER)",
    "redirect-same": "301 to /v2/<path> on this server, which answers normally",
    "big-id": "the third record's id is 2**63",
    "bad-gzip": "Content-Encoding: gzip, a body that is not gzip",
    "html": "200 text/html, a 502 page",
    "status": "answers STATUS to every data page",
}


class HostileServer(ThreadingHTTPServer):
    """One hostile behaviour (``mode``, see :data:`MODES`) over ``users`` generated users."""

    daemon_threads = True

    def __init__(
        self,
        mode: str = "ok",
        users: int = 30,
        drip: float = 1.0,
        status: int = 401,
        other: str = "",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode, self.users, self.drip, self.status, self.other = mode, users, drip, status, other
        self.requests: list[dict[str, Any]] = []
        self.closing = threading.Event()
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (the deadline cut it) is what these tests want to see."""

    def data_requests(self) -> list[dict[str, Any]]:
        """Requests for pages (not the one-record count)."""
        return [r for r in self.requests if r["query"].get("_limit") != "1"]


class _Handler(BaseHTTPRequestHandler):
    server: HostileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        server = self.server
        server.record(
            {"path": parts.path, "query": query, "auth": self.headers.get("Authorization")}
        )
        mode, count = server.mode, query.get("_limit") == "1"
        limit = int(query.get("_limit", "10"))
        if "_start" in query:  # json-server's other paging: as the page it starts
            page = int(query["_start"]) // limit + 1
        else:
            page = int(query.get("_page", "1"))
        if mode == "hang":
            self.close_connection = True
            server.closing.wait(120)  # bounded: the test closes the server long before
            return None
        if mode == "huge-total":
            return self._json(self._records(page, limit), total=10**12)
        if count:
            total = None if mode in _NO_TOTAL else server.users
            return self._json(self._records(1, 1), total=total)
        if mode in ("ok", "redirect-same") or parts.path.startswith("/v2/"):
            if mode == "redirect-same" and not parts.path.startswith("/v2/"):
                return self._redirect(301, "/v2" + self.path)
            return self._json(self._records(page, limit), total=server.users)
        if mode == "no-total":
            return self._json(self._records(page, limit))
        if mode in ("ignore-page", "ignore-page-total"):
            total = server.users if mode == "ignore-page-total" else None
            return self._json(self._records(1, limit), total=total)
        if mode == "empty-after-first":
            return self._json(self._records(1, limit) if page == 1 else [], total=server.users)
        if mode == "cut-body":
            body = json.dumps(self._records(page, limit)).encode()
            self._head(200, len(body), "application/json", total=server.users)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        if mode == "drip-body":
            body = json.dumps(self._records(page, limit)).encode()
            self._head(200, len(body), "application/json", total=server.users)
            return self._drip(body)
        if mode == "drip-headers":
            body = json.dumps(self._records(page, limit)).encode()
            head = (
                f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"X-Total-Count: {server.users}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            return self._drip(head + body)
        if mode == "redirect-file":
            return self._redirect(302, "file:///etc/passwd")
        if mode == "redirect-loop":
            return self._redirect(302, self.path)
        if mode == "redirect-host":
            return self._redirect(302, server.other + self.path)
        if mode == "big-id":
            records = self._records(page, limit)
            records[min(2, len(records) - 1)]["id"] = 2**63
            return self._json(records, total=server.users)
        if mode == "bad-gzip":
            body = b"this is not gzip at all" * 4
            self._head(
                200, len(body), "application/json", server.users, {"Content-Encoding": "gzip"}
            )
            self.wfile.write(body)
            return None
        if mode == "html":
            body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            self._head(200, len(body), "text/html", server.users)
            self.wfile.write(body)
            return None
        if mode == "status":
            body = json.dumps({"error": server.status}).encode()
            self._head(server.status, len(body), "application/json", None)
            self.wfile.write(body)
            return None
        raise AssertionError(mode)  # pragma: no cover

    def _records(self, page: int, limit: int) -> list[dict[str, Any]]:
        first = (page - 1) * limit + 1
        last = min(page * limit, self.server.users)
        return [make_record("users", i, 0) for i in range(first, last + 1)]

    def _head(
        self,
        status: int,
        length: int,
        content_type: str,
        total: int | None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        if total is not None:
            self.send_header("X-Total-Count", str(total))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def _json(self, records: list[Any], total: int | None = None) -> None:
        body = json.dumps(records).encode()
        self._head(200, len(body), "application/json; charset=utf-8", total)
        self.wfile.write(body)

    def _redirect(self, status: int, location: str) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _drip(self, data: bytes) -> None:
        """One byte every ``drip`` seconds; stops when the client hangs up or we close."""
        self.close_connection = True
        for i in range(len(data)):
            if self.server.closing.is_set():
                return
            try:
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
            except OSError:  # the client cut the request: what the test wants to see
                return
            self.server.closing.wait(self.server.drip)


_NO_TOTAL = frozenset({"no-total", "ignore-page"})


@contextmanager
def hostile_server(mode: str = "ok", **options: Any) -> Iterator[HostileServer]:
    """A :class:`HostileServer` serving in a thread, closed at the end of the block."""
    server = HostileServer(mode, **options)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
