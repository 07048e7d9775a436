"""The pipeline's steps that need no server: planning, assembling, checking, the manifest."""

from __future__ import annotations

import hashlib
import json
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from placeholder_etl.core import pipeline
from placeholder_etl.core.client import Page
from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.resources import resolve_resources
from placeholder_etl.core.results import ChunkResult, ChunkSpec, Manifest, TableInfo, Timings
from placeholder_etl.core.staging import Staging

URL = "http://api.test"


def spec(resource: str = "users", first: int = 1, last: int | None = 1, size: int = 10):
    return ChunkSpec(
        api_url=URL, resource=resource, first_page=first, last_page=last, page_size=size
    )


def result(part: Path, first_id, last_id, ordered=True, rows=2, resource="users", **extra):
    flat = extra.pop("flat", part)
    return ChunkResult(
        spec=spec(resource),
        pages=1,
        rows=rows,
        parts={"users": str(part), "users_flat": str(flat)},
        first_id=first_id,
        last_id=last_id,
        ordered=ordered,
        retries=0,
        worker="here",
        **extra,
    )


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
    chunks = pipeline.plan_chunks(URL, {"users": 25, "posts": 0, "todos": 41}, 10, 2, "start")
    assert [(c.resource, c.first_page, c.last_page) for c in chunks] == [
        ("users", 1, 2),
        ("users", 3, 3),
        ("todos", 1, 2),
        ("todos", 3, 4),
        ("todos", 5, 5),
    ]
    assert {(c.page_size, c.paging, c.api_url) for c in chunks} == {(10, "start", URL)}


def test_an_unknown_total_is_one_open_chunk() -> None:
    (chunk,) = pipeline.plan_chunks(URL, {"users": None}, 10, 3)
    assert (chunk.first_page, chunk.last_page, chunk.label) == (1, None, "users p1-…")


@pytest.mark.parametrize(("size", "per"), [(0, 1), (1, 0)])
def test_plan_refuses_empty_pages_or_chunks(size, per) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        pipeline.plan_chunks(URL, {"users": 5}, size, per)


def test_pages_and_pages_per_task() -> None:
    totals = {"users": 25, "posts": 250, "todos": None}
    assert pipeline.total_pages(totals, 10) == 3 + 25
    assert pipeline.auto_pages_per_chunk(totals, 10, 2) == 7  # 28 pages, two tasks per slot
    assert pipeline.auto_pages_per_chunk(totals, 10, 0) == 28  # no slots: one task
    assert pipeline.auto_pages_per_chunk({"users": 1}, 10, 8) == 1


def test_chunk_keys_tell_every_setting_apart() -> None:
    base = spec()
    others = [
        spec(first=2),
        spec(last=2),
        spec(size=11),
        spec(resource="posts"),
        base.model_copy(update={"paging": "start"}),
        base.model_copy(update={"api_url": URL + "/v2"}),
    ]
    assert len({base.key, *(o.key for o in others)}) == 7
    assert base.key == spec().key
    assert len(base.key) == 20
    assert spec(first=3, last=8).label == "users p3-8"


# --------------------------------------------------------------------------- rows of a page


def test_a_page_becomes_seed_rows_in_id_order_and_flat_rows_as_served(tmp_path) -> None:
    from placeholder_api.fakedata import make_record

    users = [make_record("users", n, 0) for n in (3, 1, 2)]
    page = Page("users", 1, URL, users, 3, 0)
    seed = pipeline._rows_for("users", page).decode().splitlines()
    flat = pipeline._rows_for("users_flat", page).decode().splitlines()
    assert [line.split(",")[0] for line in seed] == ["1", "2", "3"]
    assert [line.split(",")[0] for line in flat] == ["3", "1", "2"]
    assert pipeline.table_header("users") == b"ID,Name,Username,Email,Address,PhoneNumber,Company\n"
    assert pipeline.table_header("users_flat").startswith(b"id,name,username,email,address_")
    assert pipeline.table_header("todos") == b"user_id,id,title,completed\n"


def test_formula_guarding_follows_keep_formulas() -> None:
    posts = [{"userId": 1, "id": 1, "title": "=1+1", "body": "-x"}]
    page = Page("posts", 1, URL, posts, 1, 0)
    assert pipeline._rows_for("posts", page) == b"1,1,'=1+1,'-x\n"
    assert pipeline._rows_for("posts", page, keep_formulas=True) == b"1,1,=1+1,-x\n"


# --------------------------------------------------------------------------- assemble


def write_part(path: Path, ids: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i},name {i},x,e,a,p,c\n" for i in ids))
    return path


