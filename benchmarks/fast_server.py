"""A fast, json-server-compatible-enough API over pre-encoded records, for the benchmarks.

The bundled server (``placeholder_etl.server``) builds and JSON-encodes every record of every
page on demand, in stdlib ``http.server`` threads: on two cores that work competes with the
client under test and hides the client's own cost. This server does that work once, before
anything is timed: at start it generates every record of each resource with
``fakedata.make_records`` (same ``(resource, id, seed)`` => same record as the bundled server,
so CSV outputs stay byte-identical), encodes each with orjson and lays them end to end, comma
separated, in one file (cached under ``--cache-dir``, keyed by the generator's source). Any
window of records is then one contiguous slice of that file, so a page of any size is served
as ``[`` + slice + ``]`` without encoding anything (the bytes are exactly the bundled server's
``orjson.dumps(list)`` body).

What it answers (json-server 0.16/0.17 semantics where it answers at all):

* ``GET /RESOURCE`` with ``_page``/``_limit`` (limit 10 by default), ``_start``/``_end``,
  ``_start``/``_limit``, or nothing (the whole list); ``X-Total-Count`` and
  ``Access-Control-Expose-Headers`` when paged, json-server's ``Link`` header with ``_page``;
  ``_sort=id`` (``_order=asc``) is accepted as the identity. Filters, ``q``, other sorts,
  ``_embed`` and ``_expand`` answer 400 (use the bundled server for those);
* ``GET /RESOURCE/ID``; 404 ``{}`` for anything else; 405 for other methods;
* ``GET /__control/stats`` (``{"requests": N, "by_resource": {...}, "not_modified": N,
  "bytes_sent": B}``, control requests not counted; ``bytes_sent``: every byte of the answers,
  status lines and headers included) and ``POST /__control/reset``, like the bundled server.

Every ``200`` data answer carries json-server's (Express's) weak ``ETag`` over its body,
``W/"<length, hex>-<sha1, base64, 27 chars>"`` (the bundled server's ``weak_etag``); a ``GET``
whose ``If-None-Match`` names it (or ``*``) gets ``304 Not Modified`` with the ETag and the
paging headers but no body, as Express answers (not when the request says ``Cache-Control:
no-cache``). The tags of the pages of ``--etag-page-size`` records (1,000: what the plain
script, the flow and dlt ask for) are computed once, with the records, and cached beside them;
other windows are tagged when first asked for (and remembered).

HTTP/1.1 with keep-alive (and pipelining, answered in order); ``Content-Type:
application/json; charset=utf-8``. ``--latency S`` delays every response by S seconds without
blocking other requests (asyncio timers). It prints ``serving N users on http://HOST:PORT``
once listening (the bundled server's line) and stops on SIGTERM/SIGINT, or when
``--parent-pid`` is no longer its parent.

Usage::

    .venv/bin/python benchmarks/fast_server.py --users 100000 --latency 0.2
    .venv/bin/python benchmarks/fast_server.py --users 1000000 --build-only   # fill the cache
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import hashlib
import itertools
import math
import mmap
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

# --------------------------------------------------------------------------- the data


def _data_modules() -> tuple[ModuleType, ModuleType]:
    """The record generator and the resource table.

    With :func:`bundled_server`, the only imports of the package under test in the benchmarks'
    servers: ``placeholder_etl.fakedata`` may move to another package (``placeholder_api``),
    so both names are tried.
    """
    try:
        from placeholder_etl import fakedata, resources
    except ImportError:
        from placeholder_api import fakedata, resources  # type: ignore[no-redef]
    return fakedata, resources


def _weak_etag_function() -> Callable[[bytes], str]:
    """The bundled server's ``weak_etag(body)`` (json-server's ETag), or the same rule here
    when the package under test has none."""
    try:
        from placeholder_api.server import weak_etag
    except ImportError:
        try:
            from placeholder_etl.server import weak_etag  # type: ignore[no-redef]
        except ImportError:

            def weak_etag(body: bytes) -> str:
                digest = base64.b64encode(hashlib.sha1(body).digest()).decode()[:27]
                return f'W/"{len(body):x}-{digest}"'

    return weak_etag


def bundled_server(**kwargs: Any) -> contextlib.AbstractContextManager[str]:
    """The package's own ``bundled_server(users=..., latency=...)`` (a context manager
    yielding its URL), wherever the restructure puts it."""
    try:
        from placeholder_etl.server import bundled_server as start
    except ImportError:
        from placeholder_api.server import bundled_server as start  # type: ignore[no-redef]
    return start(**kwargs)


FORMAT_VERSION = 1  # bump when the cache layout changes
CHUNK = 20_000  # records generated and encoded per build task
ETAG_PAGE_SIZE = 1000  # the page size whose ETags are computed up front
ETAG_MEMO = 4096  # tags of other windows remembered
JSON_TYPE = b"application/json; charset=utf-8"
SERVING_LINE = re.compile(r"serving \d+ users on (http://\S+)")


def resource_count(resource: str, users: int) -> int:
    """How many ``resource`` records a dataset of ``users`` users has."""
    _, resources = _data_modules()
    return resources.RESOURCES[resource].count(users)


def cache_key() -> str:
    """A digest of what decides the bytes: the generator's source, orjson, this format."""
    fakedata, resources = _data_modules()
    digest = hashlib.sha256(f"{FORMAT_VERSION} {orjson.__version__}".encode())
    for module in (fakedata, resources):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$TMPDIR/placeholder-etl-fast-server``."""
    return Path(tempfile.gettempdir()) / "placeholder-etl-fast-server"


def _encode_chunk(task: tuple[str, int, int, int]) -> tuple[bytes, bytes]:
    """Records ``lo <= id < hi`` as ``rec,rec,...,rec,`` and their encoded lengths (+1)."""
    resource, lo, hi, seed = task
    fakedata, _ = _data_modules()
    encoded = [orjson.dumps(r) for r in fakedata.make_records(resource, lo, hi, seed)]
    lengths = array.array("q", (len(b) + 1 for b in encoded))
    return b",".join(encoded) + b",", lengths.tobytes()


def build(
    resource: str, count: int, seed: int, cache_dir: Path, workers: int | None = None
) -> tuple[Path, Path]:
    """Encode records 1..``count`` of ``resource`` into the cache (if not there yet).

    Returns:
        The body file (records end to end, each followed by a comma) and the index file
        (``count + 1`` int64 offsets: record ``i`` (0-based) spans ``[off[i], off[i+1] - 1)``).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{resource}-{count}-seed{seed}-{cache_key()}"
    body, index = cache_dir / f"{stem}.json", cache_dir / f"{stem}.idx"
    if body.exists() and index.exists():
        return body, index
    tasks = [(resource, lo, min(lo + CHUNK, count + 1), seed) for lo in range(1, count + 1, CHUNK)]
    workers = workers or (min(os.cpu_count() or 1, len(tasks)) if count >= 4 * CHUNK else 1)
    offsets = array.array("q", [0])
    tmp_body = body.with_name(f"{body.name}.{os.getpid()}.tmp")
    tmp_index = index.with_name(f"{index.name}.{os.getpid()}.tmp")
    try:
        with tmp_body.open("wb") as out:
            if workers > 1:
                with ProcessPoolExecutor(workers) as pool:
                    results: Iterator[tuple[bytes, bytes]] = pool.map(_encode_chunk, tasks)
                    _append(out, offsets, results)
            else:
                _append(out, offsets, map(_encode_chunk, tasks))
        tmp_index.write_bytes(offsets.tobytes())
        tmp_index.replace(index)
        tmp_body.replace(body)
    finally:
        tmp_body.unlink(missing_ok=True)
        tmp_index.unlink(missing_ok=True)
    return body, index


