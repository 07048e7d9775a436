"""The pipeline's steps as plain functions over references (paths, counts): no Prefect.

count → plan → extract (per chunk) → assemble → check → manifest → commit. The flow
(:mod:`placeholder_etl.flow`) wraps these in Prefect tasks; the notebooks call them directly.
Heavy data never leaves a step: a chunk of pages is fetched, checked, transformed and written
to part files inside :func:`extract_chunk`, which returns only paths and counts.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import math
import os
import shutil
import socket
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import IO

from placeholder_etl.core.client import ApiClient, RawPage, ordered_map, pages_for
from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.fastpath import PageTables, page_tables
from placeholder_etl.core.redact import redact_url
from placeholder_etl.core.resources import ACTIVITY_TABLE, RESOURCE_NAMES, TABLES
from placeholder_etl.core.results import (
    ChunkResult,
    ChunkSpec,
    ContractSummary,
    Manifest,
    TableInfo,
    Timings,
)
from placeholder_etl.core.rows import (
    FLAT_COLUMNS,
    SEED_COLUMNS,
    csv_header,
    csv_rows,
    flat_rows,
    seed_row,
)
from placeholder_etl.core.settings import ClientSettings, Paging
from placeholder_etl.core.staging import (
    TEMP_SUFFIX,
    Staging,
    atomic_write,
    concat_files,
    fsync_file,
    make_tag,
)

__all__ = [
    "assemble_tables",
    "auto_pages_per_chunk",
    "build_manifest",
    "check_totals",
    "commit",
    "count_records",
    "extract_chunk",
    "parts_folder",
    "parts_missing",
    "plan_chunks",
    "prepare_output",
    "receive_parts",
    "render_page",
    "ship_parts",
    "total_pages",
    "unordered_resources",
]

Totals = Mapping[str, int | None]


# --------------------------------------------------------------------------- folders


def prepare_output(output_dir: str) -> Path:
    """The output folder as an absolute path (it need not exist yet).

    Raises:
        NotADirectoryError: ``output_dir`` is a file.
    """
    out = Path(output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output dir {out} is a file")
    return out


@contextmanager
def parts_folder(cache_dir: Path, cache: bool, run_id: str) -> Iterator[Path]:
    """Where a run's part files go: ``<cache_dir>/parts``, shared by runs that reuse pages;
    with ``cache`` off, a folder of this run's own, removed when the block ends."""
    parts = cache_dir / "parts"
    if cache:
        yield parts
        return
    own = parts / f"run-{run_id}"
    try:
        yield own
    finally:
        shutil.rmtree(own, ignore_errors=True)


# --------------------------------------------------------------------------- count and plan


def count_records(
    api_url: str, resources: Sequence[str], client: ClientSettings, paging: Paging = "page"
) -> dict[str, int | None]:
    """How many records each resource has (None when the server does not say), asked at once.

    Raises:
        PermanentError: ``users`` is empty; TransientError: the API cannot be reached.
    """
    with ApiClient(api_url, client) as api:
        counts = ordered_map(lambda name: api.count(name, 1, paging), resources, len(resources))
        return dict(zip(resources, counts, strict=True))


def total_pages(totals: Totals, page_size: int) -> int:
    """Pages needed for every resource whose total is known."""
    return sum(pages_for(t or 0, page_size) for t in totals.values())


def auto_pages_per_chunk(totals: Totals, page_size: int, slots: int) -> int:
    """Pages per task so that each of ``slots`` workers gets about two fat tasks."""
    return max(1, math.ceil(total_pages(totals, page_size) / max(1, 2 * slots)))


