"""The assets a committed run materializes: keys Prefect takes, stable per table and output
location, upstream assets, metadata, and no secret in a key."""

from __future__ import annotations

import hashlib

import pytest
from prefect.assets import Asset
from prefect.types.names import MAX_ASSET_KEY_LENGTH, RESTRICTED_ASSET_CHARACTERS

from placeholder_etl.core.assets import (
    MAX_KEY_LENGTH,
    RESTRICTED,
    asset_key,
    asset_records,
    endpoint_key,
    folder_uri,
)
from placeholder_etl.core.manifest import build_manifest
from placeholder_etl.core.names import TableFormat
from placeholder_etl.core.resources import RESOURCE_NAMES, tables_of
from placeholder_etl.core.results import RunResult, TableInfo, Timings

STAMP = "20261125T005503Z"


def run_result(
    output: str,
    resources: tuple[str, ...] = ("users",),
    api_url: str = "http://127.0.0.1:3000",
    fmt: TableFormat = "csv",
) -> RunResult:
    """A committed run's result, written to ``output`` (a folder path or URL)."""
    from datetime import UTC, datetime

    tables = {
        name: TableInfo(rows=i + 1, bytes=100 * (i + 1), sha256=f"{i:064x}")
        for i, name in enumerate(tables_of(resources))
    }
    manifest = build_manifest(
        api_url=api_url,
        resources=resources,
        results=[],
        tables=tables,
        started=datetime(2026, 11, 25, 0, 55, 3, tzinfo=UTC),
        timings=Timings(count_s=1, extract_s=2, load_s=3, total_s=6),
        flow_run_id="run-1",
        fmt=fmt,
    ).stamped(STAMP)
    return RunResult(
        manifest=manifest,
        output_dir=output,
        manifest_file=f"{output}/manifest_{STAMP}.json",
    )


def test_the_key_rules_are_prefects() -> None:
    assert set(RESTRICTED) == set(RESTRICTED_ASSET_CHARACTERS)
    assert MAX_KEY_LENGTH == MAX_ASSET_KEY_LENGTH


def test_each_table_and_the_manifest_under_the_output_folder() -> None:
    result = run_result("/data/out", resources=("users", "posts"))
    records = asset_records(result)
    assert [r.key for r in records] == [
        "file:///data/out/users.csv",
        "file:///data/out/users_flat.csv",
        "file:///data/out/posts.csv",
        "file:///data/out/manifest.json",
    ]
    users, flat, posts, manifest = records
    assert users.upstream == flat.upstream == ("http://127.0.0.1:3000/users",)
    assert posts.upstream == ("http://127.0.0.1:3000/posts",)
    assert manifest.upstream == tuple(r.key for r in records[:3])
    assert users.name == "users.csv"
    assert users.metadata == {
        "table": "users",
        "file": f"users_{STAMP}.csv",
        "path": f"/data/out/users_{STAMP}.csv",
        "format": "csv",
        "rows": 1,
        "bytes": 100,
        "sha256": f"{0:064x}",
        "stamp": STAMP,
        "manifest": f"/data/out/manifest_{STAMP}.json",
        "flow_run_id": "run-1",
        "source": "http://127.0.0.1:3000",
    }
    text = result.manifest.to_json()
    assert manifest.metadata["file"] == f"manifest_{STAMP}.json"
    assert manifest.metadata["bytes"] == len(text)
    assert manifest.metadata["sha256"] == hashlib.sha256(text).hexdigest()
    assert manifest.metadata["tables"] == ["users", "users_flat", "posts"]
    for record in records:
        Asset(key=record.key)  # Prefect takes it
        assert STAMP not in record.key  # the stamp is in the metadata, not the key


def test_the_activity_summary_comes_from_the_tables_it_reads() -> None:
    records = {r.name: r for r in asset_records(run_result("/o", resources=RESOURCE_NAMES))}
    assert records["user_activity.csv"].upstream == tuple(
        f"file:///o/{t}.csv"
        for t in ("users_flat", "posts", "comments", "todos", "albums", "photos")
    )
    assert records["comments.csv"].upstream == ("http://127.0.0.1:3000/comments",)
    assert len(records["manifest.json"].upstream) == 8


def test_an_object_store_and_parquet() -> None:
    records = asset_records(run_result("s3://etl/runs/daily", fmt="parquet"))
    assert [r.key for r in records] == [
        "s3://etl/runs/daily/users.parquet",
        "s3://etl/runs/daily/users_flat.parquet",
        "s3://etl/runs/daily/manifest.json",
    ]
    assert records[0].metadata["path"] == f"s3://etl/runs/daily/users_{STAMP}.parquet"


def test_the_key_is_the_same_whatever_the_run() -> None:
    first = asset_records(run_result("/o"))
    later = asset_records(
        run_result("/o").model_copy(
            update={"manifest": run_result("/o").manifest.stamped("20270101T000000Z")}
        )
    )
    assert [r.key for r in first] == [r.key for r in later]
    assert first[0].metadata["stamp"] != later[0].metadata["stamp"]


@pytest.mark.parametrize(
    "folder", ["/tmp/my out", "/tmp/100%", "/tmp/a#b?c&d", "/tmp/[x]{y}|z^`'\"<>\\"]
)
def test_a_folder_with_characters_prefect_refuses_gets_a_safe_distinct_key(folder) -> None:
    key = asset_key(folder_uri(folder), "users.csv")
    Asset(key=key)
    assert key.startswith("file:///tmp/")
    assert key.endswith("/users.csv")
    plain = folder.translate({ord(c): "_" for c in RESTRICTED})
    assert asset_key(folder_uri(plain), "users.csv") != key  # the digest tells them apart


def test_a_long_folder_is_cut_to_prefects_length() -> None:
    folder = "/data/" + "/".join(["segment"] * 80)
    key = asset_key(folder_uri(folder), "user_activity.parquet")
    assert len(key) <= MAX_ASSET_KEY_LENGTH
    Asset(key=key)
    assert key.endswith("/user_activity.parquet")
    assert key != asset_key(folder_uri(folder + "/more"), "user_activity.parquet")


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ("https://jsonplaceholder.typicode.com", "https://jsonplaceholder.typicode.com/users"),
        ("HTTP://Example.COM:8080/api/v1", "http://example.com:8080/api/v1/users"),
        ("https://bob:***@api.example/v2?api_key=***&x=1", "https://api.example/v2/users"),
        ("https://***@api.example", "https://api.example/users"),
    ],
)
def test_an_endpoint_key_has_no_user_info_nor_query(source, key) -> None:
    assert endpoint_key(source, "users") == key
    Asset(key=key)


def test_no_secret_reaches_a_key_or_the_metadata() -> None:
    result = run_result("/o", api_url="https://bob:hunter22@api.example/v2?token=s3cr3tvalue")
    for record in asset_records(result):
        text = repr(record)
        assert "hunter22" not in text
        assert "s3cr3tvalue" not in text
    assert endpoint_key("https://bob:hunter22@api.example?token=s3cr3tvalue", "users") == (
        "https://api.example/users"
    )


def test_an_ipv6_host_gets_a_key_prefect_takes() -> None:
    key = endpoint_key("http://[::1]:3000", "users")
    Asset(key=key)
    assert key.startswith("http://")
    assert key.endswith("/users")