def _append(out: Any, offsets: array.array, results: Iterator[tuple[bytes, bytes]]) -> None:
    for data, lengths in results:
        out.write(data)
        running_total = itertools.accumulate(array.array("q", lengths), initial=offsets[-1])
        offsets.extend(itertools.islice(running_total, 1, None))


@dataclass
class Collection:
    """One resource's pre-encoded records, memory-mapped, and the ETags of its pages."""

    name: str
    total: int
    body: memoryview
    offsets: memoryview  # int64, total + 1 entries
    keep: list[Any] = field(default_factory=list)  # the mmaps and files behind the views
    pages: dict[tuple[int, int], str] = field(default_factory=dict)  # (lo, hi) -> ETag
    memo: dict[tuple[int, int], str] = field(default_factory=dict)  # other windows' tags
    weak_etag: Callable[[bytes], str] = field(default_factory=_weak_etag_function)

    @classmethod
    def open(cls, name: str, body_path: Path, index_path: Path) -> Collection:
        """Map a built body and index file."""
        keep: list[Any] = []

        def mapped(path: Path) -> memoryview:
            if path.stat().st_size == 0:
                return memoryview(b"")
            handle = path.open("rb")
            area = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            keep.extend((handle, area))
            return memoryview(area)

        offsets = mapped(index_path).cast("q")
        return cls(name, len(offsets) - 1, mapped(body_path), offsets, keep)

    def window(self, lo: int, hi: int) -> list[bytes | memoryview]:
        """The JSON list of records ``lo <= index < hi`` (0-based), as pieces to write."""
        if hi <= lo:
            return [b"[]"]
        return [b"[", self.body[self.offsets[lo] : self.offsets[hi] - 1], b"]"]

    def record(self, record_id: int) -> memoryview | None:
        """The JSON of the record with id ``record_id`` (1-based), if there is one."""
        if not 1 <= record_id <= self.total:
            return None
        return self.body[self.offsets[record_id - 1] : self.offsets[record_id] - 1]

    def etag(self, lo: int, hi: int) -> str:
        """The ETag of the list of records ``lo <= index < hi`` (json-server's, over the body)."""
        tag = self.pages.get((lo, hi)) or self.memo.get((lo, hi))
        if tag is None:
            tag = self.weak_etag(b"".join(self.window(lo, hi)))
            if len(self.memo) >= ETAG_MEMO:
                self.memo.clear()
            self.memo[(lo, hi)] = tag
        return tag

    def tag_pages(self, page_size: int, path: Path) -> None:
        """Know the ETags of every page of ``page_size`` records: read from ``path``, or
        computed (a sha1 over each page) and written there."""
        windows = [(lo, min(lo + page_size, self.total)) for lo in range(0, self.total, page_size)]
        tags: list[str] = []
        with contextlib.suppress(OSError):
            tags = path.read_text().split()
        if len(tags) != len(windows):
            tags = [self.weak_etag(b"".join(self.window(lo, hi))) for lo, hi in windows]
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text("".join(f"{tag}\n" for tag in tags))
            tmp.replace(path)
        self.pages = dict(zip(windows, tags, strict=True))

    def close(self) -> None:
        """Release the views and unmap."""
        self.body.release()
        self.offsets.release()
        for item in reversed(self.keep):
            item.close()


