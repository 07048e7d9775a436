"""Fetch, check and transform one chunk of pages; every page is durable once checked.

Heavy data never leaves :func:`extract_chunk`: it returns only paths and counts.
"""

from __future__ import annotations

import gc
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from operator import itemgetter
from typing import Literal

from placeholder_etl.core.client import ApiClient, RawPage, pages_for
from placeholder_etl.core.concurrency import InFlight, ordered_map
from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.fastpath import PageTables, page_tables
from placeholder_etl.core.pages import Damage, PageBook, PageMarker
from placeholder_etl.core.resources import TABLES
from placeholder_etl.core.results import (
    ChunkResult,
    ChunkSpec,
)
from placeholder_etl.core.rows import csv_rows, flat_rows, seed_row
from placeholder_etl.core.settings import ClientSettings, local_slots
from placeholder_etl.core.store import Store

__all__ = [
    "extract_chunk",
    "render_page",
]

#: Where a page of a chunk came from: its checkpoint as it was, its checkpoint renewed by a
#: ``304 Not Modified``, or the API.
Source = Literal["reused", "revalidated", "fetched"]


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
    ``pages_damaged``, never trusted and never an error. An older page kept with the
    server's validators (``ETag``, ``Last-Modified``) and whose files check out is asked for
    conditionally: a ``304 Not Modified`` renews it (``pages_revalidated``), a ``200``
    replaces it. The others are fetched
    ``in_flight`` at a time; each is checked and rendered in its fetch thread (compiled code
    that releases the GIL, :func:`render_page`) and written as soon as it is checked. Text
    that a spreadsheet would run as a formula is neutralised unless ``keep_formulas``.

    Raises:
        TransientError, PermanentError: as :meth:`ApiClient.get_page` and :func:`render_page`.
    """
    client = client or ClientSettings(pool_size=in_flight)
    book = PageBook.of(cache, spec, keep_formulas)
    scan = book.scan(max_age)
    damaged: dict[int, Damage] = {}
    counts = {"rows": 0, "pages": 0, "reused": 0, "revalidated": 0, "retries": 0}
    note = None
    first_id = last_id = None
    ordered = True
    numbers: list[int] = []
    with long_lived_objects_frozen(), ApiClient(spec.api_url, client) as api:
        window = InFlight(cap=in_flight, cores=local_slots())

        def fetch(number: int) -> tuple[PageMarker, Source, int]:
            """In a fetch thread: reuse one page, or revalidate it, or fetch, check, render
            and write it.

            Returns:
                The page, where it came from, and its request's retries.
            """
            kept = scan.done.get(number) or scan.stale.get(number)
            damage = book.check(kept) if kept is not None else scan.broken.get(number)
            if damage is not None:
                damaged[number] = damage
            elif number in scan.done:
                return scan.done[number], "reused", 0
            validators = book.validators(kept) if kept is not None and damage is None else None
            asked = time.perf_counter()
            raw = api.get_page(spec.resource, number, spec.page_size, spec.paging, validators)
            got, cpu = time.perf_counter(), time.thread_time()
            if raw.not_modified and kept is not None and validators is not None:  # see _get
                page, source = book.renew(kept, raw.validators or validators), "revalidated"
            else:
                page = book.write(number, render_page(raw, keep_formulas), raw.validators)
                source = "fetched"
            # the page's own CPU time: waiting for the GIL or a core does not count
            window.record(got - asked, time.thread_time() - cpu)
            return page, source, raw.retries

        previous: PageMarker | None = None
        for page, source, retries in ordered_map(fetch, _page_numbers(spec), window):
            note = _ends_paging(spec, page, previous, api)
            if note:
                break
            previous = page
            numbers.append(page.number)
            counts["pages"] += 1
            counts["retries"] += retries
            if source != "fetched":
                counts["reused"] += 1
                counts["revalidated"] += source == "revalidated"
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
        pages_revalidated=counts["revalidated"],
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
