"""Words for people: counts with the right plural."""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` and its noun: ``1 page``, ``1,000 pages``, ``2 retries`` (``nouns`` when
    adding an s is wrong)."""
    word = noun if count == 1 else nouns or f"{noun}s"
    return f"{count:,} {word}"