# --------------------------------------------------------------------------- json-server rules

_INT_PREFIX = re.compile(r"\s*([+-]?\d+)")
_ALLOWED = frozenset({"_page", "_limit", "_start", "_end", "_sort", "_order"})


def _parse_int(text: str | None) -> int | None:
    """JavaScript's ``parseInt(text, 10)``; ``None`` for NaN."""
    match = _INT_PREFIX.match(text or "")
    return int(match.group(1)) if match else None


def list_window(opts: dict[str, str], total: int) -> tuple[int, int, int | None, int | None]:
    """``(lo, hi, page, limit)``: the slice json-server cuts, and the page asked for, if any."""
    start = _parse_int(opts.get("_start")) or 0
    page = limit = None
    if opts.get("_page"):
        page = _parse_int(opts["_page"])
        page = page if page is not None and page >= 1 else 1
        limit = _parse_int(opts.get("_limit")) or 10
        window = slice((page - 1) * limit, page * limit)
    elif opts.get("_end"):
        window = slice(start, _parse_int(opts["_end"]) or 0)
    elif opts.get("_limit"):
        size = _parse_int(opts["_limit"])
        window = slice(start, 0 if size is None else start + size)
    else:
        window = slice(0, None)
    lo, hi, _ = window.indices(total)
    return lo, max(lo, hi), page, limit


