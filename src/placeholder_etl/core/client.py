"""A client for json-server-style REST APIs such as JSONPlaceholder.

One :class:`ApiClient` holds a pooled :class:`requests.Session` whose adapter retries
transient faults (connection errors, read timeouts, 429 honouring ``Retry-After``, 5xx)
with exponential backoff. Whatever is left after those retries is raised as a
:class:`~placeholder_etl.core.errors.TransientError` or
:class:`~placeholder_etl.core.errors.PermanentError`
with a message that names the resource, the page and the URL. Settings:
:class:`~placeholder_etl.core.settings.ClientSettings`.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from placeholder_etl.core.contract import check_records
from placeholder_etl.core.errors import PermanentError, TransientError
from placeholder_etl.core.redact import redact_url
from placeholder_etl.core.settings import ClientSettings, Paging

__all__ = ["ApiClient", "InFlight", "Page", "RawPage", "ordered_map", "pages_for"]

T = TypeVar("T")
R = TypeVar("R")


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


class ApiClient:
    """Fetch pages of a json-server-style API.

    Args:
        base_url: the API root, e.g. ``https://jsonplaceholder.typicode.com``.
        settings: timeouts, retries and pool size.
    """

    def __init__(self, base_url: str, settings: ClientSettings | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.settings = settings or ClientSettings()
        retry_class = type(
            "Retry", (_CappedRetry,), {"max_retry_after": self.settings.max_retry_after}
        )
        retry = retry_class(
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
        adapter = HTTPAdapter(
            pool_connections=1, pool_maxsize=self.settings.pool_size, max_retries=retry
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
        """The URL of page ``page`` (1-based) of ``resource``."""
        if paging == "page":
            query = f"_page={page}&_limit={page_size}"
        else:
            query = f"_start={(page - 1) * page_size}&_limit={page_size}"
        return f"{self.base_url}/{resource}?{query}"

    def get_page(
        self, resource: str, page: int, page_size: int, paging: Paging = "page"
    ) -> RawPage:
        """GET one page; its body is decoded and checked later (:meth:`RawPage.records`).

        Raises:
            TransientError: the server could not be reached or kept failing (after retries).
            PermanentError: any other 4xx, an ``X-Total-Count`` that is not a count.
        """
        url = self.page_url(resource, page, page_size, paging)
        where = f"{resource} page {page} from {redact_url(url)}"
        response = self._get(url, where)
        return RawPage(
            resource=resource,
            number=page,
            url=redact_url(url),
            where=where,
            body=response.content,
            content_type=response.headers.get("Content-Type", ""),
            total=_total_count(response, where),
            retries=len(response.raw.retries.history) if response.raw.retries else 0,
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
        """Every record of ``resource``, page after page until a short page (small data only)."""
        records: list[dict[str, Any]] = []
        for number in itertools.count(1):
            page = self.fetch_page(resource, number, page_size, paging)
            records.extend(page.records)
            if len(page.records) < page_size:
                return records
        raise AssertionError("unreachable")  # pragma: no cover

    def count(self, resource: str, page_size: int, paging: Paging = "page") -> int | None:
        """The number of records of ``resource`` from ``X-Total-Count``, or None if not sent.

        Asks for a single record, so it is cheap on any server.
        Raises:
            PermanentError: ``users`` is empty (the seed refused to run on no users).
        """
        url = self.page_url(resource, 1, 1, paging)
        where = f"{resource} count from {redact_url(url)}"
        response = self._get(url, where)
        content_type = response.headers.get("Content-Type", "")
        records = _decode_list(response.content, content_type, where)
        total = _total_count(response, where)
        if resource == "users" and (total == 0 or (total is None and not records)):
            raise PermanentError(f"{where}: the users list is empty")
        return total

    def _get(self, url: str, where: str) -> requests.Response:
        attempts = self.settings.retries + 1
        try:
            response = self.session.get(url, timeout=self.settings.timeout)
        except requests.exceptions.RetryError as exc:  # pragma: no cover - raise_on_status=False
            raise TransientError(f"{where}: gave up after {attempts} attempts ({exc})") from None
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as exc:
            if isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc):
                problem = f"no answer within {self.settings.timeout:g} s"
            else:
                problem = f"connection failed ({_reason(exc)})"
            raise TransientError(f"{where}: {problem} (tried {attempts} times)") from None
        if response.status_code >= 400:
            reason = f"HTTP {response.status_code} {response.reason}".rstrip()
            if response.status_code == 429 or response.status_code >= 500:
                raise TransientError(f"{where}: {reason} (tried {attempts} times)")
            raise PermanentError(f"{where}: {reason}")
        return response


_REASONS = (
    ("Connection reset by peer", "connection reset by the server"),
    ("Connection refused", "connection refused"),
    ("RemoteDisconnected", "server closed the connection without answering"),
    ("Connection aborted", "connection aborted"),
    ("Name or service not known", "host name not found"),
)


def _reason(exc: BaseException) -> str:
    """The innermost, most specific cause of a requests/urllib3 connection error."""
    text = str(exc)
    for marker, reason in _REASONS:
        if marker in text:
            return reason
    return type(exc).__name__


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
