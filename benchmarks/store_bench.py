"""The flow's machine out of the data path: a run to S3 on two Dask worker processes.

Starts SeaweedFS (``weed mini``), a Dask scheduler with two worker processes and the fast
API server, all on 127.0.0.1, then runs ``placeholder-etl run --output-dir s3://…`` for each
size and measures the flow's own process (not its children): peak RSS, and the bytes it
read and wrote through system calls (``/proc/<pid>/io`` ``rchar``/``wchar``: sockets and
files, imports included). If the flow's process handled row data, those would grow with the
rows; they should not. After each run (untimed) its output in the bucket is verified against
its manifest (``verify_output``: every table there, with the recorded size, sha256 and rows;
``users`` with one row per user); a run that does not verify fails the benchmark (exit 1).

    .venv/bin/python benchmarks/store_bench.py --sizes 10000,1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench import verify_problems

from tests.s3server import weed_server  # the test suite's SeaweedFS helper

MIB = 1024 * 1024


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def stop(processes: list[subprocess.Popen]) -> None:
    for process in reversed(processes):
        try:
            os.killpg(process.pid, 15)
        except ProcessLookupError:
            continue
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def cluster(tmp: Path, env: dict[str, str]) -> tuple[str, list[subprocess.Popen]]:
    """A scheduler and two single-threaded worker processes on loopback."""
    bin_dir = Path(sys.executable).parent
    scheduler_file = tmp / "scheduler.json"
    scheduler = start(
        [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)],
        tmp / "scheduler.log", env,
    )  # fmt: skip
    while not scheduler_file.exists():
        time.sleep(0.1)
    workers = [
        start(
            [
                str(bin_dir / "dask"),
                "worker",
                "--scheduler-file",
                str(scheduler_file),
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--dashboard-address",
                "127.0.0.1:0",
            ],
            tmp / f"worker-{n}.log",
            env,
        )
        for n in range(2)
    ]
    address = json.loads(scheduler_file.read_text())["address"]
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
    return address, [scheduler, *workers]


def prefect_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    """``prefect server start`` on a free loopback port (the flow and workers report to it)."""
    import socket

    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    home = {"PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start"]
    proc = start([*cmd, "--host", "127.0.0.1", "--port", str(port)], tmp / "prefect.log", home)
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(600):
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError("prefect server did not start")


def fast_server(users: int, tmp: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fast_server.py"), "--users", str(users), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "serving" in line:
            return proc, line.rsplit(" ", 1)[-1].strip()
    raise RuntimeError("the fast server did not start")


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; the peak RSS and the syscall bytes of its own process."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    me = psutil.Process(proc.pid)
    peak = rchar = wchar = 0
    started = time.monotonic()
    while proc.poll() is None:
        try:
            peak = max(peak, me.memory_info().rss)
            io = Path(f"/proc/{proc.pid}/io").read_text().split()
            fields = dict(zip(io[::2], io[1::2], strict=False))
            rchar, wchar = int(fields["rchar:"]), int(fields["wchar:"])
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.05)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(err.decode()[-3000:])
    return {
        "seconds": time.monotonic() - started,
        "peak_mib": peak / MIB,
        "read_mib": rchar / MIB,
        "written_mib": wchar / MIB,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000")
    args = parser.parse_args()
    rows = []
    failures = []
    with tempfile.TemporaryDirectory() as tmp_dir, weed_server(buckets=["etl"]) as s3:
        tmp = Path(tmp_dir)
        prefect, api = prefect_server(tmp)
        os.environ.update(s3.env)  # this process reads the bucket back (verify)
        env = {**os.environ, "PREFECT_API_URL": api}
        address, processes = cluster(tmp, env)
        processes.insert(0, prefect)
        try:
            for users in map(int, args.sizes.split(",")):
                server, url = fast_server(users, tmp)
                output = f"s3://etl/run-{users}"
                try:
                    cmd = [str(Path(sys.executable).parent / "placeholder-etl"), "run", "-q",
                           "--api-url", url, "--output-dir", output,
                           "--runner", "dask", "--dask-address", address]  # fmt: skip
                    figures = measure(cmd, env)
                finally:
                    stop([server])
                problems = verify_problems(output) or users_rows(output, users)
                rows.append({"users": users, **figures, "verified": not problems})
                print(json.dumps(rows[-1]), flush=True)
                if problems:
                    failures.append(f"{output} ({users:,} users): {'; '.join(problems)}")
                    print(f"!!! {failures[-1]}", file=sys.stderr, flush=True)
        finally:
            stop(processes)
    print("\n| users | s | flow peak RSS MiB | flow read MiB | flow written MiB | verified |")
    print("| ---: | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        print(f"| {row['users']:,} | {row['seconds']:.1f} | {row['peak_mib']:.0f} | "
              f"{row['read_mib']:.1f} | {row['written_mib']:.1f} | "
              f"{'yes' if row['verified'] else '**NO**'} |")  # fmt: skip
    for failure in failures:
        print(f"!!! output does not verify: {failure}", file=sys.stderr)
    return 1 if failures else 0


def users_rows(output: str, users: int) -> list[str]:
    """The ``users`` table of ``output``'s newest manifest must hold one row per user."""
    from placeholder_etl.core.results import Manifest

    rows = Manifest.latest(output).tables["users"].rows
    return [] if rows == users else [f"users: {rows:,} rows, expected {users:,}"]


if __name__ == "__main__":
    raise SystemExit(main())
