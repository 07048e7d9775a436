"""Small builders the unit tests of the pipeline's steps share (chunks, pages, parts)."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson

from placeholder_api.fakedata import make_records
from placeholder_etl.core.client import RawPage
from placeholder_etl.core.extract import render_page
from placeholder_etl.core.fastpath import page_tables
from placeholder_etl.core.pages import PageBook
from placeholder_etl.core.results import (
    ChunkResult,
    ChunkSpec,
)
from placeholder_etl.core.store import Store

URL = "http://api.test"


def spec(
    resource: str = "users",
    first: int = 1,
    last: int | None = 1,
    size: int = 10,
    total: int | None = 25,
):
    return ChunkSpec(
        api_url=URL,
        resource=resource,
        first_page=first,
        last_page=last,
        page_size=size,
        total=total,
    )


def result(part: Path, first_id, last_id, ordered=True, rows=2, resource="users", **extra):
    flat = extra.pop("flat", part)
    return ChunkResult(
        spec=spec(resource),
        pages=extra.pop("pages", 1),
        rows=rows,
        parts={"users": [str(part)], "users_flat": [str(flat)]},
        first_id=first_id,
        last_id=last_id,
        ordered=ordered,
        retries=0,
        worker="here",
        **extra,
    )


def users_page(number: int) -> list[dict]:
    """The records of page ``number`` of users, 10 a page."""
    return make_records("users", 10 * number - 9, 10 * number + 1, 0)


def raw_page(resource: str, records: list, number: int = 1) -> RawPage:
    """A page as ``ApiClient.get_page`` returns it: the body not decoded yet."""
    where = f"{resource} page {number} from {URL}/{resource}"
    body = orjson.dumps(records)
    return RawPage(resource, number, f"{URL}/{resource}", where, body, "application/json", 3, 0)


def fast(raw: RawPage, keep_formulas: bool):
    """The compiled path alone; it must take an ordinary page, not decline it."""
    tables = page_tables(raw.resource, raw.body, keep_formulas)
    assert tables is not None, "the compiled path declined an ordinary page"
    return tables


def write_part(path: Path, ids: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i},name {i},x,e,a,p,c\n" for i in ids))
    return path


def checkpointed(cache: Store, chunk: ChunkSpec, pages: list[list[dict]]) -> ChunkResult:
    """``chunk`` as ``extract_chunk`` returns it, its pages (these records) checkpointed."""
    book = PageBook.of(cache, chunk, False)
    done = [
        book.write(number, render_page(raw_page(chunk.resource, records, number)))
        for number, records in enumerate(pages, chunk.first_page)
    ]
    rising = all(a.last_id < b.first_id for a, b in itertools.pairwise(done))
    return ChunkResult(
        spec=chunk,
        pages=len(done),
        rows=sum(page.rows for page in done),
        parts={table: [book.file(page.number, table) for page in done] for table in book.tables},
        first_id=done[0].first_id,
        last_id=done[-1].last_id,
        ordered=rising and all(page.ordered for page in done),
        retries=0,
        worker="elsewhere:1",
    )


def users_chunk(cache: Store, first: int, last: int) -> ChunkResult:
    """A users chunk of pages ``first`` to ``last``, 10 records each, checkpointed."""
    pages = [users_page(number) for number in range(first, last + 1)]
    return checkpointed(cache, spec(first=first, last=last), pages)
