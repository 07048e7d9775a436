"""A client for json-server-style REST APIs such as JSONPlaceholder.

One :class:`ApiClient` holds a pooled :class:`requests.Session` whose adapter retries
transient faults (connection errors, read timeouts, 429 honouring ``Retry-After``, 5xx)
with exponential backoff; a body that breaks off is retried the same way, from the same
budget of ``retries``. Every request has a whole-request deadline: connect, headers and body
within ``timeout`` seconds (urllib3's read timeout is per read, so a watchdog cuts a server
that drips its answer). Redirects are followed only within the API's own scheme, host and
port. Every exception is classified where it is raised: a
:class:`~placeholder_etl.core.errors.TransientError` or
:class:`~placeholder_etl.core.errors.PermanentError` with a message that names the resource,
the page and the (redacted) URL, in plain words. Settings:
:class:`~placeholder_etl.core.settings.ClientSettings`.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import logging
import math
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Self, TypeVar
from urllib.parse import urljoin

import orjson
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

from placeholder_etl.core.contract import check_records
from placeholder_etl.core.errors import PermanentError, TransientError
from placeholder_etl.core.redact import redact, redact_url
from placeholder_etl.core.settings import ClientSettings, Paging
from placeholder_etl.core.urls import check_api_url, origin, resource_url, same_origin

__all__ = [
    "MAX_REDIRECTS",
    "ApiClient",
    "InFlight",
    "Page",
    "RawPage",
    "ordered_map",
    "pages_for",
]

T = TypeVar("T")
R = TypeVar("R")

#: Redirects followed for one request (within the API's own scheme, host and port).
MAX_REDIRECTS = 5
#: The largest response body read (a page of 100,000 users is ~60 MB).
MAX_BODY_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class Page:
    """One fetched page: validated records, the total count if the server sent one."""

    resource: str
    number: int
    url: str
    records: list[dict[str, Any]]
    total: int | None
    retries: int


@dataclass(frozen=True, slots=True)
class RawPage:
    """One fetched page as the server sent it, not decoded yet.

    Attributes:
        where: how error messages name it: ``users page 3 from <url>`` (secrets redacted).
        total: ``X-Total-Count``, checked to be a number (None when not sent).
    """

    resource: str
    number: int
    url: str
    where: str
    body: bytes
    content_type: str
    total: int | None
    retries: int

    def records(self) -> list[dict[str, Any]]:
        """The body decoded and checked against the contract (extra fields dropped).

        Raises:
            PermanentError: the body is not a JSON list; ContractError: a record breaks the
                contract (the message names resource, page, URL, record id and field).
        """
        return check_records(
            self.resource, _decode_list(self.body, self.content_type, self.where), self.where
        )


class _CappedRetry(Retry):
    """urllib3 Retry that never sleeps longer than ``max_retry_after`` for a Retry-After."""

    max_retry_after: float = 30.0

    def get_retry_after(self, response: Any) -> float | None:
        after = super().get_retry_after(response)
        return None if after is None else min(after, self.max_retry_after)


class _RetriesAreCounted(logging.Filter):
    """urllib3 warns at every retry; the client counts them (the manifest, "tried N times"
    in the error), so they are shown as INFO: only where INFO is (``--verbose``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith("Retrying"):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_RetriesAreCounted())


# --------------------------------------------------------------------------- the deadline

#: What the request being made in this thread may use: its deadline and its retry budget.
_local = threading.local()
_lock = threading.Lock()


class _Deadline:
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
        self._due: list[tuple[float, int, _Deadline, int]] = []
        self._wake = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, due: float, deadline: _Deadline, generation: int) -> None:
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

    placeholder_deadline: _Deadline | None = None

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline = getattr(_local, "deadline", None)
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


class _Adapter(HTTPAdapter):
    """requests' adapter with the deadline's connections and a per-request retry budget.

    ``max_retries`` is the budget this thread's request has left (a body that broke off
    spent some), else the configured :class:`Retry`.
    """

    @property  # type: ignore[override]
    def max_retries(self) -> Retry:
        return getattr(_local, "retry", None) or self._configured_retry

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


# --------------------------------------------------------------------------- the client

#: Raised while a body is read: the attempt is retried (transient), from the same budget.
_BODY_ERRORS = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ConnectionError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


class _Cut(Exception):
    """The deadline cut the body short (a body without a length just ends)."""


