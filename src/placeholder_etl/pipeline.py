"""The pipeline's steps as plain functions over references (paths, counts), no Prefect.

:mod:`placeholder_etl.flow` wraps each step in a Prefect task; the notebooks call them
directly. Heavy data never leaves a step: a chunk of pages is fetched, checked, transformed
and appended to part files inside :func:`extract_chunk`, which returns only paths and counts.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import math
import os
import socket
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from placeholder_etl.client import (
    ApiClient,
    ClientSettings,
    Page,
    Paging,
    ordered_map,
    pages_for,
)
from placeholder_etl.errors import PermanentError
from placeholder_etl.load import TEMP_SUFFIX, atomic_write, concat_files, fsync_file, make_tag
from placeholder_etl.resources import RESOURCE_NAMES
from placeholder_etl.rows import (
    FLAT_COLUMNS,
    SEED_COLUMNS,
    csv_header,
    csv_rows,
    flat_rows,
    seed_row,
)

__all__ = [
    "ACTIVITY_TABLE",
    "TABLES",
    "ChunkSpec",
    "assemble_table",
    "build_activity",
    "extract_chunk",
    "plan_chunks",
    "table_header",
    "worker_name",
]

#: Output tables of each resource. ``users`` is the seed's table; the rest are flattened.
TABLES: dict[str, tuple[str, ...]] = {
    name: (("users", "users_flat") if name == "users" else (name,)) for name in RESOURCE_NAMES
}
ACTIVITY_TABLE = "user_activity"


def table_header(table: str) -> bytes:
    """The CSV header line of an output table."""
    if table == "users":
        return csv_header(SEED_COLUMNS)
    return csv_header(FLAT_COLUMNS[table.removesuffix("_flat")])


def _rows_for(table: str, page: Page, keep_formulas: bool = False) -> bytes:
    """A page's CSV rows for ``table``: the bytes ``transform_users``/``flatten_records``
    followed by ``to_csv`` would give (tests/test_transform.py holds them to it), built from
    tuples because a DataFrame per page costs more than the rest of the page's work."""
    if table == "users":
        rows = [seed_row(user) for user in sorted(page.records, key=itemgetter("id"))]
    else:
        rows = flat_rows(page.resource, page.records)
    return csv_rows(rows, keep_formulas)


@dataclass(frozen=True, slots=True)
class ChunkSpec:
    """A run of consecutive pages of one resource, fetched by one task.

    ``last_page`` is None when the server sent no ``X-Total-Count``: then pages are fetched
    until one comes back short.
    """

    api_url: str
    resource: str
    first_page: int
    last_page: int | None
    page_size: int
    paging: Paging = "page"

    @property
    def key(self) -> str:
        """A stable name for this chunk's part files."""
        text = "|".join(str(v) for v in asdict(self).values())
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def label(self) -> str:
        """A short human name: ``users p1-8``."""
        last = "…" if self.last_page is None else self.last_page
        return f"{self.resource} p{self.first_page}-{last}"


def plan_chunks(
    api_url: str,
    totals: Mapping[str, int | None],
    page_size: int,
    pages_per_chunk: int,
    paging: Paging = "page",
) -> list[ChunkSpec]:
    """Split every resource's pages into chunks of ``pages_per_chunk`` pages.

    Args:
        api_url: the API root.
        totals: records per resource (None: unknown, one open-ended chunk).
        page_size: records per page.
        pages_per_chunk: pages fetched by one task.
        paging: ``page`` (``_page``/``_limit``) or ``start`` (``_start``/``_limit``).
    """
    if page_size < 1 or pages_per_chunk < 1:
        raise ValueError("page_size and pages_per_chunk must be at least 1")
    chunks = []
    for resource, total in totals.items():
        if total is None:
            chunks.append(ChunkSpec(api_url, resource, 1, None, page_size, paging))
            continue
        pages = pages_for(total, page_size)
        for first in range(1, pages + 1, pages_per_chunk):
            last = min(first + pages_per_chunk - 1, pages)
            chunks.append(ChunkSpec(api_url, resource, first, last, page_size, paging))
    return chunks


def auto_pages_per_chunk(totals: Mapping[str, int | None], page_size: int, slots: int) -> int:
    """Pages per task so that each of ``slots`` workers gets about two fat tasks."""
    return max(1, math.ceil(total_pages(totals, page_size) / max(1, 2 * slots)))


