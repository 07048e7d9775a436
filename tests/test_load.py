"""Loading: atomic writes, staged commits under a lock, and the clean-up of killed runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from placeholder_etl.load import Staging, atomic_write, make_tag, remove_stale_temps
from placeholder_etl.server import make_server

from .conftest import snapshot


def test_atomic_write_keeps_the_old_file_when_the_block_fails(tmp_path) -> None:
    target = tmp_path / "users.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):  # noqa: PT012 - the failure must happen mid-write
        with atomic_write(target) as handle:
            handle.write(b"half")
            raise RuntimeError("died")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["users.csv"]


def _commit(directory: str) -> str:
    staging = Staging(Path(directory))
    staging.temp_path("users").write_text(f"ID\n{os.getpid()}\n")
    return staging.commit(lambda stamp: f'{{"created": "{stamp}"}}\n'.encode())


def test_concurrent_commits_never_share_or_overwrite_files(tmp_path) -> None:
    with ProcessPoolExecutor(4) as pool:
        stamps = list(pool.map(_commit, [str(tmp_path)] * 8))
    assert len(set(stamps)) == 8
    for stamp in stamps:
        users = (tmp_path / f"users_{stamp}.csv").read_text().splitlines()
        assert users[0] == "ID"
        assert (tmp_path / f"manifest_{stamp}.json").read_text() == f'{{"created": "{stamp}"}}\n'
    assert not list(tmp_path.glob(".*.tmp"))


def test_abort_removes_temps_and_a_directory_it_created(tmp_path) -> None:
    staging = Staging(tmp_path / "new")
    staging.temp_path("users").write_text("x")
    staging.abort()
    assert not (tmp_path / "new").exists()


def test_staging_rejects_names_that_could_escape_the_directory(tmp_path) -> None:
    for bad in ("../users", "a/b", ".hidden", "x y"):
        with pytest.raises(ValueError, match="letters, digits and underscores"):
            Staging(tmp_path).temp_path(bad)


def test_stale_temps_of_dead_processes_are_removed_live_ones_kept(tmp_path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    host, _, _ = make_tag().partition("-")
    dead_tmp = tmp_path / f".users.csv.{host}-{dead}-abcd1234.tmp"
    live_tmp = tmp_path / f".users.csv.{make_tag()}.tmp"
    old_unknown = tmp_path / "sub" / ".parts.csv.elsewhere-1-abcd.tmp"
    young_unknown = tmp_path / ".parts.csv.otherhost-1-abcd.tmp"
    old_unknown.parent.mkdir()
    for path in (dead_tmp, live_tmp, old_unknown, young_unknown):
        path.write_text("partial")
    os.utime(old_unknown, (time.time() - 90_000, time.time() - 90_000))
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([dead_tmp, old_unknown])
    assert live_tmp.exists()
    assert young_unknown.exists()


@pytest.mark.usefixtures("prefect_api_url")
def test_a_killed_run_loses_nothing_and_the_rerun_reuses_its_pages(tmp_path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    (out / "users_20200101T000000Z.csv").write_text("ID,Name\n1,previous good run\n")
    before = snapshot(out)
    args = [sys.executable, "-m", "placeholder_etl", "run", "--runner", "local",
            "--output-dir", str(out), "--cache-dir", str(cache), "--page-size", "100",
            "--pages-per-task", "10", "--in-flight", "2", "--dask-threads", "2"]  # fmt: skip
    with make_server(users=20_000, latency=0.05) as server:
        run = subprocess.Popen([*args, "--api-url", server.url], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 120
        while len(list((cache / "parts").glob("*/users.csv"))) < 4:  # four chunks done
            assert time.monotonic() < deadline, "the run made no progress"
            assert run.poll() is None, "the run ended before it could be killed"
            time.sleep(0.1)
        time.sleep(0.5)  # let Prefect record the finished chunks' results
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        fetched_before_kill = server.stats()["requests"]
        assert snapshot(out) == before  # nothing new under a final name, old file untouched

        server.reset_stats()
        rerun = subprocess.run([*args, "--api-url", server.url], capture_output=True,
                               text=True, timeout=300, check=False)  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        refetched = server.stats()["requests"]
    new = [p for p in out.glob("users_2*.csv") if p.name != "users_20200101T000000Z.csv"]
    assert len(new) == 1
    assert len(new[0].read_text().splitlines()) == 20_001
    assert (out / "users_20200101T000000Z.csv").read_text() == "ID,Name\n1,previous good run\n"
    assert refetched <= 200 - 40, (fetched_before_kill, refetched)  # 4 chunks from the cache
    assert fetched_before_kill > 20
    assert not list(out.glob(".*.tmp"))
    assert not list(cache.rglob(".*.tmp"))
