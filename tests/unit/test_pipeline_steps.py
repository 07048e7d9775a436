"""The pipeline's steps that need no server: planning, assembling, checking, the manifest."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pandas as pd
import pytest

from placeholder_api.fakedata import make_record, make_records
from placeholder_etl.core.assemble import (
    _in_order,
    assemble_tables,
    check_totals,
    unordered_resources,
)
from placeholder_etl.core.client import RawPage
from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.extract import _checked_page, render_page
from placeholder_etl.core.fastpath import page_tables
from placeholder_etl.core.folder import FolderOutput
from placeholder_etl.core.manifest import build_manifest, commit
from placeholder_etl.core.objectstore import ObjectStoreOutput
from placeholder_etl.core.outputs import open_output
from placeholder_etl.core.pages import PageBook, expire
from placeholder_etl.core.plan import auto_pages_per_chunk, check_plan, plan_chunks, total_pages
from placeholder_etl.core.prepare import run_cache
from placeholder_etl.core.resources import resolve_resources
from placeholder_etl.core.results import (
    ChunkResult,
    ChunkSpec,
    Manifest,
    StagedTable,
    TableInfo,
    Timings,
)
from placeholder_etl.core.store import Store, StoreError
from placeholder_etl.core.tables import table_header, write_table
from placeholder_etl.core.transport import parts_damaged, receive_parts, ship_parts

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


# --------------------------------------------------------------------------- resources


@pytest.mark.parametrize(
    ("requested", "names"),
    [
        ("users", ("users",)),
        ("todos, users", ("users", "todos")),
        (["photos", "posts", "photos"], ("posts", "photos")),
        ("users,all", ("users", "posts", "comments", "albums", "photos", "todos")),
    ],
)
def test_resources_resolve_in_table_order(requested, names) -> None:
    assert resolve_resources(requested) == names


def test_unknown_or_no_resources_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^unknown resource '\.\./x', 'ALL': choose from users, "):
        resolve_resources("users,../x,ALL")
    with pytest.raises(ValueError, match=r"^no resource given: choose from users, posts, "):
        resolve_resources(" , ")


# --------------------------------------------------------------------------- plan


def test_chunks_cover_every_page_once_in_order() -> None:
    chunks = plan_chunks(URL, {"users": 25, "posts": 0, "todos": 41}, 10, 2, "start")
    assert [(c.resource, c.first_page, c.last_page) for c in chunks] == [
        ("users", 1, 2),
        ("users", 3, 3),
        ("todos", 1, 2),
        ("todos", 3, 4),
        ("todos", 5, 5),
    ]
    assert {(c.page_size, c.paging, c.api_url) for c in chunks} == {(10, "start", URL)}
    assert [c.total for c in chunks] == [25, 25, 41, 41, 41]  # decides the pages' version


def test_an_unknown_total_is_one_open_chunk() -> None:
    (chunk,) = plan_chunks(URL, {"users": None}, 10, 3)
    assert (chunk.first_page, chunk.last_page, chunk.label) == (1, None, "users p1-…")
    assert chunk.total is None


@pytest.mark.parametrize(("size", "per"), [(0, 1), (1, 0)])
def test_plan_refuses_empty_pages_or_chunks(size, per) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan_chunks(URL, {"users": 5}, size, per)


def test_a_plan_beyond_max_records_is_refused_naming_the_resource() -> None:
    check_plan({"users": 10, "posts": None, "todos": 10_000_000}, 10_000_000)
    with pytest.raises(
        PermanentError,
        match=r"^posts: the API reports 10,000,001 records \(X-Total-Count\), more than "
        r"--max-records 10,000,000; nothing was fetched",
    ):
        check_plan({"users": 10, "posts": 10_000_001}, 10_000_000)


def test_only_an_open_ended_chunk_is_bounded_by_max_records() -> None:
    known, unknown = plan_chunks(URL, {"users": 25, "posts": None}, 10, 5, max_records=95)
    assert (known.last_page, known.max_pages) == (3, None)
    assert (unknown.last_page, unknown.max_pages) == (None, 10)  # 95 records: 10 pages
    (unbounded,) = plan_chunks(URL, {"posts": None}, 10, 5)
    assert unbounded.max_pages is None


def test_pages_and_pages_per_task() -> None:
    totals = {"users": 25, "posts": 250, "todos": None}
    assert total_pages(totals, 10) == 3 + 25
    assert auto_pages_per_chunk(totals, 10, 2) == 7  # 28 pages, two tasks per slot
    assert auto_pages_per_chunk(totals, 10, 0) == 28  # no slots: one task
    assert auto_pages_per_chunk({"users": 1}, 10, 8) == 1


def test_page_checkpoints_are_kept_apart_by_every_setting_that_decides_their_rows(
    tmp_path,
) -> None:
    """Checkpoint folders replaced chunk keys: one per API, resource, total, page size, paging
    and formula setting; the chunks of one such version share it, a file per page and table."""
    cache = Store.open(str(tmp_path))
    base = spec()
    others = [
        spec(size=11),
        spec(resource="posts"),
        spec(total=26),
        spec(total=None),
        base.model_copy(update={"paging": "start"}),
        base.model_copy(update={"api_url": URL + "/v2"}),
    ]
    books = [PageBook.of(cache, s, False) for s in (base, *others)]
    books.append(PageBook.of(cache, base, True))
    assert len({book.folder for book in books}) == 8
    book = books[0]
    assert book.folder == PageBook.of(cache, spec(), False).folder
    assert book.folder == PageBook.of(cache, spec(first=2, last=3), False).folder
    version = Path(book.folder).parent.name
    assert Path(book.folder) == tmp_path / "pages" / version / "users"
    assert len(version) == 20
    assert book.tables == ("users", "users_flat")
    assert book.file(3, "users_flat") == f"{book.folder}/p0000003.users_flat.csv"
    assert book.file(3, "users") != book.file(4, "users")
    assert spec(first=3, last=8).label == "users p3-8"

    # a page checkpointed for one version is seen by every chunk of it, and by no other
    book.write(1, render_page(raw_page("users", users_page(1))))
    assert set(PageBook.of(cache, spec(first=1, last=3), False).done()) == {1}
    assert all(other.done() == {} for other in books[1:])


def test_checkpoints_older_than_the_cache_window_are_not_reused(tmp_path) -> None:
    """--cache-hours: a page checkpoint is reused that long, and its version folder is removed
    once its newest page is older."""
    cache = Store.open(str(tmp_path))
    users, posts = PageBook.of(cache, spec(), False), PageBook.of(cache, spec("posts"), False)

    hour_ago = time.time() - 3600
    for number in (1, 2):
        users.write(number, render_page(raw_page("users", users_page(number), number)))
    posts.write(1, render_page(raw_page("posts", make_records("posts", 1, 11, 0))))
    for path in Path(users.folder).iterdir():
        os.utime(path, (hour_ago, hour_ago))
    assert set(users.done()) == {1, 2}  # no window: every checkpoint
    assert set(users.done(max_age=7200)) == {1, 2}
    assert users.done(max_age=1800) == {}
    assert set(posts.done(max_age=1800)) == {1}

    users.write(3, render_page(raw_page("users", users_page(3), 3)))
    assert set(users.done(max_age=1800)) == {3}  # only the fresh page among old ones
    assert expire(cache, 1800) == []  # the version has a fresh page: kept
    for path in Path(users.folder).iterdir():
        os.utime(path, (hour_ago, hour_ago))
    assert expire(cache, 1800) == [str(Path(users.folder).parent)]
    assert not Path(users.folder).exists()
    assert set(posts.done(max_age=1800)) == {1}


# --------------------------------------------------------------------------- rows of a page


def _fast(raw: RawPage, keep_formulas: bool):
    """The compiled path alone; it must take an ordinary page, not decline it."""
    tables = page_tables(raw.resource, raw.body, keep_formulas)
    assert tables is not None, "the compiled path declined an ordinary page"
    return tables


#: Every way a page is rendered: ``render_page`` (what ``extract_chunk`` calls), the compiled
#: path it takes for ordinary pages, and the pydantic path it falls back to. Each must keep
#: every promise on its own.
RENDERERS = {
    "render_page": render_page,
    "fastpath": _fast,
    "checked_page": _checked_page,
}
renderers = pytest.mark.parametrize("render", RENDERERS.values(), ids=RENDERERS.keys())


@renderers
def test_a_page_becomes_seed_rows_in_id_order_and_flat_rows_as_served(render) -> None:
    users = [make_record("users", n, 0) for n in (3, 1, 2)]
    page = render(raw_page("users", users), False)
    assert set(page.tables) == {"users", "users_flat"}
    seed = page.tables["users"].decode().splitlines()
    flat = page.tables["users_flat"].decode().splitlines()
    assert [line.split(",")[0] for line in seed] == ["1", "2", "3"]
    assert [line.split(",")[0] for line in flat] == ["3", "1", "2"]
    assert (page.rows, page.first_id, page.last_id, page.ordered) == (3, 3, 2, False)
    ordered = render(raw_page("users", make_records("users", 1, 4, 0)), False)
    assert (ordered.rows, ordered.first_id, ordered.last_id, ordered.ordered) == (3, 1, 3, True)


def test_every_table_has_its_header() -> None:
    assert table_header("users") == b"ID,Name,Username,Email,Address,PhoneNumber,Company\n"
    assert table_header("users_flat").startswith(b"id,name,username,email,address_")
    assert table_header("todos") == b"user_id,id,title,completed\n"


@renderers
def test_formula_guarding_follows_keep_formulas(render) -> None:
    posts = [{"userId": 1, "id": 1, "title": "=1+1", "body": "-x"}]
    raw = raw_page("posts", posts)
    assert render(raw, False).tables == {"posts": b"1,1,'=1+1,'-x\n"}
    assert render(raw, True).tables == {"posts": b"1,1,=1+1,-x\n"}
    user = make_record("users", 1, 0) | {"name": "@SUM(A1)"}
    guarded = render(raw_page("users", [user]), False).tables
    kept = render(raw_page("users", [user]), True).tables
    for table in ("users", "users_flat"):
        assert b",'@SUM(A1)," in guarded[table]
        assert b",@SUM(A1)," in kept[table]


# --------------------------------------------------------------------------- assemble


def write_part(path: Path, ids: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i},name {i},x,e,a,p,c\n" for i in ids))
    return path


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


# --------------------------------------------------------------------------- parts on the move


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


def test_parts_from_another_machine_travel_in_the_result(tmp_path) -> None:
    worker, flow = Store.open(str(tmp_path / "worker")), Store.open(str(tmp_path / "flow"))
    local = users_chunk(worker, 1, 2)
    pages = {t: b"".join(Path(p).read_bytes() for p in paths) for t, paths in local.parts.items()}
    assert ship_parts(local, worker, socket.gethostname()) is local  # same machine
    shipped = ship_parts(local, worker, flow_host="elsewhere")
    assert shipped.packed is not None
    assert set(shipped.packed) == {"users", "users_flat"}
    received = receive_parts(shipped, flow)
    assert received.packed is None
    for table, paths in received.parts.items():
        (path,) = paths  # one file per table per chunk, the pages joined in page order
        assert Path(path).read_bytes() == pages[table]
        assert Path(path).parent == tmp_path / "flow" / "received" / "users"
    assert not parts_damaged(received, flow)

    # another chunk of the same resource gets files of its own
    other = receive_parts(ship_parts(users_chunk(worker, 3, 3), worker, "elsewhere"), flow)
    assert not set(other.parts["users"]) & set(received.parts["users"])
    staging = FolderOutput(tmp_path / "out")
    tables = assemble_tables(["users"], [received, other], flow, staging)
    assert tables["users"].rows == 30
    lines = Path(staging.staged_path("users")).read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in lines] == list(range(1, 31))

    Path(received.parts["users"][0]).unlink()
    assert parts_damaged(received, flow)
    assert receive_parts(local, flow) is local


def test_workers_writing_to_an_object_store_return_paths_only(tmp_path) -> None:
    store = Store.open("memory://placeholder-etl-test/cache")
    try:
        remote = users_chunk(store, 1, 1)
        assert ship_parts(remote, store, flow_host="elsewhere") is remote
        assert not parts_damaged(remote, store)
    finally:
        store.remove(store.root, recursive=True)


def test_the_run_cache_is_shared_or_the_runs_own_and_removed(tmp_path) -> None:
    cache = Store.open(str(tmp_path))
    with run_cache(cache, True, "r1") as shared:
        assert shared is cache
        shared.put(shared.path("pages", "x.csv"), b"1\n")
    with run_cache(cache, False, "r2") as own:
        assert Path(own.root) == tmp_path / "runs" / "run-r2"
        own.put(own.path("pages", "x.csv"), b"1\n")
        assert (tmp_path / "runs" / "run-r2" / "pages" / "x.csv").exists()
    assert not (tmp_path / "runs" / "run-r2").exists()
    with pytest.raises(RuntimeError):  # noqa: PT012 - the run fails inside the block
        with run_cache(cache, False, "r3") as failed:
            failed.put(failed.path("pages", "x.csv"), b"1\n")
            raise RuntimeError("the run failed")
    assert not (tmp_path / "runs" / "run-r3").exists()
    assert (tmp_path / "pages" / "x.csv").exists()


def test_output_staging_is_absolute_and_refuses_a_file(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    staging = open_output("out")
    assert isinstance(staging, FolderOutput)
    assert staging.directory == tmp_path / "out"
    assert open_output(f"file://{tmp_path}/out").directory == tmp_path / "out"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        open_output("file")
    remote = open_output("memory://placeholder-etl-test/out")
    assert isinstance(remote, ObjectStoreOutput)
    assert remote.store.root == "/placeholder-etl-test/out"
    with pytest.raises(StoreError, match="nosuch://x"):
        open_output("nosuch://x")
    assert not (tmp_path / "out").exists()  # nothing is written before the commit


@pytest.mark.parametrize("output", ["out", "memory://placeholder-etl-test/names"])
def test_either_staging_refuses_names_that_could_escape_the_output(tmp_path, output) -> None:
    staging = open_output(str(tmp_path / output) if "://" not in output else output)
    for bad in ("../users", "a/b", ".hidden", "x y"):
        with pytest.raises(ValueError, match="letters, digits and underscores"):
            staging.open_table(bad).__enter__()
        with pytest.raises(ValueError, match="letters, digits and underscores"):
            staging.staged_path(bad)
    staging.abort()
    assert not (tmp_path / "users").exists()


# --------------------------------------------------------------------------- manifest and commit


def test_the_manifest_records_the_run_and_is_written_last(tmp_path) -> None:
    part = write_part(tmp_path / "p.csv", [1, 2])
    results = [
        result(part, 1, 2, flow_run_id="this", pages=4, pages_reused=3),
        result(part, 3, 4, flow_run_id="earlier", rows=3, pages=2).model_copy(
            update={"retries": 2}
        ),
        result(part, 1, 5, resource="posts", rows=5, flow_run_id=None),
    ]
    tables = {"users": TableInfo(rows=5, bytes=10, sha256="abc")}
    manifest = build_manifest(
        api_url="http://u:pw@api.test",
        resources=["users", "posts"],
        results=results,
        tables=tables,
        started=datetime(2026, 11, 25, 1, 2, 3, tzinfo=UTC),
        timings=Timings(count_s=1, extract_s=2, load_s=3, total_s=6),
        flow_run_id="this",
    )
    assert manifest.source == "http://u:***@api.test"
    assert manifest.started == "2026-11-25T01:02:03+00:00"
    assert (manifest.chunks, manifest.cached_chunks, manifest.pages) == (3, 1, 7)
    # reused: 3 checkpointed pages of this run's chunk, both pages of the cached chunk
    assert (manifest.pages_fetched, manifest.pages_reused) == (2, 5)
    assert manifest.retries == 2
    assert manifest.contract.records_checked == {"users": 5, "posts": 5}
    assert manifest.workers == ["here"]
    assert manifest.format == "csv"

    out = tmp_path / "out"
    staging = FolderOutput(out)
    with staging.open_table("users") as handle:
        handle.write(b"ID\n1\n")
    staged = {
        "users": StagedTable(
            path=staging.staged_path("users"), suffix=".csv", rows=1, bytes=5, sha256="abc"
        )
    }
    committed = commit(staging, staged, manifest, started=0.0)
    stamp = committed.created
    assert committed.tables["users"].file == f"users_{stamp}.csv"
    assert committed.timings.total_s > 6  # perf_counter since 0.0
    written = out / f"manifest_{stamp}.json"
    assert Manifest.read(written) == committed
    assert json.loads(written.read_text())["schema_version"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".placeholder-etl.lock", f"users_{stamp}.csv", f"manifest_{stamp}.json"]
    )


def test_a_parquet_run_names_its_files_by_the_format(tmp_path) -> None:
    manifest = build_manifest(
        api_url=URL,
        resources=["users"],
        results=[result(write_part(tmp_path / "p.csv", [1, 2]), 1, 2)],
        tables={"users": TableInfo(rows=2, bytes=10, sha256="abc")},
        started=datetime(2026, 11, 25, 1, 2, 3, tzinfo=UTC),
        timings=Timings(count_s=1, extract_s=2, load_s=3, total_s=6),
        fmt="parquet",
    )
    assert manifest.format == "parquet"
    staging = FolderOutput(tmp_path / "out")
    with staging.open_table("users", ".parquet") as handle:
        handle.write(b"PAR1")
    path = staging.staged_path("users", ".parquet")
    staged = {"users": StagedTable(path=path, suffix=".parquet", rows=2, bytes=4, sha256="abc")}
    committed = commit(staging, staged, manifest, started=0.0)
    assert committed.tables["users"].file == f"users_{committed.created}.parquet"
    assert (tmp_path / "out" / committed.tables["users"].file).read_bytes() == b"PAR1"