def links(full_url: str, page: int, limit: int, total: int) -> str:
    """json-server's ``Link`` header for a ``_page`` request (empty for an empty page)."""
    lo, hi, _ = slice((page - 1) * limit, page * limit).indices(total)
    if hi <= lo:
        return ""
    whole = hi - lo == total
    pages: dict[str, int] = {}
    if not whole:
        pages["first"] = 1
    if page > 1:
        pages["prev"] = page - 1
    if page * limit < total:
        pages["next"] = page + 1
    if not whole:
        pages["last"] = math.ceil(total / limit)
    current = f"page={page}"
    return ", ".join(
        f'<{full_url if whole else full_url.replace(current, f"page={n}", 1)}>; rel="{rel}"'
        for rel, n in pages.items()
    )


# --------------------------------------------------------------------------- HTTP

_REASONS = {
    200: b"OK",
    304: b"Not Modified",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
}
_NO_CACHE = re.compile(r"(?:^|,)\s*no-cache\s*(?:,|$)")
_MAX_HEAD = 64 * 1024
Pieces = list[bytes | memoryview]


@dataclass
class App:
    """The routes over the collections, and the request counters."""

    collections: dict[str, Collection]
    users: int
    requests: int = 0
    by_resource: dict[str, int] = field(default_factory=dict)
    not_modified: int = 0
    bytes_sent: int = 0

    def handle(
        self, method: str, target: str, host: str, headers: dict[str, str] | None = None
    ) -> tuple[int, list[str], Pieces]:
        """``(status, extra header lines, body pieces)`` for one request (``headers``: the
        request's, lower-case names; ``If-None-Match`` can make it a ``304``)."""
        status, extra, pieces, tag = self._route(method, target, host)
        if tag is None:
            return status, extra, pieces
        extra.append(f"ETag: {tag}")
        if _fresh(headers or {}, tag):
            self.not_modified += 1
            return 304, extra, []
        return status, extra, pieces

    def _route(
        self, method: str, target: str, host: str
    ) -> tuple[int, list[str], Pieces, str | None]:
        """``(status, extra header lines, body pieces, ETag of a 200 data answer or None)``."""
        split = urlsplit(target)
        path = split.path
        if path.startswith("/__control/"):
            return *self._control(method, path[len("/__control/") :].strip("/")), None
        parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        collection = self.collections.get(parts[0]) if parts else None
        if collection is not None and len(parts) <= 2:
            self.requests += 1
            self.by_resource[collection.name] = self.by_resource.get(collection.name, 0) + 1
        if method not in ("GET", "HEAD"):
            return 405, ["Allow: GET"], [b'{"error":"read-only API: only GET is served"}'], None
        if collection is None or len(parts) > 2:
            return 404, [], [b"{}"], None
        if len(parts) == 2:
            canonical = parts[1].isdigit() and str(int(parts[1])) == parts[1]
            record_id = int(parts[1]) if canonical else 0
            body = collection.record(record_id)
            if body is None:
                return 404, [], [b"{}"], None
            return 200, [], [body], collection.weak_etag(bytes(body))
        opts: dict[str, str] = {}
        for key, value in parse_qsl(split.query, keep_blank_values=True):
            opts.setdefault(key, value)
        unsupported = sorted(set(opts) - _ALLOWED)
        if opts.get("_sort", "id") != "id" or opts.get("_order", "asc").lower() != "asc":
            unsupported.append("_sort/_order other than id/asc")
        if unsupported:
            error = {"error": f"fast_server serves slices only; unsupported: {unsupported}"}
            return 400, [], [orjson.dumps(error)], None
        lo, hi, page, limit = list_window(opts, collection.total)
        headers = []
        if opts.get("_end") or opts.get("_limit") or opts.get("_page"):
            headers.append(f"X-Total-Count: {collection.total}")
            exposed = "X-Total-Count, Link" if page is not None else "X-Total-Count"
            headers.append(f"Access-Control-Expose-Headers: {exposed}")
        if page is not None and limit is not None:
            link = links(f"http://{host}{target}", page, limit, collection.total)
            headers.append(f"Link: {link}")
        return 200, headers, collection.window(lo, hi), collection.etag(lo, hi)

    def _control(self, method: str, name: str) -> tuple[int, list[str], Pieces]:
        if name == "stats" and method == "GET":
            return 200, [], [orjson.dumps(self.stats())]
        if name == "reset" and method == "POST":
            self.requests = self.not_modified = self.bytes_sent = 0
            self.by_resource = {}
            return 200, [], [orjson.dumps(self.stats())]
        return 404, [], [b"{}"]

    def stats(self) -> dict[str, Any]:
        """The counters: API requests (by resource), 304 answers, bytes sent."""
        return {
            "requests": self.requests,
            "by_resource": self.by_resource,
            "not_modified": self.not_modified,
            "bytes_sent": self.bytes_sent,
        }


