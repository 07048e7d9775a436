"""Keep secrets out of logs, manifests, artifacts and reports."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["redact_url"]

_SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "auth", "signature", "sig")


def redact_url(url: str) -> str:
    """``url`` with any password and secret-looking query values replaced by ``***``.

    >>> redact_url("https://bob:hunter2@api.example/users?_page=1&api_key=abc")
    'https://bob:***@api.example/users?_page=1&api_key=***'
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = netloc.rsplit("@", 1)[1]
        netloc = f"{user}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret(name) for name, _ in pairs):
            query = urlencode(
                [(name, "***" if _secret(name) else value) for name, value in pairs], safe="*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)