class ApiClient:
    """Fetch pages of a json-server-style API.

    Args:
        base_url: the API root, e.g. ``https://jsonplaceholder.typicode.com``; a path and a
            query (``?api_key=K``) are kept on every request.
        settings: timeouts, retries and pool size.

    Raises:
        PermanentError: ``base_url`` is not an http(s) URL with a host.
    """

    def __init__(self, base_url: str, settings: ClientSettings | None = None) -> None:
        try:
            self.base_url = check_api_url(base_url)
        except ValueError as exc:
            raise PermanentError(f"API URL {exc}") from None
        self.settings = settings or ClientSettings()
        retry_class = type(
            "Retry", (_CappedRetry,), {"max_retry_after": self.settings.max_retry_after}
        )
        self._retry = retry_class(
            total=self.settings.retries,
            connect=self.settings.retries,
            read=self.settings.retries,
            status=self.settings.retries,
            backoff_factor=self.settings.backoff,
            backoff_jitter=self.settings.backoff / 2,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=frozenset({"GET"}),
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        adapter = _Adapter(
            pool_connections=1, pool_maxsize=self.settings.pool_size, max_retries=self._retry
        )
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": "placeholder-etl"})
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()

    def page_url(self, resource: str, page: int, page_size: int, paging: Paging = "page") -> str:
        """The URL of page ``page`` (1-based) of ``resource``, with the root's own query."""
        if paging == "page":
            query = [("_page", str(page)), ("_limit", str(page_size))]
        else:
            query = [("_start", str((page - 1) * page_size)), ("_limit", str(page_size))]
        return resource_url(self.base_url, resource, query)

    def where(self, resource: str, page: int, page_size: int, paging: Paging = "page") -> str:
        """How messages name a page: ``users page 3 from <url>`` (secrets redacted)."""
        return f"{resource} page {page} from {redact_url(self.page_url(resource, page, page_size, paging))}"

    def get_page(
        self, resource: str, page: int, page_size: int, paging: Paging = "page"
    ) -> RawPage:
        """GET one page; its body is decoded and checked later (:meth:`RawPage.records`).

        Raises:
            TransientError: the server could not be reached or kept failing (after retries).
            PermanentError: any other 4xx, an ``X-Total-Count`` that is not a count, a
                redirect out of the API, a URL that cannot be requested.
        """
        url = self.page_url(resource, page, page_size, paging)
        where = f"{resource} page {page} from {redact_url(url)}"
        response, body, retries = self._get(url, where)
        return RawPage(
            resource=resource,
            number=page,
            url=redact_url(url),
            where=where,
            body=body,
            content_type=response.headers.get("Content-Type", ""),
            total=_total_count(response, where),
            retries=retries,
        )

    def fetch_page(self, resource: str, page: int, page_size: int, paging: Paging = "page") -> Page:
        """GET one page, decode it and check its records against the contract.

        Raises:
            TransientError: the server could not be reached or kept failing (after retries).
            PermanentError: any other 4xx, a body that is not a JSON list, a contract breach.
        """
        raw = self.get_page(resource, page, page_size, paging)
        return Page(resource, page, raw.url, raw.records(), raw.total, raw.retries)

    def fetch_all(
        self, resource: str, page_size: int = 1000, paging: Paging = "page"
    ) -> list[dict[str, Any]]:
        """Every record of ``resource``, page after page until a short or repeated page
        (small data only)."""
        records: list[dict[str, Any]] = []
        previous: list[Any] | None = None
        for number in itertools.count(1):
            page = self.fetch_page(resource, number, page_size, paging)
            ids = [record["id"] for record in page.records]
            if ids and ids == previous:
                return records  # the API ignores the page asked for
            records.extend(page.records)
            if len(page.records) < page_size:
                return records
            previous = ids
        raise AssertionError("unreachable")  # pragma: no cover

    def count(self, resource: str, page_size: int, paging: Paging = "page") -> int | None:
        """The number of records of ``resource`` from ``X-Total-Count``, or None if not sent.

        Asks for a single record, so it is cheap on any server.
        Raises:
            PermanentError: ``users`` is empty (the seed refused to run on no users).
        """
        url = self.page_url(resource, 1, 1, paging)
        where = f"{resource} count from {redact_url(url)}"
        response, body, _ = self._get(url, where)
        content_type = response.headers.get("Content-Type", "")
        records = _decode_list(body, content_type, where)
        total = _total_count(response, where)
        if resource == "users" and (total == 0 or (total is None and not records)):
            raise PermanentError(f"{where}: the users list is empty")
        return total

    def _get(self, url: str, where: str) -> tuple[requests.Response, bytes, int]:
        """GET ``url``: the response, its body and the retries it took.

        Retries share one budget (``settings.retries``): urllib3's (connection errors,
        timeouts, 429/5xx) and this loop's (a body that broke off or ran out of time).
        Redirects within the API's origin are followed and cost no retry.
        """
        settings = self.settings
        used = hops = 0
        current = url
        while True:
            left = settings.retries - used
            deadline = _Deadline(settings.timeout)
            _local.deadline = deadline
            _local.retry = self._retry.new(total=left, connect=left, read=left, status=left)
            response: requests.Response | None = None
            try:
                response = self._send(current, where, deadline)
                history = response.raw.retries.history if response.raw.retries else ()
                used += len(history)
                if response.is_redirect or 300 <= response.status_code < 400:
                    current = self._redirect(response, current, where, hops)
                    hops += 1
                    continue
                _check_status(response, where, used + 1)
                body = _read_body(response, where)
                if deadline.cut:
                    raise _Cut
                return response, body, used
            except (_Cut, *_BODY_ERRORS) as exc:
                used += 1
                problem = self._body_problem(exc, deadline)
                if used > settings.retries:
                    raise TransientError(f"{where}: {problem} (tried {used} times)") from None
                time.sleep(_backoff(settings.backoff, used))
            finally:
                _local.deadline = _local.retry = None
                deadline.close()
                if response is not None:
                    response.close()

    def _send(self, url: str, where: str, deadline: _Deadline) -> requests.Response:
        """One ``session.get`` (urllib3 retrying within it), its exceptions classified."""
        settings = self.settings
        try:
            return self.session.get(
                url, timeout=settings.timeout, allow_redirects=False, stream=True
            )
        except (
            requests.exceptions.InvalidSchema,
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.URLRequired,
            ValueError,  # e.g. a host name IDNA cannot encode
        ) as exc:
            raise PermanentError(f"{where}: the URL cannot be requested ({_text(exc)})") from None
        except requests.exceptions.SSLError as exc:
            raise PermanentError(
                f"{where}: the TLS connection failed ({_reason(exc)}); check the "
                "certificate or use http://"
            ) from None
        except requests.exceptions.RequestException as exc:
            tried = settings.retries + 1  # urllib3 spent what was left of the budget
            timed_out = isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc)
            if deadline.cuts or timed_out:
                problem = f"no answer within {settings.timeout:g} s"
            elif isinstance(exc, requests.exceptions.ConnectionError):
                problem = f"connection failed ({_reason(exc)})"
            else:
                problem = f"the request failed ({_reason(exc)})"
            raise TransientError(f"{where}: {problem} (tried {tried} times)") from None
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            tried = settings.retries + 1
            raise TransientError(
                f"{where}: connection failed ({_reason(exc)}) (tried {tried} times)"
            ) from None

    def _redirect(self, response: requests.Response, current: str, where: str, hops: int) -> str:
        """Where a redirect leads, if it may be followed; else a PermanentError."""
        status = f"HTTP {response.status_code}"
        location = response.headers.get("Location")
        if response.status_code not in (301, 302, 303, 307, 308) or not location:
            raise PermanentError(f"{where}: {status} {response.reason or ''}".rstrip())
        try:
            target = urljoin(current, location)
        except ValueError:
            raise PermanentError(
                f"{where}: {status} redirects to {redact(location)!r}, which is not a URL"
            ) from None
        if not same_origin(target, self.base_url):
            raise PermanentError(
                f"{where}: {status} redirects to {redact_url(target)}, outside the API "
                f"({origin(self.base_url)}): redirects are followed only within the API's "
                "own scheme, host and port"
            )
        if hops >= MAX_REDIRECTS:
            raise PermanentError(
                f"{where}: more than {MAX_REDIRECTS} redirects (a redirect loop?), the last to "
                f"{redact_url(target)}"
            )
        return target

    def _body_problem(self, exc: BaseException, deadline: _Deadline) -> str:
        if isinstance(exc, _Cut) or deadline.cut:
            return f"no answer within {self.settings.timeout:g} s"
        short = _INCOMPLETE.search(str(exc))
        if short:
            got, missing = short.groups()
            return (
                f"the response broke off after {got} bytes, {missing} bytes short of its "
                "Content-Length"
            )
        return f"the response broke off ({_reason(exc)})"


