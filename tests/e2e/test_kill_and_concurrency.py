"""Runs on one machine as they happen for real: killed with SIGKILL, or two at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from placeholder_api.server import make_server
from tests.helpers import kill_group, run_etl, snapshot

pytestmark = pytest.mark.usefixtures("prefect_api_url")


USERS, PAGE, IN_FLIGHT, TASKS = 300_000, 1000, 4, 2


def _data_pages(server) -> set[int]:
    """The pages of users the server was asked for, leaving out the run's count request
    (page 1 with ``_limit=1``)."""
    return {e["page"] for e in server.log() if f"_limit={PAGE}" in e["path"]}


def test_a_killed_run_resumes_at_page_granularity(tmp_path) -> None:
    """SIGKILL about half way through 300,000 users: nothing under a final name, and the rerun
    fetches only what had not been served before the kill plus what was in flight."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    (out / "users_20200101T000000Z.csv").write_text("ID,Name\n1,previous good run\n")
    before = snapshot(out)
    args = [
        *(sys.executable, "-m", "placeholder_etl", "run", "--runner", "local"),
        *("--output-dir", str(out), "--cache-dir", str(cache), "--page-size", str(PAGE)),
        *("--in-flight", str(IN_FLIGHT), "--dask-workers", "1", "--dask-threads", str(TASKS)),
    ]
    pages = USERS // PAGE
    with make_server(users=USERS, latency=0.05) as server:
        run = subprocess.Popen(
            [*args, "--api-url", server.url],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 300
        while len(server.stats()["pages"].get("users", {})) < pages // 2:
            assert time.monotonic() < deadline, "the run made no progress"
            assert run.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        kill_group(run)
        served = _data_pages(server)
        assert snapshot(out) == before  # nothing new under a final name, old file untouched
        temps_at_kill = list(cache.rglob(".*.tmp"))

        server.reset_stats()
        rerun = subprocess.run(
            [*args, "--api-url", server.url],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        refetched = _data_pages(server)
    unserved = pages - len(served)
    print(f"served before the kill: {len(served)} of {pages} pages; rerun fetched {len(refetched)}")
    in_flight = TASKS * IN_FLIGHT
    assert len(refetched) <= unserved + in_flight, (len(served), len(refetched))
    assert refetched >= set(range(1, pages + 1)) - served  # what was never served
    (new,) = [p for p in out.glob("users_2*.csv") if p.name != "users_20200101T000000Z.csv"]
    ids = [int(line.split(",", 1)[0]) for line in new.read_text().splitlines()[1:]]
    assert ids == list(range(1, USERS + 1))  # every row, once, in order
    manifest = json.loads(next(out.glob("manifest_2*.json")).read_text())
    assert manifest["pages_reused"] >= len(served) - in_flight
    assert manifest["pages_fetched"] == len(refetched)
    assert (out / "users_20200101T000000Z.csv").read_text() == "ID,Name\n1,previous good run\n"
    assert not any(p.exists() for p in temps_at_kill)  # the rerun removed the kill's leftovers
    assert not list(out.glob(".*.tmp"))
    assert not list(cache.rglob(".*.tmp"))


def test_two_runs_at_once_into_one_dir_never_collide(tmp_path) -> None:
    """Two real command-line runs commit into the same folder in the same second."""
    out = tmp_path / "out"
    with make_server(users=200, seed=3) as server:

        def one(n: int):
            return run_etl(
                server.url, out, "--page-size", "10", cache=tmp_path / f"cache-{n}", runner="local"
            )

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(one, [1, 2]))
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    manifests = [json.loads(p.read_text()) for p in sorted(out.glob("manifest_*.json"))]
    assert len(manifests) == 2
    assert manifests[0]["created"] != manifests[1]["created"]
    for manifest in manifests:
        for info in manifest["tables"].values():
            data = (out / info["file"]).read_bytes()
            assert len(data) == info["bytes"]
            assert len(data.splitlines()) == info["rows"] + 1
    assert len(list(out.glob("users_2*.csv"))) == 2
    assert not list(out.glob(".*.tmp"))