def _fresh(headers: dict[str, str], tag: str) -> bool:
    """Express's ``req.fresh`` for an answer tagged ``tag``: ``If-None-Match`` names it (weak
    comparison) or is ``*``, and the request does not say ``Cache-Control: no-cache``."""
    asked = headers.get("if-none-match")
    if not asked or _NO_CACHE.search(headers.get("cache-control", "")):
        return False
    if asked.strip() == "*":
        return True
    bare = tag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == bare for t in asked.split(","))


class Connection(asyncio.Protocol):
    """One client connection: parse requests, answer them in order (after the latency)."""

    def __init__(self, app: App, latency: float) -> None:
        self.app = app
        self.latency = latency
        self.buffer = bytearray()
        self.outbox: deque[tuple[bytes, Pieces, bool]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop what was not sent."""
        self.transport = None
        self.outbox.clear()

    def data_received(self, data: bytes) -> None:
        """Answer every complete request in the buffer."""
        self.buffer += data
        while not self.closing:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self._queue(b"HTTP/1.1 431 Request Header Fields Too Large\r\n", [], True)
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < end + 4 + length:
                return  # wait for the body
            del self.buffer[: end + 4 + length]
            self._request(lines[0], headers)

    def _request(self, request_line: str, headers: dict[str, str]) -> None:
        try:
            method, target, http_version = request_line.split(" ")
        except ValueError:
            self._queue(b"HTTP/1.1 400 Bad Request\r\n", [], True)
            return
        connection = headers.get("connection", "").lower()
        close = connection == "close" or (http_version == "HTTP/1.0" and connection != "keep-alive")
        host = headers.get("host", "127.0.0.1")
        status, extra, pieces = self.app.handle(method, target, host, headers)
        length = sum(len(p) for p in pieces)
        body = (
            []
            if status == 304
            else [  # Express: no body, no Content-Type nor -Length
                "Content-Type: application/json; charset=utf-8",
                f"Content-Length: {length}",
            ]
        )
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, b'').decode()}",
            *body,
            *extra,
            "Connection: close" if close else "Connection: keep-alive",
            "",
            "",
        ]
        encoded = "\r\n".join(head).encode("latin-1")
        sent = [] if method == "HEAD" else pieces
        if not target.startswith("/__control/"):  # the API's traffic, not the harness's
            self.app.bytes_sent += len(encoded) + sum(len(p) for p in sent)
        self._queue(encoded, sent, close)

    def _queue(self, head: bytes, pieces: Pieces, close: bool) -> None:
        if close:
            self.closing = True
        if self.latency > 0:
            self.outbox.append((head, pieces, close))
            asyncio.get_running_loop().call_later(self.latency, self._send_next)
        else:
            self._send(head, pieces, close)

    def _send_next(self) -> None:
        if self.outbox:  # timers fire in any order among equals; the queue keeps answers in order
            self._send(*self.outbox.popleft())

    def _send(self, head: bytes, pieces: Pieces, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(b"".join((head, *pieces)))
        if close:
            self.transport.close()


async def _serve(
    app: App, host: str, port: int, latency: float, parent_pid: int | None, ready: Callable
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(
        lambda: Connection(app, latency), host, port, reuse_address=True, backlog=1024
    )
    bound = server.sockets[0].getsockname()
    ready(f"http://{bound[0]}:{bound[1]}")

    async def watch_parent() -> None:
        while parent_pid is not None and not stop.is_set():
            if os.getppid() != parent_pid:
                stop.set()
            await asyncio.sleep(1.0)

    watcher = asyncio.create_task(watch_parent())
    async with server:
        await stop.wait()
    watcher.cancel()


def load(
    resource: str, users: int, seed: int, cache_dir: Path, etag_page_size: int = ETAG_PAGE_SIZE
) -> Collection:
    """``resource``'s records for ``users`` users, built or read from the cache, with the
    ETags of its pages of ``etag_page_size`` records (cached beside them)."""
    body, index = build(resource, resource_count(resource, users), seed, cache_dir)
    collection = Collection.open(resource, body, index)
    collection.tag_pages(etag_page_size, body.with_suffix(f".etags{etag_page_size}"))
    return collection


def serve(
    users: int,
    seed: int = 0,
    latency: float = 0.0,
    host: str = "127.0.0.1",
    port: int = 0,
    resources: tuple[str, ...] = ("users",),
    cache_dir: Path | None = None,
    parent_pid: int | None = None,
    etag_page_size: int = ETAG_PAGE_SIZE,
) -> None:
    """Build (or load) the records and their pages' ETags, then serve until SIGTERM/SIGINT."""
    cache_dir = cache_dir or default_cache_dir()
    started = time.perf_counter()
    collections = {}
    for name in resources:
        collections[name] = load(name, users, seed, cache_dir, etag_page_size)
    size = sum(len(c.body) for c in collections.values()) / 2**20
    print(
        f"fast_server: {', '.join(resources)} ready in {time.perf_counter() - started:.1f} s "
        f"({size:.0f} MiB mapped from {cache_dir})",
        file=sys.stderr,
        flush=True,
    )
    app = App(collections, users)

    def ready(url: str) -> None:
        print(f"serving {users} users on {url}", flush=True)

    try:
        asyncio.run(_serve(app, host, port, latency, parent_pid, ready))
    finally:
        for collection in collections.values():
            collection.close()


# --------------------------------------------------------------------------- for the harness


@contextlib.contextmanager
def running(
    users: int,
    seed: int = 0,
    latency: float = 0.0,
    python: str | None = None,
    cache_dir: Path | None = None,
    env: dict[str, str] | None = None,
    startup_timeout: float = 900,
) -> Iterator[tuple[str, int]]:
    """Run this server in a subprocess (own process group) and yield ``(url, pid)``.

    The records are built (or read from the cache) before the URL is yielded, so building
    is never inside a measurement. On exit the process gets SIGTERM (SIGKILL after 5 s).
    """
    cmd = [python or sys.executable, str(Path(__file__).resolve()), "--users", str(users)]
    cmd += ["--seed", str(seed), "--latency", repr(float(latency))]
    cmd += ["--parent-pid", str(os.getpid())]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            found: queue.Queue[str | None] = queue.Queue()

            def read() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    match = SERVING_LINE.search(line)
                    if match:
                        found.put(match.group(1))
                        return
                found.put(None)

            threading.Thread(target=read, daemon=True).start()
            try:
                url = found.get(timeout=startup_timeout)
            except queue.Empty:
                url = None
            if url is None:
                stderr.seek(0)
                text = stderr.read().decode("utf-8", "replace")[-3000:]
                raise RuntimeError(f"fast_server did not start (exit {proc.poll()}):\n{text}")
            yield url, proc.pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def main(argv: list[str] | None = None) -> None:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--resources", default="users", help="comma list (default users)")
    parser.add_argument("--cache-dir", type=Path, help=f"default {default_cache_dir()}")
    parser.add_argument("--parent-pid", type=int, help="stop when this is no longer the parent")
    parser.add_argument(
        "--etag-page-size",
        type=int,
        default=ETAG_PAGE_SIZE,
        help=f"page size whose ETags are computed at start (default {ETAG_PAGE_SIZE})",
    )
    parser.add_argument("--build-only", action="store_true", help="fill the cache and exit")
    args = parser.parse_args(argv)
    resources = tuple(r.strip() for r in args.resources.split(",") if r.strip())
    if args.build_only:
        cache_dir = args.cache_dir or default_cache_dir()
        for name in resources:
            started = time.perf_counter()
            load(name, args.users, args.seed, cache_dir, args.etag_page_size).close()
            print(
                f"{name}: {args.users} users in {cache_dir} ({time.perf_counter() - started:.1f} s)"
            )
        return
    serve(
        args.users,
        args.seed,
        args.latency,
        args.host,
        args.port,
        resources,
        args.cache_dir,
        args.parent_pid,
        args.etag_page_size,
    )


if __name__ == "__main__":
    main()
