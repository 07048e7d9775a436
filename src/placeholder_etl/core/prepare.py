"""Before a run: its output (a local folder or an object store), its page cache, and what
killed runs left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from placeholder_etl.core import pages
from placeholder_etl.core.atomic import remove_stale_temps
from placeholder_etl.core.output import Output
from placeholder_etl.core.store import Store

__all__ = [
    "cache_store",
    "remove_leftovers",
    "run_cache",
]


def cache_store(cache_dir: str, storage_options: dict[str, Any] | None = None) -> Store:
    """The page cache: a local folder or an object store."""
    return Store.open(cache_dir, storage_options)


def remove_leftovers(staging: Output, cache: Store, max_age: float) -> list[str]:
    """What killed runs left (temporary files, staging, claims) and expired page checkpoints."""
    removed = staging.remove_leftovers()
    if cache.local:
        removed += map(str, remove_stale_temps(Path(cache.root)))
    removed += pages.expire(cache, max_age)
    return removed


@contextmanager
def run_cache(cache: Store, keep: bool, run_id: str) -> Iterator[Store]:
    """Where a run keeps its pages: the shared cache, or with ``keep`` off, a folder of this
    run's own, removed when the block ends."""
    if keep:
        yield cache
        return
    own = cache.child("runs", f"run-{run_id}")
    try:
        yield own
    finally:
        cache.remove(own.root, recursive=True)
