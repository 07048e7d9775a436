"""Runs on one machine as they happen for real: killed with SIGKILL, or two at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from placeholder_api.server import make_server
from tests.helpers import kill_group, run_cli, snapshot

pytestmark = pytest.mark.usefixtures("prefect_api_url")


def test_a_killed_run_loses_nothing_and_the_rerun_reuses_its_pages(tmp_path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    (out / "users_20200101T000000Z.csv").write_text("ID,Name\n1,previous good run\n")
    before = snapshot(out)
    storage = Path(os.environ["PREFECT_HOME"]) / "storage"  # Prefect's cache records
    records_before = len(list(storage.glob("*"))) if storage.exists() else 0
    args = [
        *(sys.executable, "-m", "placeholder_etl", "run", "--runner", "local"),
        *("--output-dir", str(out), "--cache-dir", str(cache), "--page-size", "100"),
        *("--pages-per-task", "10", "--in-flight", "2", "--dask-threads", "2"),
    ]
    with make_server(users=20_000, latency=0.05) as server:
        run = subprocess.Popen(
            [*args, "--api-url", server.url],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        # four chunks cached (and the count), and chunks in flight writing temporary parts
        while len(list(storage.glob("*"))) < records_before + 5 or not list(cache.rglob(".*.tmp")):
            assert time.monotonic() < deadline, "the run made no progress"
            assert run.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        temps_at_kill = list(cache.rglob(".*.tmp"))
        kill_group(run)
        fetched_before_kill = server.stats()["requests"]
        assert snapshot(out) == before  # nothing new under a final name, old file untouched
        assert all(p.exists() for p in temps_at_kill)  # the kill left its temporaries

        server.reset_stats()
        rerun = subprocess.run(
            [*args, "--api-url", server.url],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        refetched = server.stats()["requests"]
    new = [p for p in out.glob("users_2*.csv") if p.name != "users_20200101T000000Z.csv"]
    assert len(new) == 1
    assert len(new[0].read_text().splitlines()) == 20_001
    assert (out / "users_20200101T000000Z.csv").read_text() == "ID,Name\n1,previous good run\n"
    assert refetched <= 200 - 40, (fetched_before_kill, refetched)  # 4 chunks from the cache
    assert fetched_before_kill > 40
    assert not any(p.exists() for p in temps_at_kill)  # the rerun removed them
    assert not list(out.glob(".*.tmp"))
    assert not list(cache.rglob(".*.tmp"))


def test_two_runs_at_once_into_one_dir_never_collide(tmp_path) -> None:
    """Two real command-line runs commit into the same folder in the same second."""
    out = tmp_path / "out"
    with make_server(users=200, seed=3) as server:

        def one(n: int):
            return run_cli(
                *("run", "--api-url", server.url, "--runner", "local", "--page-size", "10"),
                *("--output-dir", str(out), "--cache-dir", str(tmp_path / f"cache-{n}")),
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