_INCOMPLETE = re.compile(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)")


def _check_status(response: requests.Response, where: str, tried: int) -> None:
    if response.status_code < 400:
        return
    reason = redact(f"HTTP {response.status_code} {response.reason or ''}".rstrip())
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientError(f"{where}: {reason} (tried {tried} times)")
    raise PermanentError(f"{where}: {reason}")


def _read_body(response: requests.Response, where: str) -> bytes:
    """The whole body (at most :data:`MAX_BODY_BYTES`), decoded per ``Content-Encoding``."""
    chunks, size = [], 0
    try:
        for chunk in response.iter_content(1 << 20):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise PermanentError(
                    f"{where}: the response is larger than {MAX_BODY_BYTES >> 20} MiB"
                )
            chunks.append(chunk)
    except requests.exceptions.ContentDecodingError as exc:
        encoding = response.headers.get("Content-Encoding", "")
        raise PermanentError(
            f"{where}: the response's Content-Encoding ({encoding}) does not decode "
            f"({_reason(exc)})"
        ) from None
    return b"".join(chunks)


def _decode_list(body: bytes, content_type: str, where: str) -> list[Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        kind = "HTML" if "html" in content_type or body.lstrip()[:1] == b"<" else "not JSON"
        detail = "response is an HTML page, not JSON" if kind == "HTML" else "response is not JSON"
        if "utf-8" in str(exc).lower():
            detail = "response is not valid UTF-8 JSON"
        snippet = body[:60].decode("utf-8", "replace").replace("\n", " ")
        raise PermanentError(
            f"{where}: {detail} ({content_type or 'no content type'}: {snippet!r}…)"
        ) from None
    if not isinstance(data, list):
        raise PermanentError(f"{where}: response is not a JSON list (got {type(data).__name__})")
    return data


def _total_count(response: requests.Response, where: str) -> int | None:
    raw = response.headers.get("X-Total-Count")
    if raw is None:
        return None
    try:
        total = int(raw)
    except ValueError:
        raise PermanentError(f"{where}: X-Total-Count is not a number ({raw!r})") from None
    if total < 0:
        raise PermanentError(f"{where}: X-Total-Count is negative ({total})")
    return total


def _backoff(factor: float, retry: int) -> float:
    """urllib3's backoff before retry number ``retry``: none, then factor x 2, x 4 …,
    plus a jitter of up to factor / 2."""
    if retry <= 1:
        return 0.0
    return min(120.0, factor * 2 ** (retry - 1) + random.random() * factor / 2)


_REASONS = (
    ("Connection reset by peer", "connection reset by the server"),
    ("Connection refused", "connection refused"),
    ("RemoteDisconnected", "server closed the connection without answering"),
    ("IncompleteRead", "the body was shorter than its Content-Length"),
    ("InvalidChunkLength", "a chunk of the body was malformed"),
    ("Response ended prematurely", "the body ended before its last chunk"),
    ("Connection broken", "the connection broke while the body was read"),
    ("Connection aborted", "connection aborted"),
    ("Name or service not known", "host name not found"),
    ("nodename nor servname", "host name not found"),
    ("Temporary failure in name resolution", "host name not found"),
    ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed"),
    ("incorrect header check", "not valid gzip/deflate data"),
    ("Received response with content-encoding", "not valid compressed data"),
)


def _reason(exc: BaseException) -> str:
    """The innermost, most specific cause of a requests/urllib3 error, in plain words."""
    text = str(exc)
    for marker, reason in _REASONS:
        if marker in text:
            return reason
    return type(exc).__name__


def _text(exc: BaseException) -> str:
    """An exception's message on one line, secrets hidden, at most 200 characters."""
    return redact(" ".join(str(exc).split()))[:200] or type(exc).__name__


def pages_for(total: int, page_size: int) -> int:
    """Number of pages of ``page_size`` records needed for ``total`` records."""
    return math.ceil(total / page_size)


class InFlight:
    """How many requests to keep in flight: enough to hide the API's latency, at most ``cap``.

    Little's law: to keep ``cores`` busy with pages that each wait ``wait`` seconds for the
    API and then take ``work`` seconds of CPU, about ``cores * (wait + work) / work`` pages
    must be on their way. Fetchers :meth:`record` both (``work`` as the thread's CPU time,
    which contention does not inflate; moving averages); the window
    grows while latency dominates and shrinks when the work is CPU-bound, so a fast API is
    not flooded with threads that only contend for the cores, and a slow one gets up to
    ``cap`` requests at once — never more (a real API's limit, see ``--in-flight``).
    """

    def __init__(self, cap: int, cores: int = 2) -> None:
        self.cap, self.cores = max(1, cap), max(1, cores)
        self.size = self.cap  # until the first pages say otherwise
        self._wait: float | None = None
        self._work: float | None = None

    def __int__(self) -> int:
        return self.size

    def record(self, wait: float, work: float) -> None:
        """One page took ``wait`` seconds from the API and ``work`` seconds to process."""
        self._wait = wait if self._wait is None else 0.7 * self._wait + 0.3 * wait
        self._work = work if self._work is None else 0.7 * self._work + 0.3 * work
        busy = max(self._work, 1e-4)
        wanted = math.ceil(self.cores * (self._wait + busy) / busy)
        self.size = max(1, min(self.cap, wanted))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], in_flight: int | InFlight) -> Iterator[R]:
    """Like ``map`` over a thread pool, in order, with at most ``in_flight`` calls pending.

    ``in_flight`` may be an :class:`InFlight`, whose size is read before every submission.
    Unlike ``Executor.map`` it does not submit everything up front, so memory stays bounded
    by the window however many items there are.
    """
    cap = in_flight.cap if isinstance(in_flight, InFlight) else in_flight
    with ThreadPoolExecutor(max_workers=cap, thread_name_prefix="fetch") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                while len(pending) >= int(in_flight):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
