"""Parts between machines: a worker on another machine ships its rows in its result, the flow
writes them beside itself; a cached chunk's parts are checked before they are used.
"""

from __future__ import annotations

import hashlib
import socket
import zlib

from placeholder_etl.core import pages
from placeholder_etl.core.pages import PageBook
from placeholder_etl.core.resources import TABLES
from placeholder_etl.core.results import (
    ChunkResult,
    ChunkSpec,
)
from placeholder_etl.core.store import Store

__all__ = [
    "parts_damaged",
    "receive_parts",
    "ship_parts",
]


def ship_parts(result: ChunkResult, cache: Store, flow_host: str) -> ChunkResult:
    """On a worker on another machine than the flow, put the chunk's rows in the result.

    A worker on the flow's machine, or one writing to an object store, returns paths only
    (the data stays where the flow can read it). A worker elsewhere with a local cache
    cannot share its disk, so it returns each table's pages joined and zlib-compressed;
    :func:`receive_parts` writes them beside the flow.
    """
    if not cache.local or socket.gethostname() == flow_host:
        return result
    packed = {
        table: zlib.compress(b"".join(cache.cat(p) for p in paths), 1)
        for table, paths in result.parts.items()
    }
    return result.model_copy(update={"packed": packed})


def receive_parts(result: ChunkResult, cache: Store) -> ChunkResult:
    """Write shipped rows (see :func:`ship_parts`) under ``<cache>/received``.

    Returns:
        The result pointing at the received files (unchanged when nothing was shipped).
    """
    if not result.packed:
        return result
    parts = {}
    for table, data in result.packed.items():
        # named for its run too: concurrent runs sharing a cache never write each other's
        name = f"{_chunk_name(result.spec)}-{result.flow_run_id or 'local'}.{table}.csv"
        path = cache.path("received", result.spec.resource, name)
        cache.put(path, zlib.decompress(data))
        parts[table] = [path]
    return result.model_copy(update={"parts": parts, "packed": None})


def _chunk_name(spec: ChunkSpec) -> str:
    text = "|".join(str(v) for v in spec.model_dump().values())
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def parts_damaged(result: ChunkResult, cache: Store) -> bool:
    """Whether a file of ``result`` is gone or damaged (a cached result whose pages changed).

    Page checkpoints are checked as a chunk checks them before reuse: against their markers,
    in one listing of their folder (sizes), and on a local disk by their checksums
    (:meth:`~placeholder_etl.core.pages.PageBook.check`; on an object store the flow reads
    no rows). Other files (rows shipped from another machine, :func:`receive_parts`) must
    exist.
    """
    folders: dict[str, set[int]] = {}
    for path in (p for paths in result.parts.values() for p in paths):
        page = pages.page_number(path)
        if page is None:
            if not cache.exists(path):
                return True
        else:
            folders.setdefault(path.rsplit("/", 1)[0], set()).add(page[0])
    for folder, numbers in folders.items():
        book = PageBook(cache, folder, TABLES[result.spec.resource])
        done = book.done()
        if not numbers <= done.keys() or any(book.check(done[n]) for n in sorted(numbers)):
            return True
    return False
