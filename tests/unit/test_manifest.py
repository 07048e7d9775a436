"""The manifest, and the commit that writes it last."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from placeholder_etl.core.folder import FolderOutput
from placeholder_etl.core.manifest import build_manifest, commit
from placeholder_etl.core.results import (
    Manifest,
    StagedTable,
    TableInfo,
    Timings,
)
from tests.unit.steps import URL, result, write_part


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
