"""Output straight to object storage, on a real S3-compatible server (SeaweedFS `weed mini`)
started on 127.0.0.1 for this module, talked to the standard way (AWS_* variables)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import requests

from placeholder_api.server import make_server
from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.results import Manifest
from placeholder_etl.core.store import StoreError
from placeholder_etl.core.verify import verify_output
from tests.helpers import kill_group, run_cli, run_flow, seed_transform

pytestmark = pytest.mark.usefixtures("prefect_api_url")


def objects(s3, bucket: str) -> dict[str, str]:
    """Every key in ``bucket`` with its ETag."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}


def read(s3, bucket: str, key: str) -> bytes:
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_a_whole_run_to_s3_writes_every_table_and_the_manifest(s3, bucket, tmp_path) -> None:
    with make_server(users=12, seed=4) as server:
        # one page a resource: 700 one-page tasks cost minutes and test nothing more here
        result = run_flow(server.url, f"s3://{bucket}/run", "", resources="all", page_size=1000)
        expected = seed_transform(requests.get(f"{server.url}/users", timeout=10).json())
    manifest = result.manifest
    keys = objects(s3, bucket)
    finals = sorted(k.removeprefix("run/") for k in keys if "/_placeholder_etl/" not in k)
    written = [info.file for info in manifest.tables.values()]
    assert finals == sorted([*written, f"manifest_{manifest.created}.json"])
    assert len(manifest.tables) == 8  # six resources, users twice, and the activity summary
    assert read(s3, bucket, f"run/{manifest.tables['users'].file}").decode() == expected
    assert result.manifest_file == f"s3://{bucket}/run/manifest_{manifest.created}.json"
    assert Manifest.read(result.manifest_file) == manifest
    assert not [k for k in keys if "/staging/" in k or "/runs/" in k]  # staging and claim gone
    assert [k for k in keys if "/_placeholder_etl/cache/pages/" in k]  # pages on the store
    # the tables were assembled in tasks on the Dask workers: their phases reach the UI
    progress = progress_artifact(manifest.flow_run_id)
    assert re.fullmatch(r"Pages all in; assembling tables \([1-8]/8\): \w+", progress), progress


