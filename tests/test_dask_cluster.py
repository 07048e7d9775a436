"""The flow on an existing Dask cluster: real `dask scheduler` and `dask worker` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client

from placeholder_etl.cluster import (
    PROCESSES_FROM_RECORDS,
    WorkerSetupError,
    dask_runner_kwargs,
    fit_local_cluster,
    local_cluster_kwargs,
    use_processes,
)
from placeholder_etl.flow import etl

pytestmark = pytest.mark.usefixtures("prefect_api_url")

BLOCK_PACKAGE = (
    "import sys; sys.modules['placeholder_etl'] = None; "  # this worker cannot import it
    "from distributed.cli.dask_worker import main; sys.argv[0] = 'dask-worker'; main()"
)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        args, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "false"},
    )  # fmt: skip


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_cluster(tmp: Path, workers: int, worker_code: str | None = None) -> tuple[str, list]:
    """A scheduler and ``workers`` worker processes on loopback; returns (address, processes)."""
    scheduler_file = tmp / "scheduler.json"
    processes = [
        _start(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--dashboard-address",  # its HTTP server (metrics) listens anyway
                "127.0.0.1:0",
                "--scheduler-file",
                str(scheduler_file),
            ],
            tmp / "scheduler.log",
        )
    ]
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    # --no-nanny for the code variant: a nanny would start a fresh worker process without it
    worker = [sys.executable, "-c", worker_code, "--no-nanny"] if worker_code else [
        sys.executable, "-m", "distributed.cli.dask_worker"]  # fmt: skip
    for n in range(workers):
        processes.append(
            _start(
                [
                    *worker,
                    "--scheduler-file",
                    str(scheduler_file),
                    "--nthreads",
                    "2",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--dashboard-address",
                    "127.0.0.1:0",
                    "--name",
                    f"test-worker-{n}",
                ],
                tmp / f"worker-{n}.log",
            )
        )
    with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
        client.wait_for_workers(workers, timeout=120)
        address = client.scheduler.address
    return address, processes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[str, set[str]]]:
    """A real cluster of one scheduler and two worker processes; yields (address, workers)."""
    address, processes = start_cluster(tmp_path_factory.mktemp("dask"), workers=2)
    try:
        with Client(address, timeout=30) as client:
            workers = set(client.scheduler_info()["workers"])
        yield address, workers
    finally:
        _stop(processes)


def test_tasks_run_on_the_external_workers_and_match_a_local_run(api, tmp_path, cluster) -> None:
    address, workers = cluster
    common = {"api_url": api.url, "page_size": 5, "pages_per_task": 1, "use_cache": False,
              "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    on_cluster = etl(output_dir=str(tmp_path / "dask"), runner="dask", dask_address=address,
                     **common)  # fmt: skip
    local = etl(output_dir=str(tmp_path / "local"), runner="local", **common)
    assert set(on_cluster["workers"]) <= workers
    assert len(set(on_cluster["workers"])) == 2  # five tasks spread over both workers
    assert on_cluster["tables"]["users"]["sha256"] == local["tables"]["users"]["sha256"]
    dask_csv = tmp_path / "dask" / on_cluster["tables"]["users"]["file"]
    local_csv = tmp_path / "local" / local["tables"]["users"]["file"]
    assert dask_csv.read_bytes() == local_csv.read_bytes()


def test_the_cli_takes_the_scheduler_from_the_environment(api, tmp_path, cluster) -> None:
    from .conftest import run_cli

    address, workers = cluster
    result = run_cli(
        "run", "--api-url", api.url, "--output-dir", str(tmp_path / "out"), "--no-cache",
        env={"DASK_SCHEDULER_ADDRESS": address},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Dask cluster: 2 workers, 4 threads" in result.stderr
    manifest = next((tmp_path / "out").glob("manifest_*.json")).read_text()
    assert any(worker in manifest for worker in workers)


def test_workers_without_the_package_are_refused_clearly(api, tmp_path) -> None:
    address, processes = start_cluster(tmp_path, workers=1, worker_code=BLOCK_PACKAGE)
    try:
        with pytest.raises(WorkerSetupError) as caught:
            etl(api_url=api.url, output_dir=str(tmp_path / "out"), runner="dask",
                dask_address=address, use_cache=False, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    finally:
        _stop(processes)
    message = str(caught.value)
    assert message.startswith("Dask workers cannot run the tasks (tcp://127.0.0.1:")
    assert "missing: ModuleNotFoundError" in message
    assert "pip install -e ." in message
    assert not (tmp_path / "out").exists()


def test_runner_settings() -> None:
    assert dask_runner_kwargs(address="tcp://h:8786") == {"address": "tcp://h:8786"}
    local = dask_runner_kwargs("local", workers=3, threads=1, adapt_min=1, adapt_max=4)
    assert local["cluster_class"] == "distributed.LocalCluster"
    assert local["cluster_kwargs"]["n_workers"] == 3
    assert local["adapt_kwargs"] == {"minimum": 1, "maximum": 4}
    saturn = dask_runner_kwargs("saturn", workers=4, worker_size="xlarge", scheduler_size="large")
    assert saturn["cluster_class"] == "dask_saturn.SaturnCluster"
    assert saturn["cluster_kwargs"] == {"n_workers": 4, "shutdown_on_close": False,
                                        "worker_size": "xlarge", "scheduler_size": "large"}  # fmt: skip


def test_saturn_is_the_default_inside_saturn(monkeypatch) -> None:
    monkeypatch.setenv("SATURN_BASE_URL", "http://127.0.0.1:1")
    assert dask_runner_kwargs()["cluster_class"] == "dask_saturn.SaturnCluster"
    monkeypatch.delenv("SATURN_BASE_URL")
    assert dask_runner_kwargs()["cluster_class"] == "distributed.LocalCluster"


def test_workers_on_other_machines_ship_their_parts_back(api, tmp_path, cluster, monkeypatch):
    """Workers that share no disk with the flow return their part files in the result."""
    address, _ = cluster
    monkeypatch.setenv("PLACEHOLDER_ETL_SHIP_PARTS", "1")  # every worker counts as remote
    common = {"api_url": api.url, "page_size": 5, "pages_per_task": 2,
              "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    shipped = etl(output_dir=str(tmp_path / "dask"), runner="dask", dask_address=address,
                  **common)  # fmt: skip
    monkeypatch.delenv("PLACEHOLDER_ETL_SHIP_PARTS")
    local = etl(output_dir=str(tmp_path / "local"), runner="local", use_cache=False, **common)
    assert shipped["tables"]["users"]["sha256"] == local["tables"]["users"]["sha256"]
    assert shipped["tables"]["users_flat"]["sha256"] == local["tables"]["users_flat"]["sha256"]


def test_a_worker_killed_mid_run_loses_no_rows(tmp_path) -> None:
    """SIGKILL one of two workers while tasks run: Dask reruns its tasks on the other one."""
    from placeholder_etl.server import make_server

    address, processes = start_cluster(tmp_path, workers=2)
    scheduler, first_worker = processes[0], processes[1]
    try:
        with make_server(users=3000, latency=0.1) as server:
            import threading

            def kill_when_busy() -> None:
                deadline = time.monotonic() + 60
                while server.stats()["requests"] < 8 and time.monotonic() < deadline:
                    time.sleep(0.05)
                os.killpg(first_worker.pid, signal.SIGKILL)  # the nanny and its worker
                at_kill.append(server.stats()["requests"])

            at_kill: list[int] = []
            killer = threading.Thread(target=kill_when_busy)
            killer.start()
            manifest = etl(api_url=server.url, output_dir=str(tmp_path / "out"), runner="dask",
                           dask_address=address, page_size=100, pages_per_task=3, in_flight=2,
                           use_cache=False, cache_dir=str(tmp_path / "cache"))  # fmt: skip
            killer.join()
        assert first_worker.poll() is not None
        assert at_kill[0] < 31  # it died mid-run: a count and 30 pages were needed
        users = (tmp_path / "out" / manifest["tables"]["users"]["file"]).read_text()
        ids = [int(line.split(",", 1)[0]) for line in users.splitlines()[1:]]
        assert ids == list(range(1, 3001))  # every row, once, in order
    finally:
        _stop([scheduler, *processes[1:]])


def test_processes_are_for_big_runs_or_when_asked() -> None:
    assert not use_processes(10)
    assert not use_processes(PROCESSES_FROM_RECORDS - 1)
    assert use_processes(PROCESSES_FROM_RECORDS)
    assert use_processes(None)  # unknown size: assume big
    assert use_processes(10, processes=True)
    assert not use_processes(10**9, processes=False)


def test_fit_local_cluster_only_reshapes_an_automatic_local_cluster() -> None:
    from prefect_dask import DaskTaskRunner

    def fitted(records, processes=None, threads=None, **options):
        runner = DaskTaskRunner(**dask_runner_kwargs(processes=processes, **options))
        fit_local_cluster(runner, records, processes, threads)
        return runner.cluster_kwargs

    assert fitted(10) == local_cluster_kwargs(False)
    assert fitted(10, threads=3)["threads_per_worker"] == 3
    assert fitted(PROCESSES_FROM_RECORDS)["processes"] is True
    assert fitted(10, processes=True)["processes"] is True  # asked for
    assert fitted(10, adapt_max=3)["processes"] is True  # adaptive scaling adds processes
    assert fitted(10, cluster="saturn")["n_workers"] == 2  # not a LocalCluster: untouched
    assert fitted(10, address="tcp://127.0.0.1:1") == {}


@pytest.mark.parametrize("processes", [False, True])
def test_local_clusters_listen_on_loopback_only(processes) -> None:
    import psutil
    from distributed import LocalCluster

    def listening() -> set[tuple[str, int]]:
        me = psutil.Process()
        return {
            (conn.laddr.ip, conn.laddr.port)
            for proc in (me, *me.children(recursive=True))
            for conn in proc.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        }

    before = listening()  # other tests' servers in this process
    with LocalCluster(**local_cluster_kwargs(processes, workers=1)) as cluster:
        opened = listening() - before
        assert cluster.scheduler_address.startswith("tcp://" if processes else "inproc://")
    assert opened  # at least the dashboard
    assert {ip for ip, _ in opened} == {"127.0.0.1"}


def test_the_default_cluster_fits_the_run(api, tmp_path) -> None:
    """A small run gets one worker in the flow's process; asking gives worker processes."""
    common = {"api_url": api.url, "runner": "dask", "use_cache": False,
              "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    small = etl(output_dir=str(tmp_path / "auto"), **common)
    assert len(small["workers"]) == 1
    assert small["workers"][0].startswith("inproc://")
    procs = etl(output_dir=str(tmp_path / "procs"), dask_processes=True, dask_threads=1, **common)
    assert procs["workers"]
    assert all(w.startswith("tcp://127.0.0.1:") for w in procs["workers"])
    assert small["tables"]["users"]["sha256"] == procs["tables"]["users"]["sha256"]
