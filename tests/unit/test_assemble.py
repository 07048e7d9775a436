"""Assembling tables from part files, and checking their totals."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pandas as pd
import pytest

from placeholder_api.fakedata import make_record, make_records
from placeholder_etl.core.assemble import (
    _in_order,
    assemble_tables,
    check_totals,
    unordered_resources,
)
from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.folder import FolderOutput
from placeholder_etl.core.resources import RESOURCE_NAMES, tables_of
from placeholder_etl.core.results import (
    TableInfo,
)
from placeholder_etl.core.store import Store
from placeholder_etl.core.tables import table_header, write_table
from tests.unit.steps import checkpointed, result, spec, write_part


def test_ordered_parts_are_joined_as_they_are(tmp_path) -> None:
    store = Store.open(str(tmp_path))
    parts = [write_part(tmp_path / "a.csv", [1, 2]), write_part(tmp_path / "b.csv", [3])]
    (tmp_path / "empty.csv").write_text("")
    out = io.BytesIO()
    info = write_table("users", store, [*map(str, parts), str(tmp_path / "empty.csv")], out, 3)
    data = out.getvalue()
    assert data == table_header("users") + parts[0].read_bytes() + parts[1].read_bytes()
    assert info == TableInfo(rows=3, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def test_unordered_parts_are_sorted_and_the_first_occurrence_wins(tmp_path) -> None:
    store = Store.open(str(tmp_path))
    first = write_part(tmp_path / "a.csv", [3, 1, 2])
    second = tmp_path / "b.csv"
    second.write_text("2,name 2 again,x,e,a,p,c\n4,name 4,x,e,a,p,c\n")
    (tmp_path / "empty.csv").write_text("")
    parts = [str(first), str(tmp_path / "empty.csv"), str(second)]
    out = io.BytesIO()
    info = write_table("users", store, parts, out, 6, ordered=False)
    data = out.getvalue()
    lines = data.decode().splitlines(keepends=True)
    assert lines[0].encode() == table_header("users")
    assert lines[1:] == [f"{i},name {i},x,e,a,p,c\n" for i in (1, 2, 3, 4)]
    assert info == TableInfo(rows=4, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    out = io.BytesIO()
    info = write_table("users", store, parts, out, 6, "parquet", ordered=False)
    frame = pd.read_parquet(io.BytesIO(out.getvalue()))
    assert frame["ID"].tolist() == [1, 2, 3, 4]
    assert frame["Name"].tolist() == [f"name {i}" for i in (1, 2, 3, 4)]
    assert info.rows == 4


def test_order_is_judged_across_chunks(tmp_path) -> None:
    part = write_part(tmp_path / "p.csv", [1])
    ordered = [result(part, 1, 10), result(part, None, None, rows=0), result(part, 11, 20)]
    assert _in_order(ordered)
    assert not _in_order([result(part, 1, 10), result(part, 10, 20)])  # a repeat
    assert not _in_order([result(part, 11, 20), result(part, 1, 10)])
    assert not _in_order([result(part, 1, 10, ordered=False)])
    mixed = [result(part, 5, 6), result(part, 1, 2), result(part, 1, 2, resource="posts")]
    assert unordered_resources(mixed) == ["users"]


def test_assemble_tables_stages_every_table(tmp_path) -> None:
    """Ids that repeat and come out of order: every table sorted, the first copy kept."""
    cache = Store.open(str(tmp_path / "cache"))
    again = make_record("users", 2, 0) | {"name": "name 2 again"}
    pages = [[make_record("users", n, 0) for n in (3, 1, 2)], [again, make_record("users", 4, 0)]]
    chunks = [checkpointed(cache, spec(first=n, last=n), [page]) for n, page in enumerate(pages, 1)]
    assert unordered_resources(chunks) == ["users"]
    staging = FolderOutput(tmp_path / "out")
    tables = assemble_tables(["users"], chunks, cache, staging)
    assert set(tables) == {"users", "users_flat"}
    assert tables["users"].rows == tables["users_flat"].rows == 4
    names = [make_record("users", n, 0)["name"] for n in (1, 2, 3, 4)]
    for table, id_column, name_column in (("users", "ID", "Name"), ("users_flat", "id", "name")):
        frame = pd.read_csv(staging.staged_path(table))
        assert frame[id_column].tolist() == [1, 2, 3, 4], table
        assert frame[name_column].tolist() == names, table


@pytest.mark.parametrize(
    "table",
    [
        "users",
        "users_flat",
        "posts",
        "comments",
        "albums",
        "photos",
        "todos",
    ],
)
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_sorting_and_de_duplicating_keeps_every_value(tmp_path, table, fmt) -> None:
    """Pages already in id order, written through the de-duplicating path: the same table."""
    cache = Store.open(str(tmp_path))
    resource = table.removesuffix("_flat")
    records = make_records(resource, 1, 61, 0)
    text = "name" if resource == "users" else "title"
    records[4][text], records[5][text] = 'a "quoted",\nline', "=1+1"
    chunk = checkpointed(cache, spec(resource, 1, 3), [records[:20], records[20:40], records[40:]])
    written = {}
    for ordered in (True, False):
        out = io.BytesIO()
        info = write_table(table, cache, chunk.parts[table], out, 60, fmt, ordered)
        written[ordered] = out.getvalue()
        assert info.rows == 60
    if fmt == "csv":
        assert written[False] == written[True]
    else:
        frames = [pd.read_parquet(io.BytesIO(written[o])) for o in (True, False)]
        pd.testing.assert_frame_equal(frames[1], frames[0])


def test_assemble_tables_joins_every_chunks_pages_in_plan_order(tmp_path) -> None:
    """Ordered ids across chunks: the page files, chunk after chunk, byte for byte."""
    cache = Store.open(str(tmp_path / "cache"))
    pages = [write_part(tmp_path / "cache" / f"p{n}.csv", [2 * n + 1, 2 * n + 2]) for n in range(4)]
    chunks = [
        result(pages[0], 1, 4, rows=4).model_copy(
            update={"parts": {t: [str(pages[0]), str(pages[1])] for t in ("users", "users_flat")}}
        ),
        result(pages[2], 5, 8, rows=4).model_copy(
            update={"parts": {t: [str(pages[2]), str(pages[3])] for t in ("users", "users_flat")}}
        ),
    ]
    staging = FolderOutput(tmp_path / "out")
    tables = assemble_tables(["users"], chunks, cache, staging)
    data = Path(staging.staged_path("users")).read_bytes()
    assert data == table_header("users") + b"".join(p.read_bytes() for p in pages)
    assert tables["users"].info == TableInfo(
        rows=8, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    assert tables["users"].path == staging.staged_path("users")


def test_totals_must_match_the_distinct_rows() -> None:
    tables = {"users": TableInfo(rows=25, bytes=1, sha256="x")}
    check_totals({"users": 25}, tables)
    check_totals({"users": None}, tables)
    with pytest.raises(PermanentError, match=r"^users: the API reported 26 records .* held 25 "):
        check_totals({"users": 26}, tables)


def test_assemble_tables_says_which_table_it_writes(tmp_path) -> None:
    """``on_table(table, k, n)`` once a table, before it is written, in table order."""
    cache = Store.open(str(tmp_path / "cache"))
    chunks = [
        checkpointed(cache, spec(resource), [make_records(resource, 1, 4, 0)])
        for resource in RESOURCE_NAMES
    ]
    staging = FolderOutput(tmp_path / "out")
    calls = []

    def on_table(table: str, number: int, count: int) -> None:
        assert not Path(staging.staged_path(table)).exists()  # not written yet
        calls.append((table, number, count))

    staged = assemble_tables(list(RESOURCE_NAMES), chunks, cache, staging, on_table=on_table)
    tables = tables_of(list(RESOURCE_NAMES))
    assert calls == [(table, k, len(tables)) for k, table in enumerate(tables, 1)]
    assert list(staged) == tables
    calls.clear()
    staging = FolderOutput(tmp_path / "again")
    assemble_tables(["posts"], chunks, cache, staging, on_table=on_table)
    assert calls == [("posts", 1, 1)]