def plan_chunks(
    api_url: str,
    totals: Totals,
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
            ranges: list[tuple[int, int | None]] = [(1, None)]
        else:
            pages = pages_for(total, page_size)
            ranges = [
                (first, min(first + pages_per_chunk - 1, pages))
                for first in range(1, pages + 1, pages_per_chunk)
            ]
        chunks += [
            ChunkSpec(
                api_url=api_url,
                resource=resource,
                first_page=first,
                last_page=last,
                page_size=page_size,
                paging=paging,
            )
            for first, last in ranges
        ]
    return chunks


# --------------------------------------------------------------------------- extract


def table_header(table: str) -> bytes:
    """The CSV header line of an output table."""
    if table == "users":
        return csv_header(SEED_COLUMNS)
    return csv_header(FLAT_COLUMNS[table.removesuffix("_flat")])


def render_page(raw: RawPage, keep_formulas: bool = False) -> PageTables:
    """A fetched page's CSV rows per output table, checked against the contract.

    The compiled path (:mod:`placeholder_etl.core.fastpath`: Arrow, without the GIL) takes
    ordinary pages; a page it declines goes through the pydantic contract and
    :mod:`placeholder_etl.core.rows`, which give the same bytes or raise the error that names
    the resource, page, URL, record id and field.
    """
    fast = page_tables(raw.resource, raw.body, keep_formulas)
    return fast if fast is not None else _checked_page(raw, keep_formulas)


def _checked_page(raw: RawPage, keep_formulas: bool) -> PageTables:
    """:func:`render_page` through the contract's models and ``rows.py`` (the diagnostic path)."""
    records = raw.records()
    tables = {}
    for table in TABLES[raw.resource]:
        if table == "users":
            rows = [seed_row(user) for user in sorted(records, key=itemgetter("id"))]
        else:
            rows = flat_rows(raw.resource, records)
        tables[table] = csv_rows(rows, keep_formulas)
    ids = [record["id"] for record in records]
    ordered = all(a < b for a, b in itertools.pairwise(ids))
    first, last = (ids[0], ids[-1]) if ids else (None, None)
    return PageTables(tables, len(ids), first, last, ordered)


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
    every object in the process (~160,000 once Prefect and Dask are imported). ``gc.freeze``
    moves the objects alive now out of the collector's sight while chunks run (new objects
    are collected as usual), and ``gc.unfreeze`` gives them back when the last chunk in this
    process ends, so a long-lived process (a notebook kernel, ``serve``) still frees them.
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


def _page_numbers(spec: ChunkSpec) -> Iterator[int]:
    if spec.last_page is None:
        return itertools.count(spec.first_page)
    return iter(range(spec.first_page, spec.last_page + 1))


def extract_chunk(
    spec: ChunkSpec,
    parts_dir: Path,
    client: ClientSettings | None = None,
    in_flight: int = 16,
    keep_formulas: bool = False,
) -> ChunkResult:
    """Fetch, check and transform a chunk of pages into one part file per output table.

    Text that a spreadsheet would run as a formula is neutralised unless ``keep_formulas``
    (:func:`~placeholder_etl.core.transform.neutralise_formulas`).

    Pages are fetched ``in_flight`` at a time and written in page order, so memory holds at
    most ``in_flight`` pages. Part files are written under temporary names and renamed when
    complete: a part file that exists is whole.

    Raises:
        TransientError, PermanentError: as :meth:`ApiClient.fetch_page`.
    """
    client = client or ClientSettings(pool_size=in_flight)
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
        with long_lived_objects_frozen(), ApiClient(spec.api_url, client) as api:

            def fetch(number: int) -> tuple[RawPage, PageTables]:
                """In a fetch thread: the page's rows are rendered there, in parallel."""
                raw = api.get_page(spec.resource, number, spec.page_size, spec.paging)
                return raw, render_page(raw, keep_formulas)

            for raw, page in ordered_map(fetch, _page_numbers(spec), in_flight):
                pages_read += 1
                retries += raw.retries
                for table in tables:
                    handles[table].write(page.tables[table])
                if page.first_id is not None:
                    if not page.ordered or (last_id is not None and page.first_id <= last_id):
                        ordered = False
                    first_id = page.first_id if first_id is None else first_id
                    last_id = page.last_id
                rows += page.rows
                if spec.last_page is None and page.rows < spec.page_size:
                    break
        for table in tables:
            fsync_file(handles[table])
            handles[table].close()
            temps[table].replace(finals[table])
    finally:
        for table in tables:
            handles[table].close()
            temps[table].unlink(missing_ok=True)
    return ChunkResult(
        spec=spec,
        pages=pages_read,
        rows=rows,
        parts={table: str(path) for table, path in finals.items()},
        first_id=first_id,
        last_id=last_id,
        ordered=ordered,
        retries=retries,
        worker=worker_name(),
    )