def total_pages(totals: Mapping[str, int | None], page_size: int) -> int:
    """Pages needed for every resource whose total is known."""
    return sum(pages_for(t or 0, page_size) for t in totals.values())


def worker_name() -> str:
    """Where this code runs: the Dask worker address, or ``host:pid``."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


_freezes = 0
_freezes_lock = threading.Lock()


@contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Keep the garbage collector from rescanning what Prefect and Dask loaded, page after page.

    A page allocates thousands of dicts, so collections run often, and the full ones walk
    every object in the process: ~160,000 once Prefect and Dask are imported, which made a
    page cost 19 instead of 13 ms of CPU. ``gc.freeze`` moves the objects alive now out of the
    collector's sight while chunks run (new objects are collected as usual), and
    ``gc.unfreeze`` gives them back when the last chunk in this process ends, so a
    long-lived process (a notebook kernel, ``serve``) still frees them later.
    """
    global _freezes
    with _freezes_lock:
        if _freezes == 0:
            gc.freeze()
        _freezes += 1
    try:
        yield
    finally:
        with _freezes_lock:
            _freezes -= 1
            if _freezes == 0:
                gc.unfreeze()


def _pages(spec: ChunkSpec) -> Iterator[int]:
    if spec.last_page is None:
        return itertools.count(spec.first_page)
    return iter(range(spec.first_page, spec.last_page + 1))


def extract_chunk(
    spec: ChunkSpec,
    parts_dir: Path,
    settings: ClientSettings | None = None,
    in_flight: int = 16,
    keep_formulas: bool = False,
) -> dict[str, Any]:
    """Fetch, check and transform a chunk of pages into one part file per output table.

    Text that a spreadsheet would run as a formula is neutralised unless ``keep_formulas``
    (:func:`~placeholder_etl.transform.neutralise_formulas`).

    Pages are fetched ``in_flight`` at a time and written in page order, so memory holds at
    most ``in_flight`` pages. Part files are written under temporary names and renamed when
    complete: a part file that exists is whole.

    Returns:
        A small summary: part paths per table, rows, first/last id, whether ids were
        strictly increasing, retries made, and the worker that ran it.

    Raises:
        TransientError, PermanentError: as :meth:`ApiClient.fetch_page`.
    """
    settings = settings or ClientSettings()
    out_dir = parts_dir / (f"{spec.key}-raw" if keep_formulas else spec.key)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = make_tag()
    tables = TABLES[spec.resource]
    finals = {table: out_dir / f"{table}.csv" for table in tables}
    temps = {table: out_dir / f".{table}.csv.{tag}{TEMP_SUFFIX}" for table in tables}
    rows = retries = pages_read = 0
    first_id = last_id = None
    ordered = True
    handles = {table: temps[table].open("wb") for table in tables}
    try:
        with long_lived_objects_frozen(), ApiClient(spec.api_url, settings) as client:

            def fetch(page: int) -> Page:
                return client.fetch_page(spec.resource, page, spec.page_size, spec.paging)

            for page in ordered_map(fetch, _pages(spec), in_flight):
                pages_read += 1
                retries += page.retries
                for table in tables:
                    handles[table].write(_rows_for(table, page, keep_formulas))
                for record in page.records:
                    rid = record["id"]
                    if last_id is not None and rid <= last_id:
                        ordered = False
                    first_id = rid if first_id is None else first_id
                    last_id = rid
                rows += len(page.records)
                if spec.last_page is None and len(page.records) < spec.page_size:
                    break
        for table in tables:
            fsync_file(handles[table])
            handles[table].close()
            temps[table].replace(finals[table])
    finally:
        for table in tables:
            handles[table].close()
            temps[table].unlink(missing_ok=True)
    return {
        "resource": spec.resource,
        "label": spec.label,
        "pages": pages_read,
        "rows": rows,
        "parts": {table: str(path) for table, path in finals.items()},
        "first_id": first_id,
        "last_id": last_id,
        "ordered": ordered,
        "retries": retries,
        "worker": worker_name(),
    }


def ship_parts(result: dict[str, Any], flow_host: str) -> dict[str, Any]:
    """On a worker on another machine than the flow, put the part files in the result.

    Workers on the flow's own machine return paths only (the data stays on disk). A worker
    elsewhere (Saturn Cloud, a remote cluster) cannot share its disk, so it returns its parts
    zlib-compressed; :func:`receive_parts` writes them beside the flow.
    """
    if socket.gethostname() == flow_host:
        return result
    packed = {table: zlib.compress(Path(p).read_bytes(), 1) for table, p in result["parts"].items()}
    return {**result, "packed": packed}


