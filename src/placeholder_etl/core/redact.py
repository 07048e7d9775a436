"""Keep secrets out of everything that leaves the process: one redaction gate.

:func:`redact` is the gate: the terminal's lines, every log record (Prefect's console and
API handlers, :func:`install_log_redaction`), artifacts, the failure webhook's body, the
manifest and the pipeline's error messages pass through it. It hides

- the userinfo of URLs (``http://alice:***@host``; a lone user name may be a token: ``***@``),
- secret-looking query values (``api_key``, ``token``, ``password``, ``secret``, ``sig`` …),
- ``Authorization`` (and ``Proxy-Authorization``, ``X-Api-Key``) header values,
- any value registered with :func:`register_secret` (the password and keys of the run's API
  URL, the webhook URL), wherever it appears and however it is quoted.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

__all__ = [
    "install_log_redaction",
    "redact",
    "redact_url",
    "register_secret",
    "register_url_secrets",
]

MASK = "***"
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "auth", "signature", "sig")
_SECRET_NAME = "[A-Za-z0-9_.\\-]*(?:" + "|".join(_SECRET_WORDS) + ")[A-Za-z0-9_.\\-]*"

# scheme://userinfo@ : the userinfo ends at the last @ before the host's / ? # or blank
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#@'\"<>]+)@")
# ?api_key=value or &token=value (in URLs, paths and messages that quote them)
_QUERY = re.compile(rf"(?P<lead>[?&;](?i:{_SECRET_NAME})=)(?P<value>[^&#\s'\"<>|]*)")
# Authorization: Bearer abc / 'Authorization': 'Basic abc' / X-Api-Key: abc
_HEADER = re.compile(
    r"(?<![?&;\w-])(?P<lead>(?i:(?:proxy-)?authorization|x-api-key|api-key)['\"]?\s*[:=]\s*['\"]?)"
    r"(?P<value>(?:(?i:bearer|basic|token|digest)\s+)?[^\s'\",;&}]+)"
)

_registered: set[str] = set()
_registered_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Hide ``value`` (and its percent-encoded and decoded forms) everywhere from now on.

    Values shorter than 4 characters are not registered: hiding every ``a`` would hide
    nothing and garble every message.
    """
    if not value:
        return
    forms = {value, unquote(value), quote(value, safe=""), quote(unquote(value), safe="")}
    global _pattern
    with _registered_lock:
        before = len(_registered)
        _registered.update(form for form in forms if len(form) >= 4)
        if len(_registered) != before:
            ordered = sorted(_registered, key=len, reverse=True)  # longest first
            _pattern = re.compile("|".join(map(re.escape, ordered)))


def register_url_secrets(url: str | None) -> None:
    """Register the secrets of ``url``: its password (or lone user name) and the values of
    its secret-looking query parameters."""
    if not url:
        return
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:  # an unusable port: the userinfo is still there to hide
        parts, password, username = urlsplit(url), None, None
        userinfo = parts.netloc.rpartition("@")[0]
        username, _, password = userinfo.partition(":")
    register_secret(password if password is not None else username)
    if username is not None and password is not None:  # as a Basic Authorization header
        basic = f"{unquote(username)}:{unquote(password)}".encode()
        register_secret(base64.b64encode(basic).decode())
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if _secret(name):
            register_secret(value)


def redact_url(url: str) -> str:
    """``url`` with its password (or lone user name) and secret-looking query values hidden.

    >>> redact_url("https://bob:hunter2@api.example/users?_page=1&api_key=abc")
    'https://bob:***@api.example/users?_page=1&api_key=***'
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # not even a URL (an unbalanced [ in the host): the text gate
        return redact(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret(name) for name, _ in pairs):
            query = urlencode(
                [(name, MASK if _secret(name) else value) for name, value in pairs], safe="*"
            )
    return redact(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def redact(text: str) -> str:
    """``text`` with every secret it may hold replaced by ``***`` (see the module's list)."""
    if not text:
        return text
    text = _USERINFO.sub(_mask_userinfo, text)
    text = _QUERY.sub(lambda m: m["lead"] + MASK, text)
    text = _HEADER.sub(lambda m: m["lead"] + MASK, text)
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return text


def _mask_userinfo(match: re.Match[str]) -> str:
    userinfo = match["userinfo"]
    if userinfo in (MASK, f"{userinfo.partition(':')[0]}:{MASK}"):
        return match[0]  # already hidden
    user, has_password, _ = userinfo.partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if has_password else f"{match['scheme']}{MASK}@"


def _secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


# --------------------------------------------------------------------------- logging


class RedactingFilter(logging.Filter):
    """A handler filter: the record's message, traceback and stack pass :func:`redact`.

    Installed on handlers (not loggers), so it sees every record a handler writes or sends,
    propagated ones included. It rewrites the record itself, so every later handler gets the
    redacted text too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: leave it to the handler
            return True
        hidden = redact(message)
        if hidden != message or record.args:
            record.msg, record.args = hidden, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Put the redaction filter on every logging handler of this process (idempotent).

    Called when a run starts — by the command line before the flow, by the flow and by each
    task (a Dask worker process sets up its logging at its first task) — once the handlers
    exist: Prefect configures logging at a process's first run, replacing the root's.
    """
    loggers: list[logging.Logger | logging.PlaceHolder] = [logging.getLogger()]
    loggers += list(logging.Logger.manager.loggerDict.values())
    handlers = [h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
