"""Before a run: its output (a local folder or an object store), its page cache, and what
killed runs left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from placeholder_etl.core import pages
from placeholder_etl.core.staging import ObjectStaging, Staging, remove_stale_temps
from placeholder_etl.core.store import Store

__all__ = [
    "cache_store",
    "output_staging",
    "remove_leftovers",
    "run_cache",
]


def output_staging(
    output_dir: str, storage_options: dict[str, Any] | None = None
) -> Staging | ObjectStaging:
    """The staging of a run's tables in ``output_dir``: a local folder (renamed into place
    under a lock) or an object store (published with the manifest last).

    Raises:
        NotADirectoryError: ``output_dir`` is a file; StoreError: an unknown scheme or a
            missing filesystem package.
    """
    store = Store.open(output_dir, storage_options)
    if store.local:
        out = Path(store.root)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"output dir {out} is a file")
        return Staging(out)
    return ObjectStaging(store)


def cache_store(cache_dir: str, storage_options: dict[str, Any] | None = None) -> Store:
    """The page cache: a local folder or an object store."""
    return Store.open(cache_dir, storage_options)


def remove_leftovers(staging: Staging | ObjectStaging, cache: Store, max_age: float) -> list[str]:
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
