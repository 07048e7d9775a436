"""Checking an output against its manifest: ``verify_output`` and ``Manifest.latest``."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from placeholder_etl.core import manifest as run_manifest
from placeholder_etl.core.folder import FolderOutput
from placeholder_etl.core.manifest import build_manifest
from placeholder_etl.core.names import stamp_order
from placeholder_etl.core.results import ChunkResult, ChunkSpec, Manifest, StagedTable, Timings
from placeholder_etl.core.verify import verify_output

#: A CSV table whose second record holds a quoted newline: 3 records, 5 lines.
USERS = b'ID,Name\n1,"Leanne\nGraham"\n2,Ervin\n3,"Clementine ""C"""\n'


def commit(out: Path, tables: dict[str, bytes], rows: dict[str, int], fmt: str = "csv"):
    """Stage ``tables`` and commit them with a manifest; return it."""
    staging = FolderOutput(out)
    staged = {}
    suffix = f".{fmt}"
    for key, data in tables.items():
        with staging.open_table(key, suffix) as handle:
            handle.write(data)
        staged[key] = StagedTable(
            path=staging.staged_path(key, suffix),
            suffix=suffix,
            rows=rows[key],
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
    spec = ChunkSpec(api_url="http://api.test", resource="users", first_page=1, page_size=10)
    chunk = ChunkResult(
        spec=spec, pages=1, rows=3, parts={}, first_id=1, last_id=3, ordered=True, retries=0,
        worker="here",
    )  # fmt: skip
    manifest = build_manifest(
        api_url="http://api.test",
        resources=["users"],
        results=[chunk],
        tables=staged,
        started=datetime(2026, 12, 4, tzinfo=UTC),
        timings=Timings(count_s=0, extract_s=0, load_s=0, total_s=0),
        fmt=fmt,  # type: ignore[arg-type]
    )
    return run_manifest.commit(staging, staged, manifest, started=0.0)


def test_good_output_verifies_and_quoted_newlines_count_once(tmp_path) -> None:
    manifest = commit(tmp_path, {"users": USERS}, {"users": 3})
    verified = verify_output(str(tmp_path))
    assert verified.ok, verified.problems
    assert verified.manifest == manifest
    assert verified.manifest_file == str(tmp_path / f"manifest_{manifest.created}.json")


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("truncate", "bytes, the manifest says"),
        ("delete", "missing"),
        ("flip", "sha256 differs"),
    ],
)
def test_a_damaged_table_is_named(tmp_path, damage, problem) -> None:
    manifest = commit(
        tmp_path, {"users": USERS, "users_flat": b"id\n1\n"}, {"users": 3, "users_flat": 1}
    )
    path = tmp_path / manifest.tables["users"].file
    if damage == "truncate":
        path.write_bytes(USERS[:-10])
    elif damage == "delete":
        path.unlink()
    else:
        path.write_bytes(USERS.replace(b"Ervin", b"Erwin"))
    (found,) = verify_output(str(tmp_path)).problems
    assert found.startswith(f"{manifest.tables['users'].file}: ")
    assert problem in found


def test_rows_are_checked_too(tmp_path) -> None:
    """A manifest whose count disagrees with the file (same bytes): the rows are named."""
    manifest = commit(tmp_path, {"users": USERS}, {"users": 4})
    (found,) = verify_output(str(tmp_path)).problems
    assert found == f"{manifest.tables['users'].file}: 3 rows, the manifest says 4"


def test_parquet_rows_come_from_its_metadata(tmp_path) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"ID": [1, 2, 3]}), sink)
    data = sink.getvalue().to_pybytes()
    commit(tmp_path, {"users": data}, {"users": 3}, fmt="parquet")
    assert verify_output(str(tmp_path)).ok


def test_latest_is_the_newest_stamp_and_a_given_manifest_is_checked(tmp_path) -> None:
    first = commit(tmp_path, {"users": USERS}, {"users": 3})
    second = commit(tmp_path, {"users": USERS}, {"users": 3})
    assert stamp_order(second.created) > stamp_order(first.created)
    assert Manifest.latest(str(tmp_path)) == second
    (tmp_path / second.tables["users"].file).unlink()
    assert not verify_output(str(tmp_path)).ok
    by_name = verify_output(str(tmp_path), f"manifest_{first.created}.json")
    by_path = verify_output("elsewhere", str(tmp_path / f"manifest_{first.created}.json"))
    assert by_name.ok
    assert by_path.ok
    assert by_name.manifest == by_path.manifest == first


def test_stamps_sort_by_time_then_by_their_counter() -> None:
    stamps = ["20261204T000000Z-10", "20261204T000000Z-2", "20261203T235959Z", "20261204T000000Z"]
    assert sorted(stamps, key=stamp_order) == [
        "20261203T235959Z",
        "20261204T000000Z",
        "20261204T000000Z-2",
        "20261204T000000Z-10",
    ]


def test_no_manifest_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no committed run"):
        Manifest.latest(str(tmp_path))


def test_a_manifest_with_the_old_breaches_count_still_reads() -> None:
    from placeholder_etl.core.results import ContractSummary

    old = ContractSummary.model_validate({"records_checked": {"users": 10}, "breaches": 0})
    assert old.model_dump() == {"records_checked": {"users": 10}}
    with pytest.raises(ValueError, match="breaches"):
        ContractSummary.model_validate({"records_checked": {"users": 10}, "breaches": 1})
