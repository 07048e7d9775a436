"""Reading and checking one response: status, body, JSON list, ``X-Total-Count``.

Every problem becomes a :class:`~placeholder_etl.core.errors.TransientError` or
:class:`~placeholder_etl.core.errors.PermanentError` whose message names where it happened
and what went wrong, in plain words (secrets redacted).
"""

from __future__ import annotations

import http.client
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import orjson
import requests
import urllib3

from placeholder_etl.core.errors import PermanentError, TransientError
from placeholder_etl.core.redact import redact

__all__ = [
    "BODY_ERRORS",
    "INCOMPLETE_READ",
    "Validators",
    "backoff_seconds",
    "check_status",
    "decode_list",
    "one_line",
    "plain_reason",
    "read_body",
    "total_count",
]

#: The largest response body read (a page of 100,000 users is ~60 MB).
MAX_BODY_BYTES = 1 << 30

#: Raised while a body is read: the attempt is retried (transient), from the same budget.
BODY_ERRORS = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ConnectionError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


INCOMPLETE_READ = re.compile(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)")

#: A validator worth keeping: visible ASCII (spaces inside), at most 1,000 characters.
_VALIDATOR = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,999}")


@dataclass(frozen=True, slots=True)
class Validators:
    """What identifies the version of a response the server sent: its ``ETag`` and
    ``Last-Modified`` headers, kept to ask again conditionally (``If-None-Match``,
    ``If-Modified-Since``: "only if it changed").

    A value that could not be sent back as a header (control characters, over 1,000
    characters) is not kept.
    """

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str | None]) -> Self | None:
        """The validators among ``headers`` (None: the server sent none worth keeping)."""
        etag, modified = (
            value if value is not None and _VALIDATOR.fullmatch(value) else None
            for value in (headers.get("ETag"), headers.get("Last-Modified"))
        )
        return cls(etag, modified) if etag or modified else None

    def conditions(self) -> dict[str, str]:
        """The headers of a conditional GET: answered 304 and no body when nothing changed."""
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers

    def as_dict(self) -> dict[str, str | None]:
        """As kept beside a page's checkpoint (read back with :meth:`from_dict`)."""
        return {"etag": self.etag, "last_modified": self.last_modified}

    @classmethod
    def from_dict(cls, kept: Any) -> Self | None:
        """Read back :meth:`as_dict` (None: not what it writes)."""
        if not isinstance(kept, dict):
            return None
        values = (kept.get("etag"), kept.get("last_modified"))
        if not all(value is None or isinstance(value, str) for value in values):
            return None
        return cls.of({"ETag": values[0], "Last-Modified": values[1]})


def check_status(response: requests.Response, where: str, tried: int) -> None:
    if response.status_code < 400:
        return
    reason = redact(f"HTTP {response.status_code} {response.reason or ''}".rstrip())
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientError(f"{where}: {reason} (tried {tried} times)")
    raise PermanentError(f"{where}: {reason}")


def read_body(response: requests.Response, where: str) -> bytes:
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
            f"({plain_reason(exc)})"
        ) from None
    return b"".join(chunks)


def decode_list(body: bytes, content_type: str, where: str) -> list[Any]:
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


def total_count(response: requests.Response, where: str) -> int | None:
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


def backoff_seconds(factor: float, retry: int) -> float:
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


def plain_reason(exc: BaseException) -> str:
    """The innermost, most specific cause of a requests/urllib3 error, in plain words."""
    text = str(exc)
    for marker, reason in _REASONS:
        if marker in text:
            return reason
    return type(exc).__name__


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, secrets hidden, at most 200 characters."""
    return redact(" ".join(str(exc).split()))[:200] or type(exc).__name__
