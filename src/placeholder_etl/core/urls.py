"""URLs: the API's, built with :mod:`urllib.parse`, never joined as strings; folders' URLs.

The API root may carry a path (``https://host/api``) and a query (``?api_key=K``): every
request keeps both. The root is checked before any work (:func:`check_api_url`), and
redirects are only followed within its own scheme, host and port (:func:`same_origin`).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from placeholder_etl.core.redact import redact, redact_url

__all__ = [
    "check_api_url",
    "is_remote",
    "local_path",
    "origin",
    "resource_url",
    "same_origin",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def check_api_url(url: str) -> str:
    """``url`` as an API root (one trailing ``/`` of its path dropped), or a clear error.

    Raises:
        ValueError: not an ``http://`` or ``https://`` URL with a host (and a valid port);
            the message shows the URL with its secrets hidden.
    """
    shown = redact_url(url) if "://" in url else redact(url)
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError as exc:
        raise ValueError(f"{shown} is not a valid URL ({exc})") from None
    if "://" not in url:
        raise ValueError(f"{shown} is not a URL: give its scheme, e.g. http://{shown.lstrip('/')}")
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        raise ValueError(f"{shown}: the API must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{shown}: the URL names no host")
    if any(c.isspace() for c in url.strip()):
        raise ValueError(f"{shown}: a URL cannot contain spaces")
    if parts.fragment:
        raise ValueError(f"{shown}: an API root cannot have a #fragment")
    path = parts.path.removesuffix("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc, path, parts.query, ""))


def resource_url(root: str, resource: str, query: list[tuple[str, str]]) -> str:
    """The URL of ``resource`` under ``root`` with ``query`` after the root's own query.

    >>> resource_url("http://h/api?api_key=K", "users", [("_page", "2")])
    'http://h/api/users?api_key=K&_page=2'
    """
    parts = urlsplit(root)
    path = parts.path.rstrip("/") + "/" + resource
    pairs = parse_qsl(parts.query, keep_blank_values=True) + query
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(pairs), ""))


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url`` (the port written out), or the scheme alone."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return redact(url.split("?", 1)[0])
    if not parts.hostname:
        return f"{parts.scheme}:" if parts.scheme else redact(url)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port else "")


def same_origin(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` share their scheme, host and port."""
    return origin(a) == origin(b)


def is_remote(url: str) -> bool:
    """Whether a folder or file ``url`` is on an object store (``s3://``, ``gs://``, ...),
    not a plain path or a ``file://``/``local://`` URL on this machine."""
    return "://" in url and not url.startswith(("file://", "local://"))


def local_path(url: str) -> str:
    """The path of a local ``url`` (a plain path, or a ``file://``/``local://`` URL)."""
    return url.removeprefix("file://").removeprefix("local://")