def test_ordered_parts_are_joined_as_they_are(tmp_path) -> None:
    parts = [write_part(tmp_path / "a.csv", [1, 2]), write_part(tmp_path / "b.csv", [3])]
    (tmp_path / "empty.csv").write_text("")
    dest = tmp_path / "users.csv"
    info = pipeline.assemble_table(
        "users", [*map(str, parts), str(tmp_path / "empty.csv")], dest, 3
    )
    data = dest.read_bytes()
    assert data == pipeline.table_header("users") + parts[0].read_bytes() + parts[1].read_bytes()
    assert info == TableInfo(rows=3, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def test_unordered_parts_are_sorted_and_the_first_occurrence_wins(tmp_path) -> None:
    first = write_part(tmp_path / "a.csv", [3, 1, 2])
    second = tmp_path / "b.csv"
    second.write_text("2,name 2 again,x,e,a,p,c\n4,name 4,x,e,a,p,c\n")
    (tmp_path / "empty.csv").write_text("")
    dest = tmp_path / "users.csv"
    parts = [str(first), str(tmp_path / "empty.csv"), str(second)]
    info = pipeline.assemble_table("users", parts, dest, 6, ordered=False)
    lines = dest.read_text().splitlines()
    assert lines[1:] == [f"{i},name {i},x,e,a,p,c" for i in (1, 2, 3, 4)]
    data = dest.read_bytes()
    assert info == TableInfo(rows=4, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def test_order_is_judged_across_chunks(tmp_path) -> None:
    part = write_part(tmp_path / "p.csv", [1])
    ordered = [result(part, 1, 10), result(part, None, None, rows=0), result(part, 11, 20)]
    assert pipeline._in_order(ordered)
    assert not pipeline._in_order([result(part, 1, 10), result(part, 10, 20)])  # a repeat
    assert not pipeline._in_order([result(part, 11, 20), result(part, 1, 10)])
    assert not pipeline._in_order([result(part, 1, 10, ordered=False)])
    mixed = [result(part, 5, 6), result(part, 1, 2), result(part, 1, 2, resource="posts")]
    assert pipeline.unordered_resources(mixed) == ["users"]


def test_assemble_tables_stages_every_table(tmp_path) -> None:
    part = write_part(tmp_path / "parts" / "p.csv", [2, 1])
    staging = Staging(tmp_path / "out")
    tables = pipeline.assemble_tables(["users"], [result(part, 2, 1, ordered=False)], staging)
    assert set(tables) == {"users", "users_flat"}
    assert tables["users"].rows == 2
    staged = {key: tmp for key, (_, tmp) in staging.staged.items()}
    assert staged["users"].read_text().splitlines()[1:] == [
        "1,name 1,x,e,a,p,c",
        "2,name 2,x,e,a,p,c",
    ]


def test_totals_must_match_the_distinct_rows() -> None:
    tables = {"users": TableInfo(rows=25, bytes=1, sha256="x")}
    pipeline.check_totals({"users": 25}, tables)
    pipeline.check_totals({"users": None}, tables)
    with pytest.raises(PermanentError, match=r"^users: the API reported 26 records .* held 25 "):
        pipeline.check_totals({"users": 26}, tables)


# --------------------------------------------------------------------------- parts on the move


def test_parts_from_another_machine_travel_in_the_result(tmp_path) -> None:
    remote = write_part(tmp_path / "worker" / "chunkkey" / "users.csv", [1, 2])
    remote_flat = write_part(tmp_path / "worker" / "chunkkey" / "users_flat.csv", [1, 2])
    data = remote.read_bytes()
    local = result(remote, 1, 2, flat=remote_flat)
    assert pipeline.ship_parts(local, socket.gethostname()) is local  # same machine: paths
    shipped = pipeline.ship_parts(local, flow_host="elsewhere")
    assert shipped.packed is not None
    assert not remote.exists()  # the worker's disk stays clean
    assert not remote_flat.exists()
    received = pipeline.receive_parts(shipped, tmp_path / "flow")
    assert received.packed is None
    for path in received.parts.values():
        assert Path(path).read_bytes() == data
        assert Path(path).parent == tmp_path / "flow" / "received" / "chunkkey"
    assert not pipeline.parts_missing(received)
    Path(received.parts["users"]).unlink()
    assert pipeline.parts_missing(received)
    assert pipeline.receive_parts(local, tmp_path / "flow") is local


def test_parts_folder_is_shared_with_the_cache_and_removed_without_it(tmp_path) -> None:
    with pipeline.parts_folder(tmp_path, True, "r1") as shared:
        assert shared == tmp_path / "parts"
        shared.mkdir()
    with pipeline.parts_folder(tmp_path, False, "r2") as own:
        assert own == tmp_path / "parts" / "run-r2"
        own.mkdir()
        (own / "x.csv").write_text("1\n")
    assert not own.exists()
    assert shared.exists()


def test_prepare_output_is_absolute_and_refuses_a_file(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert pipeline.prepare_output("out") == tmp_path / "out"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        pipeline.prepare_output("file")


# --------------------------------------------------------------------------- manifest and commit


def test_the_manifest_records_the_run_and_is_written_last(tmp_path) -> None:
    part = write_part(tmp_path / "p.csv", [1, 2])
    results = [
        result(part, 1, 2, flow_run_id="this"),
        result(part, 3, 4, flow_run_id="earlier", rows=3).model_copy(update={"retries": 2}),
        result(part, 1, 5, resource="posts", rows=5, flow_run_id=None),
    ]
    tables = {"users": TableInfo(rows=5, bytes=10, sha256="abc")}
    manifest = pipeline.build_manifest(
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
    assert (manifest.chunks, manifest.cached_chunks, manifest.pages) == (3, 1, 3)
    assert manifest.retries == 2
    assert manifest.contract.records_checked == {"users": 5, "posts": 5}
    assert manifest.workers == ["here"]

    out = tmp_path / "out"
    staging = Staging(out)
    staging.temp_path("users").write_text("ID\n1\n")
    committed = pipeline.commit(staging, manifest, started=0.0)
    stamp = committed.created
    assert committed.tables["users"].file == f"users_{stamp}.csv"
    assert committed.timings.total_s > 6  # perf_counter since 0.0
    written = out / f"manifest_{stamp}.json"
    assert Manifest.read(written) == committed
    assert json.loads(written.read_text())["schema_version"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".placeholder-etl.lock", f"users_{stamp}.csv", f"manifest_{stamp}.json"]
    )