def receive_parts(result: dict[str, Any], parts_dir: Path) -> dict[str, Any]:
    """Write shipped part files (see :func:`ship_parts`) under ``parts_dir``; return paths."""
    packed = result.get("packed")
    if not packed:
        return result
    parts = {}
    for table, data in packed.items():
        remote = Path(result["parts"][table])
        local = parts_dir / remote.parent.name / remote.name
        local.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(local) as handle:
            handle.write(zlib.decompress(data))
        parts[table] = str(local)
    return {key: value for key, value in result.items() if key != "packed"} | {"parts": parts}


def check_chunks(resource: str, chunks: Sequence[Mapping[str, Any]]) -> bool:
    """True when a resource's chunks hold strictly increasing ids end to end."""
    last = None
    for chunk in chunks:
        if not chunk["ordered"]:
            return False
        if chunk["first_id"] is None:
            continue
        if last is not None and chunk["first_id"] <= last:
            return False
        last = chunk["last_id"]
    return True


def assemble_table(
    table: str, parts: Sequence[str], dest: Path, rows: int, ordered: bool = True
) -> dict:
    """Join a table's part files, in order, under one header into ``dest``.

    Args:
        table: the output table's name (decides the header).
        parts: part files in page order.
        dest: the (temporary) file to write.
        rows: records in the parts, as counted by :func:`extract_chunk`.
        ordered: whether ids were strictly increasing across the parts.

    When the ids were not strictly increasing (``ordered`` is False) the table is read back,
    sorted by id and de-duplicated (first occurrence wins) so it still has one row per record.

    Returns:
        ``{"table", "rows", "bytes", "sha256"}``.
    """
    header = table_header(table)
    with dest.open("wb") as out:
        if ordered:
            sha, size = concat_files(header, [Path(p) for p in parts], out)
        else:
            sha, size, rows = _sorted_table(table, header, parts, out)
        fsync_file(out)
    return {"table": table, "rows": rows, "bytes": size, "sha256": sha}


def _sorted_table(table: str, header: bytes, parts: Sequence[str], out: Any) -> tuple:
    import pandas as pd  # only here and in build_activity: workers never need it

    from placeholder_etl.transform import to_csv_rows

    id_column = "ID" if table == "users" else "id"
    names = header.decode().rstrip("\n").split(",")
    frames = [
        pd.read_csv(p, header=None, names=names, dtype=str, keep_default_na=False)
        for p in parts
        if Path(p).stat().st_size
    ]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=names)
    frame = frame.assign(_id=frame[id_column].astype("int64"))
    frame = frame.drop_duplicates("_id").sort_values("_id", kind="stable").drop(columns="_id")
    body = to_csv_rows(frame)
    digest = hashlib.sha256(header + body)
    out.write(header + body)
    return digest.hexdigest(), len(header) + len(body), len(frame)


def build_activity(flat_tables: Mapping[str, str], dest: Path) -> dict:
    """Write the per-user activity summary from the flattened tables' files.

    Args:
        flat_tables: paths of ``users_flat``, ``posts``, ``comments``, ``todos``, ``albums``
            and ``photos`` (only the id columns, the user's name and ``completed`` are read).
        dest: where to write the CSV.
    """
    import pandas as pd

    from placeholder_etl.transform import summarize_activity

    usecols = {
        "users_flat": ["id", "name"],
        "posts": ["user_id", "id"],
        "comments": ["post_id", "id"],
        "todos": ["user_id", "id", "completed"],
        "albums": ["user_id", "id"],
        "photos": ["album_id", "id"],
    }
    frames = {t: pd.read_csv(flat_tables[t], usecols=cols) for t, cols in usecols.items()}
    summary = summarize_activity(
        frames["users_flat"],
        frames["posts"],
        frames["comments"],
        frames["todos"],
        frames["albums"],
        frames["photos"],
    )
    if summary.empty:
        raise PermanentError("user activity: no users to summarise")
    body = summary.to_csv(index=False).encode()
    with dest.open("wb") as out:
        out.write(body)
        fsync_file(out)
    return {
        "table": ACTIVITY_TABLE,
        "rows": len(summary),
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
