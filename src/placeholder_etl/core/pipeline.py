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
import socket
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

from placeholder_etl.core import pages
from placeholder_etl.core.client import ApiClient, RawPage, pages_for
from placeholder_etl.core.concurrency import InFlight, ordered_map
from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.fastpath import PageTables, page_tables
from placeholder_etl.core.pages import Damage, PageBook, PageMarker
from placeholder_etl.core.redact import redact_url
from placeholder_etl.core.resources import ACTIVITY_TABLE, RESOURCE_NAMES, TABLES
from placeholder_etl.core.results import (
    ChunkResult,
    ChunkSpec,
    ContractSummary,
    Manifest,
    StagedTable,
    TableInfo,
    Timings,
)
from placeholder_etl.core.rows import csv_rows, flat_rows, seed_row
from placeholder_etl.core.settings import ClientSettings, Paging, local_slots
from placeholder_etl.core.staging import ObjectStaging, Staging, remove_stale_temps
from placeholder_etl.core.store import Store
from placeholder_etl.core.tables import SUFFIX, Format, build_activity, write_table

__all__ = [
    "assemble_tables",
    "auto_pages_per_chunk",
    "build_manifest",
    "cache_store",
    "check_plan",
    "check_totals",
    "commit",
    "count_records",
    "extract_chunk",
    "output_staging",
    "parts_damaged",
    "plan_chunks",
    "receive_parts",
    "remove_leftovers",
    "render_page",
    "run_cache",
    "ship_parts",
    "total_pages",
    "unordered_resources",
]

Totals = Mapping[str, int | None]


# --------------------------------------------------------------------------- folders


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


