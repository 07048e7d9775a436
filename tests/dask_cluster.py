"""Real Dask clusters for the tests: a `dask scheduler` and `dask worker` processes on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distributed import Client

__all__ = ["running_cluster", "start_cluster", "stop_cluster"]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "false"},
    )


def stop_cluster(processes: list[subprocess.Popen]) -> None:
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
    if worker_code:
        worker = [sys.executable, "-c", worker_code, "--no-nanny"]
    else:
        worker = [sys.executable, "-m", "distributed.cli.dask_worker"]
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


@contextmanager
def running_cluster(tmp: Path, workers: int = 2) -> Iterator[tuple[str, set[str]]]:
    """A scheduler and ``workers`` worker processes for the block; yields (address, the
    workers' addresses). The workers inherit this process's environment."""
    address, processes = start_cluster(tmp, workers=workers)
    try:
        with Client(address, timeout=30) as client:
            workers = set(client.scheduler_info()["workers"])
        yield address, workers  # no client of ours stays connected during the block
    finally:
        stop_cluster(processes)