def ship_parts(result: ChunkResult, flow_host: str) -> ChunkResult:
    """On a worker on another machine than the flow, put the part files in the result.

    Workers on the flow's own machine return paths only (the data stays on disk). A worker
    elsewhere (Saturn Cloud, a remote cluster) cannot share its disk, so it returns its parts
    zlib-compressed and removes its copies; :func:`receive_parts` writes them beside the flow.
    """
    if socket.gethostname() == flow_host:
        return result
    packed = {table: zlib.compress(Path(p).read_bytes(), 1) for table, p in result.parts.items()}
    for path in result.parts.values():  # the flow keeps them now; the worker's disk stays clean
        Path(path).unlink()
    return result.model_copy(update={"packed": packed})


def receive_parts(result: ChunkResult, parts_dir: Path) -> ChunkResult:
    """Write shipped part files (see :func:`ship_parts`) under ``parts_dir/received``.

    Returns:
        The result pointing at the received files (unchanged when nothing was shipped).
    """
    if not result.packed:
        return result
    parts = {}
    for table, data in result.packed.items():
        remote = Path(result.parts[table])
        local = parts_dir / "received" / remote.parent.name / remote.name
        local.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(local) as handle:
            handle.write(zlib.decompress(data))
        parts[table] = str(local)
    return result.model_copy(update={"parts": parts, "packed": None})


def parts_missing(result: ChunkResult) -> bool:
    """Whether any part file of ``result`` is gone (a cached result whose files were deleted)."""
    return not all(Path(p).exists() for p in result.parts.values())


# --------------------------------------------------------------------------- assemble and check


def _in_order(results: Sequence[ChunkResult]) -> bool:
    """True when a resource's chunks hold strictly increasing ids end to end."""
    last = None
    for result in results:
        if not result.ordered:
            return False
        if result.first_id is None:
            continue
        if last is not None and result.first_id <= last:
            return False
        last = result.last_id
    return True


def assemble_table(
    table: str, parts: Sequence[str], dest: Path, rows: int, ordered: bool = True
) -> TableInfo:
    """Join a table's part files, in order, under one header into ``dest``.

    Args:
        table: the output table's name (decides the header).
        parts: part files in page order.
        dest: the (temporary) file to write.
        rows: records in the parts, as counted by :func:`extract_chunk`.
        ordered: whether ids were strictly increasing across the parts.

    When the ids were not strictly increasing (``ordered`` is False) the table is read back,
    sorted by id and de-duplicated (first occurrence wins) so it still has one row per record.
    """
    header = table_header(table)
    with dest.open("wb") as out:
        if ordered:
            sha, size = concat_files(header, [Path(p) for p in parts], out)
        else:
            sha, size, rows = _sorted_table(table, header, parts, out)
        fsync_file(out)
    return TableInfo(rows=rows, bytes=size, sha256=sha)


def _sorted_table(
    table: str, header: bytes, parts: Sequence[str], out: IO[bytes]
) -> tuple[str, int, int]:
    import pandas as pd  # only here and in build_activity: workers never need it

    from placeholder_etl.core.transform import to_csv_rows

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


def build_activity(flat_tables: Mapping[str, Path], dest: Path) -> TableInfo:
    """Write the per-user activity summary from the flattened tables' files.

    Args:
        flat_tables: paths of ``users_flat``, ``posts``, ``comments``, ``todos``, ``albums``
            and ``photos`` (only the id columns, the user's name and ``completed`` are read).
        dest: where to write the CSV.
    """
    import pandas as pd

    from placeholder_etl.core.transform import summarize_activity

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
    return TableInfo(rows=len(summary), bytes=len(body), sha256=hashlib.sha256(body).hexdigest())


