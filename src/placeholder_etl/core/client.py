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

import http.client
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import urljoin

import requests
import urllib3

from placeholder_etl.core.contract import check_records
from placeholder_etl.core.errors import PermanentError, TransientError
from placeholder_etl.core.http import CappedRetry, Deadline, DeadlineAdapter, request_state
from placeholder_etl.core.redact import redact, redact_url
from placeholder_etl.core.responses import (
    BODY_ERRORS,
    INCOMPLETE_READ,
    Validators,
    backoff_seconds,
    check_status,
    decode_list,
    one_line,
    plain_reason,
    read_body,
    total_count,
)
from placeholder_etl.core.settings import ClientSettings, Paging
from placeholder_etl.core.urls import check_api_url, origin, resource_url, same_origin

__all__ = ["MAX_REDIRECTS", "ApiClient", "Page", "RawPage", "pages_for"]

#: Redirects followed for one request (within the API's own scheme, host and port).
MAX_REDIRECTS = 5


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
        validators: the ``ETag`` and ``Last-Modified`` it came with (None: neither).
        not_modified: a conditional request was answered ``304 Not Modified``: no body, the
            copy kept is still current.
    """

    resource: str
    number: int
    url: str
    where: str
    body: bytes
    content_type: str
    total: int | None
    retries: int
    validators: Validators | None = None
    not_modified: bool = False

    def records(self) -> list[dict[str, Any]]:
        """The body decoded and checked against the contract (extra fields dropped).

        Raises:
            PermanentError: the body is not a JSON list; ContractError: a record breaks the
                contract (the message names resource, page, URL, record id and field).
        """
        return check_records(
            self.resource, decode_list(self.body, self.content_type, self.where), self.where
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
            "Retry", (CappedRetry,), {"max_retry_after": self.settings.max_retry_after}
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
        adapter = DeadlineAdapter(
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
        self,
        resource: str,
        page: int,
        page_size: int,
        paging: Paging = "page",
        validators: Validators | None = None,
    ) -> RawPage:
        """GET one page; its body is decoded and checked later (:meth:`RawPage.records`).

        With ``validators`` (those of the copy kept) the request is conditional, and a
        ``304 Not Modified`` answer is a page with ``not_modified`` set and no body.

        Raises:
            TransientError: the server could not be reached or kept failing (after retries).
            PermanentError: any other 4xx, an ``X-Total-Count`` that is not a count, a
                redirect out of the API, a URL that cannot be requested.
        """
        url = self.page_url(resource, page, page_size, paging)
        where = f"{resource} page {page} from {redact_url(url)}"
        response, body, retries = self._get(url, where, validators)
        not_modified = response.status_code == 304
        return RawPage(
            resource=resource,
            number=page,
            url=redact_url(url),
            where=where,
            body=body,
            content_type=response.headers.get("Content-Type", ""),
            total=None if not_modified else total_count(response, where),
            retries=retries,
            validators=Validators.of(response.headers) or (validators if not_modified else None),
            not_modified=not_modified,
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

        Asks for a single record, so it is cheap on any server. Never conditionally: an
        ``ETag`` covers the body (here the first record), not ``X-Total-Count``, so a ``304``
        would hide records added since (json-server's weak ETag does exactly that).

        Raises:
            PermanentError: ``users`` is empty (the seed refused to run on no users).
        """
        url = self.page_url(resource, 1, 1, paging)
        where = f"{resource} count from {redact_url(url)}"
        response, body, _ = self._get(url, where)
        content_type = response.headers.get("Content-Type", "")
        records = decode_list(body, content_type, where)
        total = total_count(response, where)
        if resource == "users" and (total == 0 or (total is None and not records)):
            raise PermanentError(f"{where}: the users list is empty")
        return total

    def _get(
        self, url: str, where: str, validators: Validators | None = None
    ) -> tuple[requests.Response, bytes, int]:
        """GET ``url``: the response, its body and the retries it took.

        Retries share one budget (``settings.retries``): urllib3's (connection errors,
        timeouts, 429/5xx) and this loop's (a body that broke off or ran out of time).
        Redirects within the API's origin are followed and cost no retry. With
        ``validators`` the GET is conditional and a ``304`` is returned with no body (a
        ``304`` to a GET that was not conditional is an error).
        """
        conditions = validators.conditions() if validators else {}
        settings = self.settings
        used = hops = 0
        current = url
        while True:
            left = settings.retries - used
            deadline = Deadline(settings.timeout)
            request_state.deadline = deadline
            request_state.retry = self._retry.new(total=left, connect=left, read=left, status=left)
            response: requests.Response | None = None
            try:
                response = self._send(current, where, deadline, conditions)
                history = response.raw.retries.history if response.raw.retries else ()
                used += len(history)
                if response.status_code == 304 and conditions:
                    return response, b"", used
                if response.is_redirect or 300 <= response.status_code < 400:
                    current = self._redirect(response, current, where, hops)
                    hops += 1
                    continue
                check_status(response, where, used + 1)
                body = read_body(response, where)
                if deadline.cut:
                    raise _Cut
                return response, body, used
            except (_Cut, *BODY_ERRORS) as exc:
                used += 1
                problem = self._body_problem(exc, deadline)
                if used > settings.retries:
                    raise TransientError(f"{where}: {problem} (tried {used} times)") from None
                time.sleep(backoff_seconds(settings.backoff, used))
            finally:
                request_state.deadline = request_state.retry = None
                deadline.close()
                if response is not None:
                    response.close()

    def _send(
        self, url: str, where: str, deadline: Deadline, headers: dict[str, str]
    ) -> requests.Response:
        """One ``session.get`` (urllib3 retrying within it), its exceptions classified."""
        settings = self.settings
        try:
            return self.session.get(
                url, headers=headers, timeout=settings.timeout, allow_redirects=False, stream=True
            )
        except (
            requests.exceptions.InvalidSchema,
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.URLRequired,
            ValueError,  # e.g. a host name IDNA cannot encode
        ) as exc:
            raise PermanentError(
                f"{where}: the URL cannot be requested ({one_line(exc)})"
            ) from None
        except requests.exceptions.SSLError as exc:
            raise PermanentError(
                f"{where}: the TLS connection failed ({plain_reason(exc)}); check the "
                "certificate or use http://"
            ) from None
        except requests.exceptions.RequestException as exc:
            tried = settings.retries + 1  # urllib3 spent what was left of the budget
            timed_out = isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc)
            if deadline.cuts or timed_out:
                problem = f"no answer within {settings.timeout:g} s"
            elif isinstance(exc, requests.exceptions.ConnectionError):
                problem = f"connection failed ({plain_reason(exc)})"
            else:
                problem = f"the request failed ({plain_reason(exc)})"
            raise TransientError(f"{where}: {problem} (tried {tried} times)") from None
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            tried = settings.retries + 1
            raise TransientError(
                f"{where}: connection failed ({plain_reason(exc)}) (tried {tried} times)"
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

    def _body_problem(self, exc: BaseException, deadline: Deadline) -> str:
        if isinstance(exc, _Cut) or deadline.cut:
            return f"no answer within {self.settings.timeout:g} s"
        short = INCOMPLETE_READ.search(str(exc))
        if short:
            got, missing = short.groups()
            return (
                f"the response broke off after {got} bytes, {missing} bytes short of its "
                "Content-Length"
            )
        return f"the response broke off ({plain_reason(exc)})"


def pages_for(total: int, page_size: int) -> int:
    """Number of pages of ``page_size`` records needed for ``total`` records."""
    return math.ceil(total / page_size)