def check_plan(totals: Totals, max_records: int) -> None:
    """Refuse a plan beyond ``max_records`` records per resource, before any page is fetched.

    Raises:
        PermanentError: naming the resource, its ``X-Total-Count`` and the limit.
    """
    for resource, total in totals.items():
        if total is not None and total > max_records:
            raise PermanentError(
                f"{resource}: the API reports {total:,} records (X-Total-Count), more than "
                f"--max-records {max_records:,}; nothing was fetched (raise --max-records to "
                "fetch them all)"
            )


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
    max_records: int | None = None,
) -> list[ChunkSpec]:
    """Split every resource's pages into chunks of ``pages_per_chunk`` pages.

    Args:
        api_url: the API root.
        totals: records per resource (None: unknown, one open-ended chunk).
        page_size: records per page.
        pages_per_chunk: pages fetched by one task.
        paging: ``page`` (``_page``/``_limit``) or ``start`` (``_start``/``_limit``).
        max_records: most records of one resource (:func:`check_plan`); an open-ended
            chunk fetches at most that many records' pages.
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
                total=total,
                max_pages=(
                    pages_for(max_records, page_size) if last is None and max_records else None
                ),
            )
            for first, last in ranges
        ]
    return chunks


# --------------------------------------------------------------------------- extract


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
        if spec.max_pages is not None:  # --max-records: the pages after it are not asked for
            return iter(range(spec.first_page, spec.first_page + spec.max_pages + 1))
        return itertools.count(spec.first_page)
    return iter(range(spec.first_page, spec.last_page + 1))


def _ends_paging(
    spec: ChunkSpec, page: PageMarker, previous: PageMarker | None, api: ApiClient
) -> str | None:
    """Why the pages of an open-ended chunk end before ``page`` (it repeats the page before
    it), else None; an error when paging cannot go on.

    Raises:
        PermanentError: a page is empty before the API's total; a page repeats the one
            before it while a total is known; more pages than ``--max-records`` allows.
    """
    where = api.where(spec.resource, page.number, spec.page_size, spec.paging)
    if spec.last_page is not None and page.rows == 0:
        raise PermanentError(
            f"{where}: the page is empty, but the API reported {spec.total:,} records "
            f"(X-Total-Count), so pages up to {pages_for(spec.total or 0, spec.page_size)} "
            "should hold records"
        )
    if (
        previous is not None
        and page.rows
        and page.number == previous.number + 1
        and (page.rows, page.first_id, page.last_id)
        == (previous.rows, previous.first_id, previous.last_id)
    ):
        ignored = "_page" if spec.paging == "page" else "_start"
        repeat = (
            f"{where}: the same {page.rows} records as page {previous.number} (ids "
            f"{page.first_id} to {page.last_id}): the API ignores {ignored}"
        )
        if spec.last_page is not None:
            raise PermanentError(repeat)
        return f"{repeat}; paging stopped there"
    if spec.max_pages is not None and page.number >= spec.first_page + spec.max_pages and page.rows:
        raise PermanentError(
            f"{where}: more than {spec.max_pages * spec.page_size:,} records (--max-records) "
            "and no X-Total-Count to tell how many; stopped"
        )
    return None


def extract_chunk(
    spec: ChunkSpec,
    cache: Store,
    client: ClientSettings | None = None,
    in_flight: int = 32,
    keep_formulas: bool = False,
    max_age: float | None = None,
) -> ChunkResult:
    """Fetch, check and transform a chunk of pages; every page is durable once checked.

    Pages already checkpointed (by an earlier attempt, an earlier run, or another worker
    that ran this chunk before it was lost), younger than ``max_age`` seconds, are reused
    and not fetched again (:mod:`placeholder_etl.core.pages`) once their files are checked
    against their markers: sizes, and on a local disk checksums. A checkpointed page whose
    files are damaged or missing is fetched again and named in the result's
    ``pages_damaged``, never trusted and never an error. The others are fetched
    ``in_flight`` at a time; each is checked and rendered in its fetch thread (compiled code
    that releases the GIL, :func:`render_page`) and written as soon as it is checked. Text
    that a spreadsheet would run as a formula is neutralised unless ``keep_formulas``.

    Raises:
        TransientError, PermanentError: as :meth:`ApiClient.get_page` and :func:`render_page`.
    """
    client = client or ClientSettings(pool_size=in_flight)
    book = PageBook.of(cache, spec, keep_formulas)
    done, broken = book.scan(max_age)
    damaged: dict[int, Damage] = {}
    counts = {"rows": 0, "pages": 0, "reused": 0, "retries": 0}
    note = None
    first_id = last_id = None
    ordered = True
    numbers: list[int] = []
    with long_lived_objects_frozen(), ApiClient(spec.api_url, client) as api:
        window = InFlight(cap=in_flight, cores=local_slots())

        def fetch(number: int) -> tuple[PageMarker, int]:
            """In a fetch thread: fetch, check, render and write one page (or reuse it)."""
            damage = book.check(done[number]) if number in done else broken.get(number)
            if number in done and damage is None:
                return done[number], -1
            if damage is not None:
                damaged[number] = damage
            asked = time.perf_counter()
            raw = api.get_page(spec.resource, number, spec.page_size, spec.paging)
            got, cpu = time.perf_counter(), time.thread_time()
            page = book.write(number, render_page(raw, keep_formulas))
            # the page's own CPU time: waiting for the GIL or a core does not count
            window.record(got - asked, time.thread_time() - cpu)
            return page, raw.retries

        previous: PageMarker | None = None
        for page, retries in ordered_map(fetch, _page_numbers(spec), window):
            note = _ends_paging(spec, page, previous, api)
            if note:
                break
            previous = page
            numbers.append(page.number)
            counts["pages"] += 1
            counts["reused" if retries < 0 else "retries"] += 1 if retries < 0 else retries
            if page.first_id is not None:
                if not page.ordered or (last_id is not None and page.first_id <= last_id):
                    ordered = False
                first_id = page.first_id if first_id is None else first_id
                last_id = page.last_id
            counts["rows"] += page.rows
            if spec.last_page is None and page.rows < spec.page_size:
                break
    return ChunkResult(
        spec=spec,
        pages=counts["pages"],
        pages_reused=counts["reused"],
        pages_damaged=dict(sorted(damaged.items())),
        rows=counts["rows"],
        parts={table: [book.file(n, table) for n in numbers] for table in book.tables},
        first_id=first_id,
        last_id=last_id,
        ordered=ordered,
        retries=counts["retries"],
        worker=worker_name(),
        note=note,
    )


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


def assemble_tables(
    resources: Sequence[str],
    results: Sequence[ChunkResult],
    cache: Store,
    staging: Staging | ObjectStaging,
    fmt: Format = "csv",
) -> dict[str, StagedTable]:
    """Write every table from its page files into ``staging``; add the activity summary when
    every resource is there.

    Args:
        resources: the resources of the run, in table order.
        results: every chunk's result, in plan order (page order within a resource).
        cache: where the page files are.
        staging: where the tables are staged until the commit.
        fmt: ``csv`` or ``parquet``.

    Returns:
        What was staged, by table: the commit's argument (:func:`commit`), wherever this ran.

    A resource whose ids were not strictly increasing (duplicates across pages, unordered
    pages) is sorted and de-duplicated (see :func:`~placeholder_etl.core.tables.write_table`).
    """
    suffix = SUFFIX[fmt]
    staged: dict[str, StagedTable] = {}

    def stage(table: str, info: TableInfo) -> None:
        path = staging.staged_path(table, suffix)
        staged[table] = StagedTable(path=path, suffix=suffix, **info.model_dump(exclude={"file"}))

    for resource in resources:
        mine = [r for r in results if r.spec.resource == resource]
        ordered = _in_order(mine)
        rows = sum(r.rows for r in mine)
        for table in TABLES[resource]:
            parts = [path for r in mine for path in r.parts[table]]
            with staging.open_table(table, suffix) as out:
                stage(table, write_table(table, cache, parts, out, rows, fmt, ordered))
    if set(resources) == set(RESOURCE_NAMES):
        flat = {t: staged[t].path for t in ("users_flat", *RESOURCE_NAMES[1:])}
        with staging.open_table(ACTIVITY_TABLE, suffix) as out:
            stage(ACTIVITY_TABLE, build_activity(staging.store, flat, out, fmt))
    return staged


def unordered_resources(results: Sequence[ChunkResult]) -> list[str]:
    """Resources whose ids were not strictly increasing (they get sorted and de-duplicated)."""
    resources = dict.fromkeys(r.spec.resource for r in results)
    return [
        name for name in resources if not _in_order([r for r in results if r.spec.resource == name])
    ]


def check_totals(totals: Totals, tables: Mapping[str, TableInfo | StagedTable]) -> None:
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
    tables: Mapping[str, TableInfo | StagedTable],
    started: datetime,
    timings: Timings,
    flow_run_id: str | None = None,
    fmt: Format = "csv",
) -> Manifest:
    """The run's manifest before its commit (:meth:`Manifest.stamped` names the files).

    A chunk counts as cached when another flow run fetched it (``flow_run_id`` differs): all
    its pages count as reused.
    """

    def cached(result: ChunkResult) -> bool:
        return result.flow_run_id is not None and result.flow_run_id != flow_run_id

    pages_total = sum(r.pages for r in results)
    reused = sum(r.pages if cached(r) else r.pages_reused for r in results)
    return Manifest(
        started=started.astimezone(UTC).isoformat(timespec="seconds"),
        source=redact_url(api_url),
        resources=list(resources),
        flow_run_id=flow_run_id,
        format=fmt,
        tables={
            name: table.info if isinstance(table, StagedTable) else table
            for name, table in tables.items()
        },
        chunks=len(results),
        cached_chunks=sum(map(cached, results)),
        pages=pages_total,
        pages_fetched=pages_total - reused,
        pages_reused=reused,
        retries=sum(r.retries for r in results),
        workers=sorted({r.worker for r in results}),
        contract=ContractSummary(
            records_checked={
                name: sum(r.rows for r in results if r.spec.resource == name) for name in resources
            }
        ),
        timings=timings,
    )


def commit(
    staging: Staging | ObjectStaging,
    staged: Mapping[str, StagedTable],
    manifest: Manifest,
    started: float,
) -> Manifest:
    """Put the staged tables under their final names, check them, write the manifest last;
    return it stamped.

    Args:
        staging: where the run's tables were staged.
        staged: what :func:`assemble_tables` returned.
        manifest: from :func:`build_manifest`.
        started: ``time.perf_counter()`` when the run started (for ``timings.total_s``).

    Raises:
        CommitError: a table is missing or short under its final name (nothing committed).
    """
    committed: list[Manifest] = []

    def finish(stamp: str) -> bytes:
        """Called (under the output dir's lock, locally) with the stamp the files get."""
        committed.append(manifest.stamped(stamp, time.perf_counter() - started))
        return committed[0].to_json()

    staging.commit(staged, finish)
    return committed[0]