def assemble_tables(
    resources: Sequence[str], results: Sequence[ChunkResult], staging: Staging
) -> dict[str, TableInfo]:
    """Join every table's part files into staged files; add the activity summary when every
    resource is there.

    Args:
        resources: the resources of the run, in table order.
        results: every chunk's result, in plan order (page order within a resource).
        staging: where the tables are staged until the commit.

    A resource whose ids were not strictly increasing (duplicates across pages, unordered
    pages) is sorted and de-duplicated (see :func:`assemble_table`).
    """
    tables: dict[str, TableInfo] = {}
    staged: dict[str, Path] = {}
    for resource in resources:
        mine = [r for r in results if r.spec.resource == resource]
        ordered = _in_order(mine)
        rows = sum(r.rows for r in mine)
        for table in TABLES[resource]:
            staged[table] = staging.temp_path(table)
            parts = [r.parts[table] for r in mine]
            tables[table] = assemble_table(table, parts, staged[table], rows, ordered)
    if set(resources) == set(RESOURCE_NAMES):
        flat = {t: staged[t] for t in ("users_flat", *RESOURCE_NAMES[1:])}
        tables[ACTIVITY_TABLE] = build_activity(flat, staging.temp_path(ACTIVITY_TABLE))
    return tables


def unordered_resources(results: Sequence[ChunkResult]) -> list[str]:
    """Resources whose ids were not strictly increasing (they get sorted and de-duplicated)."""
    resources = dict.fromkeys(r.spec.resource for r in results)
    return [
        name for name in resources if not _in_order([r for r in results if r.spec.resource == name])
    ]


def check_totals(totals: Totals, tables: Mapping[str, TableInfo]) -> None:
    """Every resource must hold as many distinct records as the API said it had.

    Raises:
        PermanentError: naming the resource and both counts.
    """
    for resource, total in totals.items():
        rows = tables[TABLES[resource][0]].rows
        if total is not None and rows != total:
            raise PermanentError(
                f"{resource}: the API reported {total} records (X-Total-Count) but its pages "
                f"held {rows} distinct records; the data changed during the run or the server "
                "pages inconsistently, so nothing was written — run again"
            )


# --------------------------------------------------------------------------- manifest


def build_manifest(
    *,
    api_url: str,
    resources: Sequence[str],
    results: Sequence[ChunkResult],
    tables: Mapping[str, TableInfo],
    started: datetime,
    timings: Timings,
    flow_run_id: str | None = None,
) -> Manifest:
    """The run's manifest before its commit (:meth:`Manifest.stamped` names the files).

    A chunk counts as cached when another flow run fetched it (``flow_run_id`` differs).
    """
    return Manifest(
        started=started.astimezone(UTC).isoformat(timespec="seconds"),
        source=redact_url(api_url),
        resources=list(resources),
        flow_run_id=flow_run_id,
        tables=dict(tables),
        chunks=len(results),
        cached_chunks=sum(
            r.flow_run_id is not None and r.flow_run_id != flow_run_id for r in results
        ),
        pages=sum(r.pages for r in results),
        retries=sum(r.retries for r in results),
        workers=sorted({r.worker for r in results}),
        contract=ContractSummary(
            records_checked={
                name: sum(r.rows for r in results if r.spec.resource == name) for name in resources
            }
        ),
        timings=timings,
    )


def commit(staging: Staging, manifest: Manifest, started: float) -> Manifest:
    """Rename the staged tables into place with the manifest written last; return it stamped.

    Args:
        staging: the run's staged tables.
        manifest: from :func:`build_manifest`.
        started: ``time.perf_counter()`` when the run started (for ``timings.total_s``).
    """
    committed: list[Manifest] = []

    def finish(stamp: str) -> bytes:
        """Called under the output dir's lock with the stamp the files get."""
        committed.append(manifest.stamped(stamp, time.perf_counter() - started))
        return committed[0].to_json()

    staging.commit(finish)
    return committed[0]
