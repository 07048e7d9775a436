"""The Prefect flow on a real Prefect server, with the thread and the Dask task runners."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from placeholder_api.server import make_server
from placeholder_etl.core.errors import ContractError, PermanentError, TransientError
from placeholder_etl.core.results import MANIFEST_SCHEMA_VERSION, Manifest
from tests.helpers import gaps_by_url, requests_by_url, run_flow, seed_transform, snapshot

pytestmark = pytest.mark.usefixtures("prefect_api_url")


def run(api_url: str, out: Path, cache_dir: Path, **options) -> Manifest:
    """A run on threads (the runner these tests name) unless ``options`` name another."""
    return run_flow(api_url, out, cache_dir, **{"runner": "local", **options}).manifest


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
    # the runner started inside the run: its task runs belong to the flow run, completed
    tasks = _settled_task_runs(manifest.flow_run_id)
    extracts = sorted(t.name for t in tasks if t.name.startswith("extract "))
    assert extracts == ["extract users p1-1", "extract users p2-2", "extract users p3-3"]
    assert {t.state_name for t in tasks} == {"Completed"}


def _settled_task_runs(flow_run_id: str | None, wait_s: float = 30.0) -> list:
    """The task runs the Prefect API records for a flow run, once none is still open.

    Prefect 3 reports task-run states as events, which the server records a moment later:
    read right after the flow returns, the last tasks can still show ``Running``. Wait
    (up to ``wait_s``) for every state to be final; an open state past that is returned
    as read, for the assertion to name.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    only = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            tasks = client.read_task_runs(flow_run_filter=only)
            if all(t.state and t.state.is_final() for t in tasks) or time.monotonic() > deadline:
                return tasks
            time.sleep(0.2)


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


def test_cached_pages_expire_after_cache_hours(api, tmp_path, cache_dir) -> None:
    """--cache-hours 0.0003 (about 1.1 s): a run after that fetches everything again; one as
    long after a run with the default hour fetches nothing."""
    import time

    short, hour = cache_dir / "short", cache_dir / "hour"
    run(api.url, tmp_path / "a", short, cache_hours=0.0003)
    run(api.url, tmp_path / "b", hour)
    time.sleep(1.5)
    api.reset_stats()
    expired = run(api.url, tmp_path / "c", short, cache_hours=0.0003)
    assert api.stats()["requests"] == 4  # the count and three pages again
    assert expired.cached_chunks == 0
    api.reset_stats()
    kept = run(api.url, tmp_path / "d", hour)
    assert api.stats()["requests"] == 1  # the count only (asked every run)
    assert kept.cached_chunks == kept.chunks == 3


def test_another_page_size_or_paging_is_a_cache_miss(api, tmp_path, cache_dir) -> None:
    """Pages are cached per page size and paging style, and neither run spoils the other's."""
    first = run(api.url, tmp_path / "a", cache_dir)  # 10 a page, _page
    api.reset_stats()
    smaller = run(api.url, tmp_path / "b", cache_dir, page_size=5)
    # the count (page 1 of 1) and five pages of 5
    assert api.stats()["pages"] == {"users": {"1": 2, **{str(n): 1 for n in range(2, 6)}}}
    api.reset_stats()
    start = run(api.url, tmp_path / "c", cache_dir, paging="start")
    assert requests_by_url(api.log()) == {
        "/users?_start=0&_limit=1": 1,
        "/users?_start=0&_limit=10": 1,
        "/users?_start=10&_limit=10": 1,
        "/users?_start=20&_limit=10": 1,
    }
    api.reset_stats()
    again = run(api.url, tmp_path / "d", cache_dir)  # the first run's pages, untouched
    assert api.stats()["requests"] == 1  # the count
    assert (smaller.cached_chunks, start.cached_chunks, again.cached_chunks) == (0, 0, 3)
    csvs = {name: users_csv(tmp_path / name).read_bytes() for name in "abcd"}
    assert len(set(csvs.values())) == 1
    assert first.tables["users"].rows == again.tables["users"].rows == 25


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


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("drift", ContractError, "record id=11 field email: missing"),
        ("malformed", PermanentError, "response is not JSON"),
        ("html", PermanentError, "response is an HTML page, not JSON"),
        ("bad-utf8", PermanentError, "response is not valid UTF-8 JSON"),
        ("not-a-list", PermanentError, "response is not a JSON list (got dict)"),
        ("4xx:404", PermanentError, "HTTP 404 Not Found"),
        ("4xx:400", PermanentError, "HTTP 400 Bad Request"),
    ],
)
def test_permanent_errors_are_not_retried(tmp_path, cache_dir, fault, error, message) -> None:
    """A permanent fault on page 2: its URL is asked once, whatever the retry settings."""
    with make_server(users=30, fault=fault, fault_page=2) as server:
        with pytest.raises(error) as caught:
            run(server.url, tmp_path / "out", cache_dir, request_retries=3, task_retries=3)
        asked = requests_by_url(server.log())
    page2 = "/users?_page=2&_limit=10"
    assert str(caught.value).startswith(f"users page 2 from {server.url}{page2}: {message}")
    assert asked[page2] == 1
    assert set(asked.values()) == {1}  # the count and the other pages: once each at most
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("bad-total", "X-Total-Count is not a number ('NaN')"),
        ("not-a-list", "response is not a JSON list (got dict)"),
        ("4xx:403", "HTTP 403 Forbidden"),
    ],
)
def test_a_permanent_fault_when_counting_fails_at_once(tmp_path, cache_dir, fault, message):
    with make_server(users=30, fault=fault) as server:
        with pytest.raises(PermanentError) as caught:
            run(server.url, tmp_path / "out", cache_dir, request_retries=3, task_retries=3)
        asked = requests_by_url(server.log())
    count = "/users?_page=1&_limit=1"
    assert str(caught.value) == f"users count from {server.url}{count}: {message}"
    assert asked == {count: 1}
    assert not (tmp_path / "out").exists()


def test_task_retries_wait_longer_each_time_with_jitter(tmp_path, cache_dir) -> None:
    """--retry-delay D: Prefect waits about D, then about 2 D (jittered: 0.63 to 1.5 times),
    as the server sees it between a URL's requests (one request per task attempt here)."""
    with make_server(users=50, fault="5xx:2") as server:
        manifest = run(
            server.url,
            tmp_path / "out",
            cache_dir,
            request_retries=0,
            task_retries=2,
            retry_delay=1.0,
        )
        gaps = gaps_by_url(server.log())
    assert manifest.tables["users"].rows == 50
    assert len(gaps) == 6  # the count and five pages, each failing twice
    outside = 0
    for path, (first, second) in gaps.items():
        assert 0.6 <= first <= 1.5 + 1.0, (path, first)
        assert 1.25 <= second <= 3.0 + 1.0, (
            path,
            second,
        )  # doubled: above any first delay's low end
        outside += not 0.97 <= first <= 1.3
        outside += not 1.94 <= second <= 2.3
    assert outside, gaps  # jittered: without jitter every wait is the delay plus overhead


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
