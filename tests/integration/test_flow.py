"""The Prefect flow on a real Prefect server, with the thread and the Dask task runners."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import requests

from placeholder_api.server import make_server
from placeholder_etl.core.errors import ContractError, TransientError
from placeholder_etl.core.results import MANIFEST_SCHEMA_VERSION, Manifest
from tests.helpers import run_flow, seed_transform, snapshot

pytestmark = pytest.mark.usefixtures("prefect_api_url")


def run(api_url: str, out: Path, cache_dir: Path, **options) -> Manifest:
    return run_flow(api_url, out, cache_dir, **options).manifest


def users_csv(out: Path) -> Path:
    (path,) = out.glob("users_[0-9]*.csv")
    return path


@pytest.mark.parametrize("runner", ["local", "dask"])
def test_users_csv_equals_the_seed_transform(api, tmp_path, cache_dir, runner) -> None:
    out = tmp_path / "out"
    result = run_flow(api.url, out, cache_dir, runner=runner, dask_workers=2, dask_threads=1)
    manifest = result.manifest

    expected = seed_transform(requests.get(f"{api.url}/users", timeout=10).json())
    path = users_csv(out)
    assert path.read_text() == expected
    assert path.name == manifest.tables["users"].file
    assert manifest.tables["users"].rows == 25
    assert manifest.tables["users"].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest.chunks == 3  # 25 users, 10 a page, one page a task: mapped over pages
    assert result.manifest_file == str(out / f"manifest_{manifest.created}.json")
    written = json.loads(Path(result.manifest_file).read_text())
    assert written["schema_version"] == MANIFEST_SCHEMA_VERSION
    assert Manifest.read(result.manifest_file) == manifest
    assert written["source"] == api.url
    if runner == "dask":
        assert all(w.startswith("tcp://127.0.0.1:") for w in manifest.workers)
    flat = pd.read_csv(out / manifest.tables["users_flat"].file)
    assert flat["id"].tolist() == list(range(1, 26))
    assert flat["address_geo_lat"].dtype == "float64"


def test_all_resources_and_the_activity_summary(tmp_path, cache_dir) -> None:
    out = tmp_path / "out"
    with make_server(users=3, seed=1) as server:
        manifest = run(server.url, out, cache_dir, resources="all", page_size=500)
    rows = {t: info.rows for t, info in manifest.tables.items()}
    assert rows == {
        "users": 3,
        "users_flat": 3,
        "posts": 30,
        "comments": 150,
        "albums": 30,
        "photos": 1500,
        "todos": 60,
        "user_activity": 3,
    }
    activity = pd.read_csv(out / manifest.tables["user_activity"].file)
    assert activity["posts_written"].tolist() == [10, 10, 10]
    assert activity["comments_received"].tolist() == [50, 50, 50]
    assert activity["photos"].tolist() == [500, 500, 500]
    todos = pd.read_csv(out / manifest.tables["todos"].file)
    done = todos.groupby("user_id")["completed"].mean().round(4).tolist()
    assert activity["todos_done_ratio"].tolist() == done
    assert sorted(p.name.split("_2")[0] for p in out.glob("*.csv")) == sorted(rows)


def test_a_second_run_makes_no_page_requests(api, tmp_path, cache_dir) -> None:
    first = run(api.url, tmp_path / "a", cache_dir)
    assert api.stats()["requests"] == 4  # a count and three pages
    api.reset_stats()
    second = run(api.url, tmp_path / "b", cache_dir)
    assert api.stats()["requests"] == 1  # the count, asked every run
    assert second.cached_chunks == second.chunks == 3
    assert (second.pages, second.pages_fetched) == (3, 0)
    assert users_csv(tmp_path / "a").read_bytes() == users_csv(tmp_path / "b").read_bytes()
    assert first.tables["users"].sha256 == second.tables["users"].sha256


def test_cached_pages_whose_files_are_gone_are_fetched_again(api, tmp_path, cache_dir) -> None:
    run(api.url, tmp_path / "a", cache_dir)
    pages = [p for p in (cache_dir / "pages").rglob("*") if p.is_file()]
    assert any(p.name.endswith(".users.csv") for p in pages)
    for page in pages:
        page.unlink()
    api.reset_stats()
    manifest = run(api.url, tmp_path / "b", cache_dir)
    assert api.stats()["requests"] == 4  # the count and the pages again
    assert manifest.pages_fetched == 3
    assert manifest.tables["users"].rows == 25


def test_without_cache_every_run_fetches(api, tmp_path, cache_dir) -> None:
    run(api.url, tmp_path / "a", cache_dir, cache=False)
    run(api.url, tmp_path / "b", cache_dir, cache=False)
    assert api.stats()["requests"] == 8
    assert not any((cache_dir / "runs").glob("run-*"))  # each run's own pages, removed


def test_unknown_total_stops_on_a_short_page(tmp_path, cache_dir) -> None:
    with make_server(users=23, fault="no-total") as server:
        manifest = run(server.url, tmp_path / "out", cache_dir)
    assert manifest.tables["users"].rows == 23
    assert manifest.chunks == 1


def test_start_limit_paging(api, tmp_path, cache_dir) -> None:
    manifest = run(api.url, tmp_path / "out", cache_dir, paging="start")
    assert manifest.tables["users"].rows == 25
    assert set(api.stats()["pages"]["users"]) == {"1", "2", "3"}


def test_a_failed_run_leaves_the_output_dir_as_it_was(api, tmp_path, cache_dir) -> None:
    out = tmp_path / "out"
    run(api.url, out, cache_dir)
    before = snapshot(out)
    api.set_fault("drift", resource="users", page=2)
    with pytest.raises(ContractError, match=r"users page 2 from .*field email: missing"):
        run(api.url, out, cache_dir, cache=False)
    assert snapshot(out) == before


def test_a_failed_first_run_creates_no_output_dir(tmp_path, cache_dir) -> None:
    with make_server(users=5, fault="malformed") as server, pytest.raises(Exception, match="JSON"):
        run(server.url, tmp_path / "never", cache_dir)
    assert not (tmp_path / "never").exists()


def test_permanent_errors_are_not_retried(tmp_path, cache_dir) -> None:
    with make_server(users=5, fault="drift") as server:
        with pytest.raises(ContractError):
            run(server.url, tmp_path / "out", cache_dir, task_retries=3)
        assert server.stats()["requests"] == 2  # the count, then one fetch: no retry


def test_transient_errors_are_retried_by_the_task(tmp_path, cache_dir) -> None:
    # Each URL fails 3 times; a task makes 2 requests an attempt, so its first retry succeeds.
    with make_server(users=5, fault="5xx:3") as server:
        manifest = run(server.url, tmp_path / "out", cache_dir, request_retries=1, task_retries=2)
        assert manifest.tables["users"].rows == 5
        assert server.stats()["requests"] == 8


def test_transient_errors_fail_once_retries_are_spent(tmp_path, cache_dir) -> None:
    with make_server(users=5, fault="5xx:99") as server:
        with pytest.raises(TransientError, match=r"HTTP 503 .*tried 2 times"):
            run(server.url, tmp_path / "out", cache_dir, request_retries=1, task_retries=1)
        assert server.stats()["requests"] == 4  # (1 + 1 retry) x (1 + 1 task retry)


def test_unknown_resources_are_rejected(api, tmp_path, cache_dir) -> None:
    with pytest.raises(ValueError, match=r"unknown resource '../etc'"):
        run(api.url, tmp_path / "out", cache_dir, resources="users,../etc")