def progress_artifact(flow_run_id: str | None) -> str:
    """The description of a flow run's progress artifact, as the UI shows it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    only = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=only)
    (found,) = [a for a in artifacts if a.key == "placeholder-etl-progress"]
    return found.description or ""


def test_a_failed_run_leaves_every_key_and_etag_as_it_was(s3, bucket) -> None:
    with make_server(users=30) as server:
        run_flow(server.url, f"s3://{bucket}/run", "")
        before = objects(s3, bucket)
        server.set_fault("malformed", resource="users", page=2)
        with pytest.raises(PermanentError, match="response is not JSON"):
            run_flow(server.url, f"s3://{bucket}/run", "", cache=False)
    assert objects(s3, bucket) == before


def staged_users(staging, data: bytes):
    """Stage a users table; return what the commit takes."""
    import hashlib

    from placeholder_etl.core.results import StagedTable

    with staging.open_table("users") as out:
        out.write(data)
    path = staging.staged_path("users")
    digest = hashlib.sha256(data).hexdigest()
    return {"users": StagedTable(path=path, suffix=".csv", rows=1, bytes=len(data), sha256=digest)}


def test_a_failed_commit_removes_what_it_published(s3, bucket, tmp_path) -> None:
    """The manifest goes last: if it cannot be written, the tables it would name go too."""
    from placeholder_etl.core.objectstore import ObjectStoreOutput
    from placeholder_etl.core.store import Store

    def failing_manifest(stamp: str) -> bytes:
        raise RuntimeError("manifest failed")

    with pytest.raises(RuntimeError, match="manifest failed"):
        with ObjectStoreOutput(Store.open(f"s3://{bucket}/run")) as staging:
            staging.commit(staged_users(staging, b"ID\n1\n"), failing_manifest)
    assert objects(s3, bucket) == {}


def test_a_commit_refuses_a_published_table_of_another_size(s3, bucket, monkeypatch) -> None:
    """One HEAD per published table before the manifest: a copy that came out short (here a
    store that truncates copies) undoes the commit, and no manifest names it."""
    from placeholder_etl.core.objectstore import ObjectStoreOutput
    from placeholder_etl.core.output import CommitError
    from placeholder_etl.core.store import Store

    store = Store.open(f"s3://{bucket}/run")

    def short_copy(source: str, dest: str) -> None:
        store.fs.pipe_file(dest, store.cat(source)[:-2])

    monkeypatch.setattr(store, "copy", short_copy)
    with (
        pytest.raises(CommitError, match=r"users: .* 3 bytes"),
        ObjectStoreOutput(store) as staging,
    ):
        staging.commit(staged_users(staging, b"ID\n1\n"), lambda stamp: b"{}")
    assert objects(s3, bucket) == {}


def test_a_killed_run_leaves_no_final_name_and_the_next_run_cleans_up(s3, bucket, tmp_path):
    base = [sys.executable, "-m", "placeholder_etl", "run", "--runner", "local"]
    base += ["--output-dir", f"s3://{bucket}/run", "--cache-dir", f"s3://{bucket}/cache"]
    base += ["--page-size", "100", "--in-flight", "1"]
    with make_server(users=20_000, latency=0.1) as server:
        run = subprocess.Popen(
            [*base, "--api-url", server.url],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not any(".done." in k for k in objects(s3, bucket)):  # pages are being written
            assert time.monotonic() < deadline, "the run made no progress"
            assert run.poll() is None, "the run ended before it could be killed"
            time.sleep(0.1)
        kill_group(run)
        killed = objects(s3, bucket)
        assert not [k for k in killed if k.startswith("run/") and "/_placeholder_etl/" not in k]
        served_before = server.stats()["requests"]
        server.reset_stats()
        rerun = run_cli(*base[3:], "--api-url", server.url)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        fetched_again = server.stats()["requests"]
    assert fetched_again < 1 + 200  # the count and the pages the kill left unfinished
    assert served_before + fetched_again >= 201
    (manifest_key,) = [k for k in objects(s3, bucket) if k.startswith("run/manifest_")]
    manifest = Manifest.model_validate_json(read(s3, bucket, manifest_key))
    assert manifest.tables["users"].rows == 20_000
    assert manifest.pages_reused > 0
    assert not [k for k in objects(s3, bucket) if "/staging/" in k or "/runs/" in k]


def test_parquet_has_real_types_for_pyarrow_pandas_and_dask(s3, bucket, tmp_path) -> None:
    import dask.dataframe as dd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    with make_server(users=12, fault="formula") as server:
        options = {"resources": "users,todos", "format": "parquet"}
        manifest = run_flow(server.url, f"s3://{bucket}/pq", "", **options).manifest
    assert manifest.format == "parquet"
    flat_key = f"{bucket}/pq/{manifest.tables['users_flat'].file}"
    s3fs_native = pafs.S3FileSystem(endpoint_override=s3.endpoint_url, scheme="http")
    schema = pq.read_schema(flat_key, filesystem=s3fs_native)
    assert schema.field("id").type == pa.int64()
    assert schema.field("address_geo_lat").type == pa.float64()
    assert schema.field("name").type == pa.string()
    todos = dd.read_parquet(f"s3://{bucket}/pq/{manifest.tables['todos'].file}").compute()
    assert str(todos["completed"].dtype) == "bool"
    assert str(todos["user_id"].dtype) == "int64"
    assert len(todos) == manifest.tables["todos"].rows == 240
    names = dd.read_parquet(f"s3://{bucket}/pq/{manifest.tables['users'].file}").compute()
    assert {n[0] for n in names["Name"]} == {"=", "+", "-", "@"}  # Parquet keeps text as is


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gremlin://bucket/run", "fsspec knows no such scheme"),
        ("gs://bucket/run", "needs gcsfs"),
    ],
)
def test_an_unusable_url_is_a_clear_error_never_a_local_folder(
    tmp_path, monkeypatch, url, message
) -> None:
    monkeypatch.chdir(tmp_path)
    with make_server(users=3) as server, pytest.raises(StoreError, match=message):
        run_flow(server.url, url, "")
    assert list(tmp_path.iterdir()) == []  # no folder named "gremlin:" or "gs:"


def test_pages_cached_on_the_store_are_revalidated_after_their_lifetime(s3, bucket) -> None:
    """The page cache on the object store (the default for an s3:// output), Dask runner:
    a rerun past --cache-hours asks conditionally and gets a 304 for every page."""
    out = f"s3://{bucket}/run"
    with make_server(users=25, seed=3) as server:
        first = run_flow(server.url, out, "", cache_hours=0.0003).manifest
        time.sleep(1.5)  # past the lifetime (about 1.1 s): Prefect's task cache too
        server.reset_stats()
        again = run_flow(server.url, out, "", cache_hours=0.0003).manifest
        assert server.stats()["not_modified"] == 3
    assert (again.pages_fetched, again.pages_reused, again.pages_revalidated) == (0, 3, 3)
    assert again.tables["users"].sha256 == first.tables["users"].sha256
    assert verify_output(out).ok
    kept = [k for k in objects(s3, bucket) if k.endswith(".http.json")]
    assert len(kept) == 3  # the validators beside each page
