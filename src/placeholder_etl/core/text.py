"""Words for people: counts with the right plural, durations, sizes."""

from __future__ import annotations

__all__ = ["duration", "plural", "reused", "size"]


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` and its noun: ``1 page``, ``1,000 pages``, ``2 retries`` (``nouns`` when
    adding an s is wrong)."""
    word = noun if count == 1 else nouns or f"{noun}s"
    return f"{count:,} {word}"


def duration(seconds: float) -> str:
    """``2.8 s``, ``12 min 3 s``, ``2 h 5 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def size(count: float) -> str:
    """Bytes for people: ``512 bytes``, ``4.9 KiB``, ``7.3 GiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:,} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def reused(pages: int, revalidated: int = 0, of: int | None = None) -> str:
    """Pages from the cache: ``40 reused``, ``40 of 100 pages reused``, and when a ``304``
    renewed some, ``, 30 of them revalidated by HTTP 304``."""
    text = f"{pages:,} reused" if of is None else f"{pages:,} of {plural(of, 'page')} reused"
    return f"{text}, {revalidated:,} of them revalidated by HTTP 304" if revalidated else text
