"""Benchmark the Prefect flow against the plain script and dlt, side by side, in one process.

For each (users, latency) cell the harness starts an API server (by default the fast,
pre-encoded one in ``benchmarks/fast_server.py``; ``--server bundled`` for the package's own),
then runs the plain script (``benchmarks/plain.py``), the flow (``placeholder-etl run``,
default settings and a fresh, empty ``--cache-dir``: a cold cache, against a Prefect server the
harness started once) and dlt's ``rest_api`` source (``benchmarks/dlt_run.py``, in
``benchmarks/.venv-dlt``, created on demand) as subprocesses, rotating which goes first. Each
run is timed (wall clock), its process tree's CPU time taken and its RSS polled every ~50 ms:
the peak of the largest single process and the peak of the sum. The plain and flow users CSVs
must have N data rows and be byte-identical; dlt's must have N rows with ids 1..N. See
``benchmarks/README.md``.

Usage::

    .venv/bin/python benchmarks/bench.py                 # the full matrix, 3 runs each
    .venv/bin/python benchmarks/bench.py --quick         # 10 and 10,000 users, 1 run
    .venv/bin/python benchmarks/bench.py --fixed-costs   # plus import/server/cluster costs
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import itertools
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path
from typing import Any

import fast_server
import psutil
import requests
import throughput

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PLAIN = HERE / "plain.py"
DLT_RUN = HERE / "dlt_run.py"
DLT_VENV = HERE / ".venv-dlt"
DLT_REQUIREMENTS = HERE / "requirements-dlt.txt"
PYTHON = Path(sys.executable)
MIB = 1024 * 1024
KINDS = ("plain", "flow", "dlt")

SIZES = (10, 10_000, 100_000, 1_000_000)
DEFAULT_MATRIX: tuple[tuple[int, float], ...] = tuple(
    (users, latency) for latency in (0.0, 0.2) for users in SIZES
)
QUICK_SIZES = (10, 10_000)
GROWTH_SIZES = (10_000, 100_000, 1_000_000)

#: Variables that would change what the flow does (or where it looks) if inherited.
SCRUBBED_ENV = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_PROFILE",
    "PLACEHOLDER_ETL_API_URL",
    "PLACEHOLDER_ETL_OUTPUT_DIR",
    "PLACEHOLDER_ETL_CACHE_DIR",
    "PLACEHOLDER_ETL_NOTIFY_WEBHOOK",
    "DASK_SCHEDULER_ADDRESS",
    "SATURN_BASE_URL",
)


@dataclass(frozen=True)
class Target:
    """A performance target of the issue: flow time ≤ ``max_ratio`` x plain (and memory)."""

    label: str
    users: int
    latency: float
    max_ratio: float
    max_peak_mib: float | None = None

    def describe(self) -> str:
        """``flow ≤ 1.5x plain`` (and ``, largest process < 512 MiB``)."""
        text = f"flow ≤ {self.max_ratio:g}x plain"
        if self.max_peak_mib is not None:
            text += f", largest process < {self.max_peak_mib:g} MiB"
        return text


TARGETS = (
    Target("100k @0 ms", 100_000, 0.0, 1.5),
    Target("100k @200 ms", 100_000, 0.2, 0.15),
    Target("1M @0 ms", 1_000_000, 0.0, 0.6, 512),
)


# --------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    """One subprocess run: wall time, memory of its process tree, CPU, output."""

    wall_s: float
    peak_mib: float
    peak_sum_mib: float
    peak_proc: str
    procs: int
    cpu_s: float
    busy_s: float
    returncode: int
    stdout: str
    stderr: str
    started_at: float
    leftovers: int = 0


class _Sampler(threading.Thread):
    """Poll the RSS of a process and all its descendants until stopped."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.stopping = threading.Event()
        self.peak = 0
        self.peak_sum = 0
        self.peak_proc = ""
        self.seen: set[int] = set()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while True:
            self.sample(root)
            if self.stopping.wait(self.interval):
                return

    def sample(self, root: psutil.Process) -> None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for proc in procs:
            try:
                rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self.seen.add(proc.pid)
            total += rss
            if rss > self.peak:
                self.peak = rss
                self.peak_proc = _describe(proc, root)
        self.peak_sum = max(self.peak_sum, total)


def _describe(proc: psutil.Process, root: psutil.Process) -> str:
    """A short name for a process of the tree: ``main``, ``dask-worker``, ``uvicorn``, …"""
    if proc.pid == root.pid:
        return "main"
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "child"
    if "multiprocessing" in cmdline:
        return "dask-worker"
    if "uvicorn" in cmdline:
        return "prefect-server"
    if "serve-api" in cmdline:
        return "api-server"
    return "child"


def _busy_cpu() -> float:
    """CPU seconds the whole machine spent not idle (all cores) since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's group
        return True
    return True


def stop_group(proc: subprocess.Popen[Any], grace: float = 10.0) -> int:
    """SIGTERM the process group of ``proc`` (SIGKILL after ``grace`` s); reap ``proc``.

    Returns:
        How many processes of the group were still alive after the leader had exited
        (leftovers the program under test failed to clean up), 0 when none.
    """
    pgid = proc.pid
    leftovers = 0
    if proc.poll() is not None:  # give exiting children a moment before counting them
        deadline = time.monotonic() + 3
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
    if proc.poll() is not None and _group_alive(pgid):
        leftovers = sum(1 for p in psutil.process_iter(["pid"]) if _pgid(p.info["pid"]) == pgid)
    if proc.poll() is None or _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _group_alive(pgid) and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.1)
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    proc.wait()
    return leftovers


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def measure(
    cmd: Sequence[str], env: dict[str, str], timeout: float, interval: float = 0.05
) -> Measured:
    """Run ``cmd`` in its own process group; time it and poll its tree's memory.

    CPU time is that of the whole tree (``RUSAGE_CHILDREN``: every descendant that was
    reaped); ``busy_s`` is the whole machine's non-idle CPU time meanwhile.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy_before = _busy_cpu()
        started_at = time.time()
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        sampler = _Sampler(proc.pid, interval)
        sampler.start()
        try:
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                returncode = -9
                err.write(f"\nbench: killed after {timeout:.0f} s\n".encode())
            wall = time.perf_counter() - started
        finally:
            sampler.stopping.set()
            sampler.join()
            leftovers = stop_group(proc)
        busy = _busy_cpu() - busy_before
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0)
        err.seek(0)
        return Measured(
            wall_s=wall,
            peak_mib=sampler.peak / MIB,
            peak_sum_mib=sampler.peak_sum / MIB,
            peak_proc=sampler.peak_proc,
            procs=len(sampler.seen),
            cpu_s=(cpu_after.ru_utime + cpu_after.ru_stime)
            - (cpu_before.ru_utime + cpu_before.ru_stime),
            busy_s=busy,
            returncode=returncode,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            started_at=started_at,
            leftovers=leftovers,
        )


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tool(name: str) -> str:
    """An executable of this virtual environment (next to the Python running the harness)."""
    beside = PYTHON.with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"bench: cannot find {name!r} next to {PYTHON} nor on PATH")
    return found


@contextlib.contextmanager
def prefect_server(
    home: Path, env: dict[str, str], timeout: float = 180
) -> Iterator[tuple[str, int]]:
    """Start ``prefect server start`` on 127.0.0.1 in its own process group.

    Yields:
        The API URL and the server's pid.

    The server's process group is terminated on exit, whatever happens.
    """
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    server_env = {**env, "PREFECT_HOME": str(home)}
    log_path = home / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [tool("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=home,
            env=server_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}/api"
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"prefect server exited ({proc.returncode}):\n{log_path.read_text()}"
                    )
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{url}/health", timeout=2).ok:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"prefect server not healthy after {timeout:.0f} s")
                time.sleep(0.25)
            yield url, proc.pid
        finally:
            stop_group(proc)


def _api_server_pid(url: str) -> int | None:
    """The pid of the bundled API server (a child of this process) serving ``url``."""
    port = url.rsplit(":", 1)[-1].strip("/")
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            cmdline = child.cmdline()
            if "serve-api" in cmdline:
                conns = child.net_connections(kind="tcp")
                if any(c.laddr and str(c.laddr.port) == port for c in conns):
                    return child.pid
    return None


def _tree_rss(pid: int) -> float:
    """RSS (MiB) of a process and its descendants now."""
    total = 0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
    return total / MIB


def api_stats(url: str) -> dict[str, int]:
    """The API server's counters: ``requests`` (-1 if unreadable), and ``bytes_sent`` and
    ``not_modified`` when it counts them (``fast_server.py`` does)."""
    try:
        stats = requests.get(f"{url}/__control/stats", timeout=10).json()
        found = {"requests": int(stats["requests"])}
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return {"requests": -1}
    found |= {k: int(stats[k]) for k in ("bytes_sent", "not_modified") if k in stats}
    return found


def _proc_cpu(pid: int | None) -> float:
    """CPU seconds (user+system) used so far by a process and its live descendants."""
    if pid is None:
        return 0.0
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    """One measured run of the plain script or the flow."""

    users: int
    latency: float
    kind: str  # "plain", "flow" or "dlt"
    rep: int
    first: bool  # ran first in its repetition
    wall_s: float
    peak_mib: float
    peak_sum_mib: float
    peak_proc: str
    procs: int
    cpu_s: float
    api_cpu_s: float
    prefect_cpu_s: float
    other_cpu_s: float
    requests: int
    rows: int | None
    sha256: str | None
    ok: bool
    problems: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    label: str = ""  # what the run was, when not a matrix run (the raw table shows it)
    api_bytes: int | None = None  # bytes the API server sent (None: it does not count them)
    extra: dict[str, Any] = field(default_factory=dict)  # a cell's own figures


_LOG_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \|", re.MULTILINE)
_EVENTS = {
    "flow_begin": "Beginning flow run",
    "cluster_create": "Creating a new Dask cluster",
    "cluster_ready": "The Dask dashboard is available",
    "temp_server": "Starting temporary server on",
}


def _time_of_day(epoch: float) -> float:
    local = time.localtime(epoch)
    return local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + epoch % 1


def log_events(text: str, started_at: float) -> dict[str, float]:
    """Seconds from process start to the first log line of each event in ``_EVENTS``.

    Prefect's console lines start with local ``HH:MM:SS.mmm``.
    """
    start = _time_of_day(started_at)
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _LOG_TIME.match(line)
        if not match:
            continue
        for key, needle in _EVENTS.items():
            if key not in found and needle in line:
                h, m, s, ms = (int(g) for g in match.groups())
                offset = h * 3600 + m * 60 + s + ms / 1000 - start
                if offset < -43200:  # the run crossed midnight
                    offset += 86400
                found[key] = offset
    return found


def flow_phases(measured: Measured, out: Path) -> dict[str, float]:
    """Where a flow run's wall time went, from its log timestamps and its manifest.

    ``before_flow``: process start to the first flow-run log line (imports, ephemeral server,
    flow-run creation); ``cluster``: Dask LocalCluster start (after the count, inside
    ``extract_s``); ``count``/``extract``/``load``: the manifest's timings (``extract``
    without the cluster start); ``other``: the rest of the wall time (subflow set-up,
    cluster close, exit).
    """
    phases: dict[str, float] = {}
    events = log_events(measured.stderr + "\n" + measured.stdout, measured.started_at)
    manifest = flow_manifest(out)
    timings = manifest.get("timings", {})
    if "flow_begin" in events:
        phases["before_flow"] = events["flow_begin"]
    if "temp_server" in events and "flow_begin" in events:
        phases["ephemeral_server"] = events["flow_begin"] - events["temp_server"]
    if "cluster_create" in events and "cluster_ready" in events:
        phases["cluster"] = events["cluster_ready"] - events["cluster_create"]
    if all(k in timings for k in ("count_s", "extract_s", "load_s", "total_s")):
        phases["count"] = timings["count_s"]
        phases["extract"] = timings["extract_s"] - phases.get("cluster", 0.0)
        phases["load"] = timings["load_s"]
        phases["in_flow"] = timings["total_s"]
        if "before_flow" in phases:
            phases["other"] = measured.wall_s - phases["before_flow"] - timings["total_s"]
    return phases


def flow_manifest(out: Path) -> dict[str, Any]:
    """The flow's last ``manifest_*.json`` in ``out`` (``{}`` if none or unreadable).

    The harness reads its ``timings`` (``count_s``, ``extract_s``, ``load_s``, ``total_s``)
    and ``cached_chunks`` (must be 0: every flow run starts with an empty cache).
    """
    manifests = sorted(out.glob("manifest_*.json"))
    if not manifests:
        return {}
    try:
        return json.loads(manifests[-1].read_text())
    except (OSError, ValueError):
        return {}


def dlt_table(out: Path, newest_load: bool = False) -> tuple[int | None, list[str]]:
    """Rows of dlt's users table (all its CSV files under ``out``, or those of its newest load
    only: a rerun appends a load) and what is wrong with it.

    The ids must be exactly 1..rows (checked by the caller against N).
    """
    files = sorted(out.glob("data/*/users/*.csv"))
    if newest_load and files:  # the filesystem destination names them <load id>.<file id>.csv
        newest = max(path.name.split(".", 1)[0] for path in files)
        files = [path for path in files if path.name.split(".", 1)[0] == newest]
    if not files:
        return None, ["no users CSV written"]
    ids: list[int] = []
    for path in files:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if "id" not in header:
                return None, [f"{path.name}: no id column"]
            column = header.index("id")
            ids += [int(row[column]) for row in reader]
    problems = []
    if sorted(ids) != list(range(1, len(ids) + 1)):
        problems.append(f"user ids are not 1..{len(ids)} (duplicates or gaps)")
    return len(ids), problems


def users_csv(out: Path) -> Path | None:
    """The users table the newest manifest in ``out`` names (a rerun writes a second one),
    else the one ``users_<ts>.csv`` (not ``users_flat_...``) in ``out``."""
    named = flow_manifest(out).get("tables", {}).get("users", {}).get("file")
    if isinstance(named, str) and (out / named).is_file():
        return out / named
    found = [p for p in out.glob("users_*.csv") if not p.name.startswith("users_flat_")]
    return found[0] if len(found) == 1 else None


def csv_rows(path: Path) -> int:
    """Data rows of a CSV (newline count, or a real parse when fields hold newlines)."""
    with path.open("rb") as handle:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    with path.open(newline="", encoding="utf-8") as handle:
        header = handle.readline()
    if '"' not in header and lines > 0:
        with path.open("rb") as handle:
            if b'"' not in handle.read():
                return lines - 1
    with path.open(newline="", encoding="utf-8") as handle:
        return sum(1 for _ in csv.reader(handle)) - 1


def verify_problems(output: str | Path, manifest: str | None = None) -> list[str]:
    """What ``placeholder-etl verify`` finds wrong with a run's output: one line per table
    that is not as its manifest records (presence, size, sha256, rows), or why the manifest
    cannot be read. Empty: the output verifies. Reads every table once (untimed).
    """
    from placeholder_etl.core.verify import verify_output

    try:
        verified = verify_output(str(output), manifest)
    except Exception as exc:  # noqa: BLE001 - no manifest, or not one this version reads
        return [f"does not verify: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"]
    return [f"does not verify: {problem}" for problem in verified.problems]


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Context:
    """What every run needs: environments, paths, limits, the API server, the dlt venv."""

    work: Path
    base_env: dict[str, str]
    flow_env: dict[str, str]
    timeout: float
    interval: float
    prefect_pid: int | None = None
    server: str = "fast"  # "fast" (benchmarks/fast_server.py) or "bundled"
    kinds: tuple[str, ...] = KINDS
    dlt_python: Path | None = None
    dlt_limit: float = 600.0  # skip a dlt run expected to take longer (seconds)
    fast_cache: Path | None = None


@contextlib.contextmanager
def api_server(ctx: Context, users: int, latency: float) -> Iterator[tuple[str, int | None]]:
    """The cell's API server, in its own process: ``(url, pid)``.

    The fast server builds (or loads from its cache) every record before it yields, so
    that is never timed.
    """
    if ctx.server == "fast":
        with fast_server.running(
            users, latency=latency, python=str(PYTHON), cache_dir=ctx.fast_cache, env=ctx.base_env
        ) as (url, pid):
            yield url, pid
    else:
        with fast_server.bundled_server(users=users, latency=latency) as url:
            yield url, _api_server_pid(url)


def command(ctx: Context, kind: str, api_url: str, out: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one run of ``kind`` writing under ``out``."""
    if kind == "plain":
        cmd = [str(PYTHON), str(PLAIN), "--api-url", api_url, "--output-dir", str(out / "o")]
        return cmd, ctx.base_env
    if kind == "flow":  # default settings; a fresh, empty cache dir: a cold cache
        cmd = [tool("placeholder-etl"), "run", "--verbose", "--api-url", api_url, "--output-dir"]
        cmd += [str(out / "o"), "--cache-dir", str(out / "cache")]
        return cmd, ctx.flow_env
    if kind == "dlt":  # a fresh pipelines dir under out/o: nothing kept from another run
        if ctx.dlt_python is None:
            raise RuntimeError("no dlt environment (run without --no-dlt)")
        cmd = [str(ctx.dlt_python), str(DLT_RUN), "--api-url", api_url, "--output-dir"]
        return [*cmd, str(out / "o")], ctx.base_env
    raise ValueError(f"unknown kind {kind!r}")


def run_one(
    ctx: Context, kind: str, api_url: str, api_pid: int | None, users: int, latency: float
) -> tuple[Measured, Run, Path]:
    """Run the plain script, the flow or dlt once against ``api_url``; check its output."""
    out = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=ctx.work))
    cmd, env = command(ctx, kind, api_url, out)
    measured, run = measure_run(ctx, kind, cmd, env, out / "o", (api_url, api_pid), users, latency)
    return measured, run, out


def measure_run(
    ctx: Context,
    kind: str,
    cmd: list[str],
    env: dict[str, str],
    out: Path,
    api: tuple[str, int | None],
    users: int,
    latency: float,
    newest_load: bool = False,
) -> tuple[Measured, Run]:
    """Run ``cmd`` (the plain script, the flow or dlt, writing into ``out``) once; check its
    output (the flow's: its newest manifest's, which must verify and name no cached chunk;
    dlt's: its ``newest_load`` only, if asked) and count what the API server did meanwhile."""
    api_url, api_pid = api
    stats_before = api_stats(api_url)
    api_cpu_before = _proc_cpu(api_pid)
    prefect_cpu_before = _proc_cpu(ctx.prefect_pid)
    measured = measure(cmd, env, ctx.timeout, ctx.interval)
    api_cpu = _proc_cpu(api_pid) - api_cpu_before
    prefect_cpu = _proc_cpu(ctx.prefect_pid) - prefect_cpu_before
    stats = api_stats(api_url)
    problems: list[str] = []
    if measured.returncode != 0:
        tail = " | ".join((measured.stderr or measured.stdout).strip().splitlines()[-3:])
        problems.append(f"exit {measured.returncode}: {tail[-300:]}")
    if measured.leftovers:
        problems.append(f"{measured.leftovers} process(es) left running after exit")
    rows = digest = None
    if kind == "dlt":
        rows, found = dlt_table(out, newest_load)
        problems += found
    elif (path := users_csv(out)) is None:
        problems.append("no users CSV written")
    else:
        rows = csv_rows(path)
        digest = sha256(path)
    if rows is not None and rows != users:
        problems.append(f"{rows} data rows, expected {users}")
    if kind == "flow" and measured.returncode == 0:  # after the timed run
        problems += verify_problems(out)
    if kind == "flow" and (cached := flow_manifest(out).get("cached_chunks", 0)):
        problems.append(f"{cached} chunk(s) came from Prefect's task cache: not a cold run")
    counted = {k: stats[k] - stats_before[k] for k in ("bytes_sent", "not_modified") if k in stats}
    run = Run(
        users=users,
        latency=latency,
        kind=kind,
        rep=0,
        first=False,
        wall_s=measured.wall_s,
        peak_mib=measured.peak_mib,
        peak_sum_mib=measured.peak_sum_mib,
        peak_proc=measured.peak_proc,
        procs=measured.procs,
        cpu_s=measured.cpu_s,
        api_cpu_s=api_cpu,
        prefect_cpu_s=prefect_cpu,
        other_cpu_s=max(0.0, measured.busy_s - measured.cpu_s - api_cpu - prefect_cpu),
        requests=stats["requests"] - stats_before["requests"],
        rows=rows,
        sha256=digest,
        ok=not problems,
        problems=problems,
        phases=flow_phases(measured, out) if kind == "flow" else {},
        api_bytes=counted.get("bytes_sent"),
        extra={"not_modified": counted["not_modified"]} if "not_modified" in counted else {},
    )
    return measured, run


def dlt_estimate(users: int, latency: float, at_zero: float | None) -> float:
    """Seconds a dlt run at ``latency`` should take: its 0 ms time plus one latency per page
    (dlt asks for one page after another)."""
    pages = -(-users // 1000)
    return (at_zero or 0.0) + pages * latency


def run_cell(
    ctx: Context, users: int, latency: float, runs: int, dlt_at_zero: float | None = None
) -> tuple[list[Run], str]:
    """Start the API server for one cell and run every kind ``runs`` times, rotating the order.

    Args:
        dlt_at_zero: dlt's median time for ``users`` at 0 ms, if measured: dlt is skipped in
            this cell when it would take longer than ``ctx.dlt_limit``.

    Returns:
        The runs, and a note on what was skipped ("" when nothing was).
    """
    results: list[Run] = []
    kinds = list(ctx.kinds)
    note = ""
    if "dlt" in kinds and latency > 0:
        estimate = dlt_estimate(users, latency, dlt_at_zero)
        if estimate > ctx.dlt_limit:
            kinds.remove("dlt")
            note = f"dlt skipped: about {estimate:.0f} s > {ctx.dlt_limit:.0f} s per run"
            print(f"  {note}", flush=True)
    with api_server(ctx, users, latency) as (api_url, api_pid):
        reference: str | None = None
        for rep in range(runs):
            shift = rep % len(kinds)
            order = kinds[shift:] + kinds[:shift]
            for position, kind in enumerate(order):
                _, run, out = run_one(ctx, kind, api_url, api_pid, users, latency)
                shutil.rmtree(out, ignore_errors=True)
                run.rep = rep + 1
                run.first = position == 0
                reference = check_same_csv(run, reference)
                results.append(run)
                _print_run(run)
    return results, note


def check_same_csv(run: Run, reference: str | None) -> str | None:
    """Mark ``run`` failed when its users CSV's sha256 is not ``reference`` (the first run's);
    return the reference for the next run (this run's when there was none yet)."""
    if run.sha256 is None:
        return reference
    if reference is not None and run.sha256 != reference:
        run.problems.append(
            f"users CSV differs from the first run's (sha256 {run.sha256[:12]} vs {reference[:12]})"
        )
        run.ok = False
    return reference or run.sha256


def _print_run(run: Run) -> None:
    phases = ", ".join(f"{k} {v:.2f}" for k, v in run.phases.items())
    status = "ok" if run.ok else "PROBLEM: " + "; ".join(run.problems)
    print(
        f"  {run.users:>9,} users @{run.latency * 1000:>4.0f} ms  rep {run.rep}  "
        f"{run.kind:<5} {run.wall_s:7.2f} s  peak {run.peak_mib:6.0f} MiB "
        f"({run.peak_proc}; sum {run.peak_sum_mib:.0f})  cpu {run.cpu_s:.1f} s  "
        f"api-cpu {run.api_cpu_s:.1f} s  prefect-server-cpu {run.prefect_cpu_s:.1f} s  "
        f"other-cpu {run.other_cpu_s:.1f} s  "
        f"{run.requests} req  {status}" + (f"\n      phases: {phases}" if phases else ""),
        flush=True,
    )
    if not run.ok:
        print(f"  !!! {run.kind} run FAILED its checks: {'; '.join(run.problems)}", flush=True)


# --------------------------------------------------------------------------- fixed costs

_EPHEMERAL_PROBE = """
import json, time
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()
t0 = time.perf_counter(); server.start(); t1 = time.perf_counter()
server.stop(); t2 = time.perf_counter()
print(json.dumps({"start_s": t1 - t0, "stop_s": t2 - t1}))
"""

_CLUSTER_PROBE = """
import json, sys, time
from distributed import LocalCluster
from placeholder_etl.cluster import local_cluster_kwargs
kwargs = local_cluster_kwargs(processes=sys.argv[1] == "processes")
t0 = time.perf_counter(); cluster = LocalCluster(**kwargs); t1 = time.perf_counter()
cluster.close(); t2 = time.perf_counter()
print(json.dumps({"start_s": t1 - t0, "stop_s": t2 - t1}))
"""


@dataclass
class FixedCost:
    """A fixed cost: name, how it was measured, the samples (seconds)."""

    name: str
    how: str
    samples: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        """Median of the samples (NaN when there are none)."""
        return statistics.median(self.samples) if self.samples else float("nan")


def _probe(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, float]:
    measured = measure(cmd, env, timeout)
    if measured.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({measured.returncode}):\n{measured.stderr[-2000:]}")
    return json.loads(measured.stdout.strip().splitlines()[-1])


def fixed_costs(ctx: Context, runs: int) -> list[FixedCost]:
    """Import, ephemeral Prefect server, LocalCluster and whole-run costs at 10 users.

    Runs without ``PREFECT_API_URL`` (the flow starts its own ephemeral server).
    """
    env = {**ctx.base_env, "PREFECT_HOME": str(ctx.work / "fixed-prefect-home")}
    env["DASK_LOGGING__DISTRIBUTED"] = "warning"
    py = str(PYTHON)
    costs: list[FixedCost] = []

    def timed(cmd: list[str], cmd_env: dict[str, str]) -> float:
        measured = measure(cmd, cmd_env, ctx.timeout)
        if measured.returncode != 0:
            raise RuntimeError(f"{cmd} failed:\n{measured.stderr[-2000:]}")
        return measured.wall_s

    print("fixed costs (10 users, no PREFECT_API_URL: ephemeral Prefect server)", flush=True)
    timed([py, "-c", "import placeholder_etl.flow, pandas, requests"], env)  # fill the cache
    imports = [timed([py, "-c", "import placeholder_etl.flow"], env) for _ in range(runs)]
    costs.append(
        FixedCost("import placeholder_etl.flow", "python -c 'import placeholder_etl.flow'", imports)
    )
    if "PYTHONPYCACHEPREFIX" in env:
        cold = []
        for _ in range(runs):
            empty = Path(tempfile.mkdtemp(prefix="no-pyc-", dir=ctx.work))
            cold_env = {**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(empty)}
            cold.append(timed([py, "-c", "import placeholder_etl.flow"], cold_env))
        costs.append(
            FixedCost(
                "import placeholder_etl.flow, no .pyc",
                "same, with an empty PYTHONPYCACHEPREFIX and PYTHONDONTWRITEBYTECODE=1",
                cold,
            )
        )
    plain_imports = [timed([py, "-c", "import pandas, requests"], env) for _ in range(runs)]
    costs.append(
        FixedCost(
            "import pandas, requests (plain)", "python -c 'import pandas, requests'", plain_imports
        )
    )
    print(f"  imports done: {[round(s, 2) for s in imports]}", flush=True)

    first = _probe([py, "-c", _EPHEMERAL_PROBE], env, ctx.timeout)
    starts, stops = [], []
    for _ in range(runs):
        probe = _probe([py, "-c", _EPHEMERAL_PROBE], env, ctx.timeout)
        starts.append(probe["start_s"])
        stops.append(probe["stop_s"])
    costs.append(
        FixedCost(
            "ephemeral Prefect server start",
            "SubprocessASGIServer().start() in a subprocess (existing database)",
            starts,
            note=f"first start, creating the database: {first['start_s']:.2f} s",
        )
    )
    costs.append(FixedCost("ephemeral Prefect server stop", "SubprocessASGIServer().stop()", stops))
    print(f"  ephemeral server: starts {[round(s, 2) for s in starts]}", flush=True)

    for variant, label in (
        ("threads", ": one worker in the process (runs under 200,000 records)"),
        ("processes", ": worker processes, tasks preloaded (200,000 records on)"),
    ):
        starts, stops = [], []
        for _ in range(runs):
            probe = _probe([py, "-c", _CLUSTER_PROBE, variant], env, ctx.timeout)
            starts.append(probe["start_s"])
            stops.append(probe["stop_s"])
        how = f"LocalCluster(**local_cluster_kwargs(processes={variant == 'processes'}))"
        costs.append(FixedCost(f"LocalCluster start{label}", how, starts))
        costs.append(FixedCost(f"LocalCluster close{label}", how + ": close()", stops))
        print(f"  LocalCluster {variant}: starts {[round(s, 2) for s in starts]}", flush=True)

    walls, peaks, phases = [], [], []
    for _ in range(runs):
        out = Path(tempfile.mkdtemp(prefix="bundled-", dir=ctx.work))
        cmd = [tool("placeholder-etl"), "run", "--verbose", "--api-url", "bundled", "--output-dir"]
        cmd += [str(out / "o"), "--no-cache", "--cache-dir", str(out / "cache")]
        measured = measure(cmd, env, ctx.timeout, ctx.interval)
        if measured.returncode != 0:
            raise RuntimeError(f"placeholder-etl run failed:\n{measured.stderr[-2000:]}")
        found = users_csv(out / "o")
        if found is None or csv_rows(found) != 10:
            raise RuntimeError("placeholder-etl run --api-url bundled: no 10-row users CSV")
        if problems := verify_problems(out / "o"):
            raise RuntimeError(f"placeholder-etl run --api-url bundled: {'; '.join(problems)}")
        walls.append(measured.wall_s)
        peaks.append(measured.peak_mib)
        phases.append(flow_phases(measured, out / "o"))
        shutil.rmtree(out, ignore_errors=True)
    breakdown = _median_phases(phases)
    costs.append(
        FixedCost(
            "placeholder-etl run --api-url bundled",
            "whole command, 10 users, ephemeral server, Dask runner",
            walls,
            note=(
                f"largest process {statistics.median(peaks):.0f} MiB; "
                + ", ".join(f"{k} {v:.2f} s" for k, v in breakdown.items())
            ),
        )
    )
    print(f"  whole run: {[round(s, 2) for s in walls]}", flush=True)
    return costs


# --------------------------------------------------------------------------- reporting


@dataclass
class Cell:
    """The summary of one (users, latency) cell: the runs of each kind."""

    users: int
    latency: float
    runs: dict[str, list[Run]]
    note: str = ""  # what was skipped, and why

    def _ok(self, kind: str) -> list[Run]:
        return [r for r in self.runs.get(kind, []) if r.ok]

    def seconds(self, kind: str) -> float:
        """Median wall time of ``kind``'s runs that passed their checks (NaN if none)."""
        values = [r.wall_s for r in self._ok(kind)]
        return statistics.median(values) if values else float("nan")

    def cpu(self, kind: str) -> float:
        """Median CPU time (user+system of the process tree) of ``kind``'s good runs."""
        values = [r.cpu_s for r in self._ok(kind)]
        return statistics.median(values) if values else float("nan")

    def peak(self, kind: str) -> float:
        """Largest peak RSS (MiB) of a single process over ``kind``'s runs."""
        return max((r.peak_mib for r in self.runs.get(kind, [])), default=float("nan"))

    def ratio(self, kind: str, other: str) -> float:
        """Median time of ``kind`` / median time of ``other``."""
        below = self.seconds(other)
        return self.seconds(kind) / below if below > 0 else float("nan")

    @property
    def plain_s(self) -> float:
        """Median wall time of the plain script."""
        return self.seconds("plain")

    @property
    def flow_s(self) -> float:
        """Median wall time of the flow."""
        return self.seconds("flow")

    @property
    def flow_peak_sum(self) -> float:
        """Largest peak of the summed RSS (MiB) of the flow's process tree."""
        return max((r.peak_sum_mib for r in self.runs.get("flow", [])), default=float("nan"))

    @property
    def ok(self) -> bool:
        """Every run passed its checks."""
        return all(r.ok for runs in self.runs.values() for r in runs)

    def target(self) -> Target | None:
        """The issue's target for this cell, if it has one."""
        for target in TARGETS:
            if target.users == self.users and abs(target.latency - self.latency) < 1e-9:
                return target
        return None

    def verdict(self) -> str:
        """``PASS``/``FAIL`` against the target (with what failed), or ``-``."""
        target = self.target()
        if target is None:
            return "-"
        if not all(r.ok for kind in ("plain", "flow") for r in self.runs.get(kind, [])):
            return "FAIL (runs failed their checks)"
        fails = []
        ratio = self.ratio("flow", "plain")
        if not ratio <= target.max_ratio:
            fails.append(f"{ratio:.2f}x > {target.max_ratio:g}x")
        if target.max_peak_mib is not None and not self.peak("flow") < target.max_peak_mib:
            fails.append(f"{self.peak('flow'):.0f} MiB ≥ {target.max_peak_mib:g} MiB")
        return "FAIL (" + "; ".join(fails) + ")" if fails else f"PASS ({target.describe()})"


def _median_phases(phases: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in phases[0] if all(k in p for p in phases)] if phases else []
    return {k: statistics.median(p[k] for p in phases) for k in keys}


def _ms(latency: float) -> str:
    return f"{latency * 1000:.0f}"


def _num(value: float, spec: str, missing: str = "-") -> str:
    return missing if math.isnan(value) else format(value, spec)


def summary_rows(cells: list[Cell]) -> list[list[str]]:
    """The results table: one row per cell, plain / flow / dlt side by side."""
    rows = []
    for c in cells:
        missing = {k: ("skipped" if k in c.note else "-") for k in KINDS}
        rows.append(
            [
                f"{c.users:,}",
                _ms(c.latency),
                *(_num(c.seconds(k), ".2f", missing[k]) for k in KINDS),
                _num(c.ratio("flow", "plain"), ".2f"),
                _num(c.ratio("flow", "dlt"), ".2f"),
                *(_num(c.cpu(k), ".1f", missing[k]) for k in KINDS),
                *(_num(c.peak(k), ".0f", missing[k]) for k in KINDS),
                "ok" if c.ok else "MISMATCH/FAILED",
                c.verdict(),
            ]
        )
    return rows


SUMMARY_HEADER = [
    "users",
    "latency ms",
    "plain s",
    "flow s",
    "dlt s",
    "flow/plain",
    "flow/dlt",
    "plain CPU s",
    "flow CPU s",
    "dlt CPU s",
    "plain MiB",
    "flow MiB",
    "dlt MiB",
    "checks",
    "target",
]

PHASES = ("before_flow", "cluster", "count", "extract", "load", "other")


def _cpu_median(runs: list[Run], attr: str) -> str:
    values = [getattr(r, attr) for r in runs if r.ok]
    return f"{statistics.median(values):.1f}" if values else "-"


def phase_rows(cells: list[Cell]) -> list[list[str]]:
    """Where the flow's median time went, per cell, and the CPU of the servers."""
    rows = []
    for c in cells:
        flow = c.runs.get("flow", [])
        med = _median_phases([r.phases for r in flow if r.ok and r.phases])
        rows.append(
            [
                f"{c.users:,}",
                _ms(c.latency),
                _num(c.flow_s, ".2f"),
                *(f"{med[p]:.2f}" if p in med else "?" for p in PHASES),
                _num(c.flow_peak_sum, ".0f"),
                _cpu_median(flow, "prefect_cpu_s"),
                *(_cpu_median(c.runs.get(k, []), "api_cpu_s") for k in KINDS),
            ]
        )
    return rows


PHASE_HEADER = [
    "users",
    "latency ms",
    "flow s",
    "before flow",
    "Dask cluster start",
    "count",
    "extract",
    "load",
    "other",
    "flow tree MiB",
    "Prefect server CPU s (flow)",
    "API CPU s (plain)",
    "API CPU s (flow)",
    "API CPU s (dlt)",
]


def _flow_extract(cell: Cell) -> float:
    values = [
        r.phases["extract"] for r in cell.runs.get("flow", []) if r.ok and "extract" in r.phases
    ]
    return statistics.median(values) if values else float("nan")


GROWTH_SERIES: tuple[tuple[str, Callable[[Cell], float]], ...] = (
    ("plain", lambda c: c.seconds("plain")),
    ("flow", lambda c: c.seconds("flow")),
    ("flow extract phase", _flow_extract),
    ("dlt", lambda c: c.seconds("dlt")),
)


def growth_lines(cells: list[Cell]) -> list[str]:
    """Time per 1,000 users at 10k/100k/1M (per latency), and the marginal cost between sizes."""
    lines = []
    for latency in sorted({c.latency for c in cells}):
        for label, seconds in GROWTH_SERIES:
            points = [
                (c.users, seconds(c))
                for users in GROWTH_SIZES
                for c in cells
                if c.users == users and c.latency == latency and not math.isnan(seconds(c))
            ]
            if len(points) < 2:
                continue
            per_k = " → ".join(f"{u // 1000:,}k {s / (u / 1000):.4f}" for u, s in points)
            marginal = ", ".join(
                f"{a // 1000:,}k→{b // 1000:,}k {(sb - sa) / ((b - a) / 1000):.4f}"
                for (a, sa), (b, sb) in itertools.pairwise(points)
            )
            lines.append(
                f"growth ({label}, {_ms(latency)} ms): s per 1,000 users {per_k}; "
                f"marginal s per extra 1,000 users {marginal}"
            )
    if lines:
        lines.append(
            "(linear = equal marginal costs; the per-1,000 figure falls while fixed costs dominate)"
        )
    return lines


def text_table(header: list[str], rows: list[list[str]], left: Sequence[int] = ()) -> str:
    """A fixed-width table for the terminal (columns in ``left`` aligned left)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:{'<' if i in left else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    return "\n".join(lines + [fmt.format(*row) for row in rows])


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def fixed_rows(costs: list[FixedCost]) -> list[list[str]]:
    """The fixed-costs table."""
    return [
        [
            c.name,
            f"{c.median:.2f}",
            " / ".join(f"{s:.2f}" for s in c.samples),
            c.how + (f"; {c.note}" if c.note else ""),
        ]
        for c in costs
    ]


FIXED_HEADER = ["fixed cost", "median s", "runs s", "how"]


def raw_rows(runs: list[Run]) -> list[list[str]]:
    """Every run, as measured."""
    return [
        [
            f"{r.users:,}",
            _ms(r.latency),
            str(r.rep),
            (r.label or r.kind) + (" (1st)" if r.first else ""),
            f"{r.wall_s:.2f}",
            f"{r.peak_mib:.0f} ({r.peak_proc})",
            f"{r.peak_sum_mib:.0f}",
            str(r.procs),
            f"{r.cpu_s:.1f}",
            f"{r.api_cpu_s:.1f}",
            f"{r.prefect_cpu_s:.1f}",
            f"{r.other_cpu_s:.1f}",
            str(r.requests),
            (r.sha256 or "-")[:12],
            ", ".join(f"{k} {v:.2f}" for k, v in r.phases.items()) or "-",
            "ok" if r.ok else "**" + "; ".join(r.problems) + "**",
        ]
        for r in runs
    ]


RAW_HEADER = [
    "users",
    "latency ms",
    "rep",
    "kind",
    "wall s",
    "peak MiB (process)",
    "tree MiB",
    "procs",
    "CPU s",
    "API CPU s",
    "Prefect server CPU s",
    "other CPU s",
    "requests",
    "users CSV sha256",
    "flow phases s",
    "checks",
]


def machine() -> dict[str, str]:
    """CPU model, cores, RAM, OS, Python and library versions."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "CPU": model,
        "cores": f"{os.cpu_count()} ({usable} usable)",
        "RAM": f"{psutil.virtual_memory().total / 1024**3:.1f} GiB",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "prefect": ver("prefect"),
        "prefect-dask": ver("prefect-dask"),
        "dask / distributed": f"{ver('dask')} / {ver('distributed')}",
        "pandas": ver("pandas"),
        "requests": ver("requests"),
        "orjson": ver("orjson"),
        "placeholder-etl": f"{ver('placeholder-etl')} ({flow_source()})",
    }


def flow_source() -> str:
    """Where the flow under test comes from: the checkout and commit (``+ changes``) of the
    ``placeholder_etl`` this Python imports (the runs inherit its ``PYTHONPATH``), which may
    be another checkout than the one installed editable."""
    import importlib.util

    try:
        dist = distribution("placeholder-etl")
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except (PackageNotFoundError, ValueError):
        direct = {}
    installed = direct.get("url", "").removeprefix("file://")
    spec = importlib.util.find_spec("placeholder_etl")
    if spec is None or spec.origin is None:
        return "unknown source"
    package = Path(spec.origin).resolve().parent
    try:
        top = subprocess.run(["git", "-C", str(package), "rev-parse", "--show-toplevel"],
                             check=True, **_QUIET)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return f"editable from {installed}" if installed else f"installed in {package}"
    checkout = top.stdout.strip()
    editable = installed and Path(installed).resolve() == Path(checkout)
    how = "editable from" if editable else "on PYTHONPATH from"
    git = ["git", "-C", checkout]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], check=True, **_QUIET)
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "src"], check=True, **_QUIET)
    except (OSError, subprocess.CalledProcessError):
        return f"{how} {checkout}"
    changes = " + uncommitted changes" if dirty.stdout.strip() else ""
    return f"{how} {checkout} at {commit.stdout.strip()}{changes}"


_QUIET: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 30}


def dlt_version(python: Path | None) -> str:
    """dlt's version in its environment."""
    if python is None:
        return "not run (--no-dlt)"
    cmd = [str(python), "-c", "import dlt; print(dlt.__version__)"]
    try:
        found = subprocess.run(cmd, check=True, **_QUIET).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{found} (in {DLT_VENV.relative_to(ROOT)})"


PHASE_NOTE = (
    "`before flow`: process start → first flow-run log line (imports, flow-run creation); "
    "`Dask cluster start`: LocalCluster start (log timestamps); `count`, `extract`, `load`: "
    "the manifest's timings (`extract` without the cluster start, which follows the count); "
    "`other`: the rest (subflow set-up/tear-down, cluster close, process exit); `flow tree "
    "MiB`: the peak of the flow's process tree's summed RSS. Prefect server CPU s: the running "
    "Prefect server's, serving the flow's API calls; API CPU s: the API server's while serving "
    "each program (its own process, on the same 2 cores)."
)
SUMMARY_NOTE = (
    "Times are wall clock from process start to exit; `CPU s` is user+system time of the "
    "program's whole process tree (the API and Prefect servers are not in it); `MiB` is the "
    "peak RSS of the largest single process of the tree (polled every 50 ms), the flow's "
    "target measure. `flow/plain` and `flow/dlt` divide the median times."
)
COLD_NOTE = (
    "**Cold cache, every run**: each flow run gets a fresh, empty `--cache-dir` (its default "
    "settings otherwise, cache on: nothing can be reused, and the manifest's `cached_chunks` "
    "must be 0); each dlt run a fresh pipelines directory and destination folder; the plain "
    "script keeps nothing. Python bytecode is the only thing warm (see below)."
)
RAW_NOTE = (
    "`other CPU s`: busy CPU time of the whole machine during the run minus the run's process "
    "tree, the API server and the Prefect server: the harness and anything else running on the "
    "machine (a noise indicator)."
)


def write_markdown(
    path: Path,
    args: argparse.Namespace,
    cells: list[Cell],
    runs: list[Run],
    costs: list[FixedCost],
    meta: dict[str, str],
    sections: Sequence[str] = (),
) -> None:
    """Write (replace) the results file (``sections``: the extra cells', before the raw runs)."""
    lines = [
        "# Benchmark results: plain script vs Prefect flow vs dlt",
        "",
        (
            f"Written by `benchmarks/bench.py` on {meta['date']} (UTC); command: "
            f"`{meta['command']}`. See [README.md](README.md) for what is measured and how."
        ),
        "",
        COLD_NOTE,
        "",
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in machine().items()),
        f"- dlt: {meta.get('dlt', '-')}",
        f"- load average (1, 5, 15 min) before / after: {meta['load_before']} / {meta['load_after']}",
        f"- other processes on the machine during the runs: {meta.get('noise', '-')}",
        f"- bytecode cache: {meta['pyc']}",
        f"- API server: {meta.get('api', '-')}",
        f"- Prefect server for the flow runs: {meta['server']}",
        "",
    ]
    if meta.get("failures"):
        lines += [f"**FAILED cells: {meta['failures']}**", ""]
    if cells:
        notes = [f"{c.users:,} users @{_ms(c.latency)} ms: {c.note}" for c in cells if c.note]
        lines += [
            f"## Results (median of {args.runs} run(s) per cell; peaks are the maximum)",
            "",
            md_table(SUMMARY_HEADER, summary_rows(cells)),
            "",
            SUMMARY_NOTE,
            "",
            *(f"- {note}" for note in notes),
            *(f"- {line}" for line in growth_lines(cells)),
            "",
            "### Targets",
            "",
            *(f"- {t.label}: {t.describe()}" for t in TARGETS),
            "",
            "### Where the flow's time goes (medians, seconds)",
            "",
            md_table(PHASE_HEADER, phase_rows(cells)),
            "",
            PHASE_NOTE,
            "",
        ]
    if costs:
        lines += [
            "## Fixed costs (10 users, no PREFECT_API_URL: ephemeral Prefect server)",
            "",
            md_table(FIXED_HEADER, fixed_rows(costs)),
            "",
        ]
    lines += sections
    if runs:
        lines += [
            "## Raw runs",
            "",
            md_table(RAW_HEADER, raw_rows(runs)),
            "",
            RAW_NOTE,
            "",
        ]
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------- main


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_ints, help="comma list of user counts, e.g. 10,10000")
    parser.add_argument(
        "--latencies", type=_floats, help="comma list of API latencies in seconds, e.g. 0,0.2"
    )
    parser.add_argument("--runs", type=int, help="repetitions per cell (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="10 and 10,000 users, 0 ms, 1 run")
    parser.add_argument(
        "--server",
        choices=("fast", "bundled"),
        default="fast",
        help="API server: fast (benchmarks/fast_server.py, default) or the package's bundled one",
    )
    parser.add_argument("--no-dlt", action="store_true", help="run plain and flow only")
    parser.add_argument(
        "--dlt-limit",
        type=float,
        default=600,
        help="skip dlt in a cell where one run would take longer (seconds, default 600)",
    )
    parser.add_argument("--fast-cache", type=Path, help="fast server's build cache directory")
    parser.add_argument(
        "--fixed-costs", action="store_true", help="also measure the fixed costs at 10 users"
    )
    parser.add_argument(
        "--no-matrix", action="store_true", help="skip the matrix (with --fixed-costs)"
    )
    parser.add_argument(
        "--first-command",
        action="store_true",
        help="also time `placeholder-etl run` with no Prefect server (the CLI starts one)",
    )
    parser.add_argument(
        "--first-command-users",
        type=_ints,
        help="user counts of --first-command (default: the matrix's smallest size, else 10)",
    )
    parser.add_argument(
        "--scaling", action="store_true", help="also the scaling curve over Dask worker counts"
    )
    parser.add_argument(
        "--scaling-users", type=int, default=1_000_000, help="users of --scaling (1,000,000)"
    )
    parser.add_argument(
        "--scaling-workers",
        type=_ints,
        default=[1, 2, 4, 8],
        help="Dask worker processes of --scaling (default 1,2,4,8)",
    )
    parser.add_argument(
        "--scaling-runs", type=int, default=1, help="repetitions per worker count (default 1)"
    )
    parser.add_argument(
        "--expired-rerun",
        action="store_true",
        help="also a cold run and its rerun once the page cache has expired (and dlt's rerun)",
    )
    parser.add_argument(
        "--expired-users", type=int, default=100_000, help="users of --expired-rerun (100,000)"
    )
    parser.add_argument(
        "--expired-age-hours",
        type=float,
        default=24,
        help="how long before the rerun the cold run happened (default 24 h)",
    )
    parser.add_argument("--results", type=Path, help="markdown results file to write/replace")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run (3600)")
    parser.add_argument("--poll", type=float, default=0.05, help="RSS poll interval (0.05 s)")
    parser.add_argument(
        "--no-pyc-cache",
        action="store_true",
        help="keep the inherited PYTHONDONTWRITEBYTECODE (no bytecode cache for subprocesses)",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or list(QUICK_SIZES)
        args.runs = args.runs or 1
        args.results = args.results or HERE / "RESULTS-quick.md"
    args.runs = args.runs or 3
    args.results = args.results or HERE / "RESULTS.md"
    if args.sizes is None and args.latencies is None:
        args.matrix = list(DEFAULT_MATRIX)
    else:
        args.matrix = [(n, lat) for lat in (args.latencies or [0.0]) for n in (args.sizes or [10])]
    if args.no_matrix:
        args.matrix = []
    if args.first_command and not args.first_command_users:
        args.first_command_users = [min((n for n, _ in args.matrix), default=10)]
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def noise(runs: list[Run]) -> str:
    """How busy the rest of the machine was while the runs ran (``other CPU s`` / wall)."""
    wall = sum(r.wall_s for r in runs)
    if not wall:
        return "-"
    cores = sum(r.other_cpu_s for r in runs) / wall
    verdict = "quiet" if cores < 0.1 else "NOISY: timings of CPU-bound cells are inflated"
    return (
        f"{cores:.2f} cores busy on average (CPU time not of the program, the API server or "
        f"the Prefect server, per second of the runs; {verdict})"
    )


def ensure_dlt_venv(timeout: float = 900) -> Path:
    """``benchmarks/.venv-dlt`` with ``requirements-dlt.txt`` installed; its Python.

    Created (or refreshed when the requirements changed) with ``uv`` when it is next to this
    Python or on PATH, else with ``venv`` and pip. Never touches the project's ``.venv``.
    """
    python = DLT_VENV / "bin" / "python"
    stamp = DLT_VENV / ".requirements.sha256"
    wanted = hashlib.sha256(DLT_REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    print(f"creating {DLT_VENV.relative_to(ROOT)} from {DLT_REQUIREMENTS.name}", flush=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    uv = PYTHON.with_name("uv") if PYTHON.with_name("uv").exists() else shutil.which("uv")
    if uv:
        steps = [
            [str(uv), "venv", "-q", "--allow-existing", "--python", base, str(DLT_VENV)],
            [
                str(uv),
                "pip",
                "install",
                "-q",
                "--python",
                str(python),
                "--compile-bytecode",
                "-r",
                str(DLT_REQUIREMENTS),
            ],
        ]
    else:
        steps = [
            [base, "-m", "venv", str(DLT_VENV)],
            [str(python), "-m", "pip", "install", "-q", "-r", str(DLT_REQUIREMENTS)],
        ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise SystemExit(f"bench: {' '.join(step[:3])} failed:\n{done.stderr[-2000:]}")
    stamp.write_text(wanted + "\n")
    return python


def probe_api(ctx: Context, users: int) -> str:
    """The API server's throughput for 1,000-user pages, 1 and 16 connections (untimed)."""
    seconds = 2.0 if users <= 10_000 else 4.0
    with api_server(ctx, users, 0.0) as (url, _):
        results = [
            throughput.probe(url, max(1, users // 1000), connections, seconds)
            for connections in (1, 16)
        ]
    figures = "; ".join(
        f"{r['req_s']:,.0f} requests/s ({r['mib_s']:,.0f} MiB/s) over {r['connections']} "
        f"connection(s)"
        for r in results
    )
    return f"{figures} ({results[0]['tool']}, {users:,} users, pages of 1,000)"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every run passed its checks, 1 otherwise."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = datetime.now(UTC)
    meta = {
        "date": started.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python", "benchmarks/bench.py", *(argv or sys.argv[1:])]),
        "load_before": _load(),
    }
    work = Path(tempfile.mkdtemp(prefix="placeholder-etl-bench-"))
    base_env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    base_env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    base_env["PREFECT_HOME"] = str(work / "client-prefect-home")
    base_env["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    if args.no_pyc_cache:
        inherited = os.environ.get("PYTHONDONTWRITEBYTECODE", "")
        meta["pyc"] = f"as inherited (PYTHONDONTWRITEBYTECODE={inherited!r})"
    else:
        base_env.pop("PYTHONDONTWRITEBYTECODE", None)
        base_env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        meta["pyc"] = (
            "on (PYTHONDONTWRITEBYTECODE unset, PYTHONPYCACHEPREFIX in a temp dir, "
            "filled by an untimed warm-up run of each program)"
        )
    for key in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"):  # for the API servers
        if key in base_env:
            os.environ[key] = base_env[key]
        else:
            os.environ.pop(key, None)
    ctx = Context(work, base_env, dict(base_env), args.timeout, args.poll)
    ctx.server = args.server
    ctx.dlt_limit = args.dlt_limit
    ctx.fast_cache = args.fast_cache
    if args.no_dlt:
        ctx.kinds = ("plain", "flow")
    else:
        ctx.dlt_python = ensure_dlt_venv()
    meta["dlt"] = dlt_version(ctx.dlt_python) + (
        "; `rest_api` source, page-number paginator on `_page`/`_limit` (1,000), stopping at a "
        'short page or `X-Total-Count`; filesystem destination, `loader_file_format="csv"` '
        "(uncompressed)"
        if ctx.dlt_python
        else ""
    )
    runs: list[Run] = []
    costs: list[FixedCost] = []
    cells: list[Cell] = []
    extras: list[Any] = []  # the cells of cells.py, in the order run
    failures: list[str] = []
    print(f"bench: work dir {work}; results → {args.results}", flush=True)
    try:
        if args.server == "fast":
            meta["api"] = (
                "`benchmarks/fast_server.py` (asyncio, pre-encoded records, started per cell in "
                "its own process; building its records is not timed)"
            )
        else:
            meta["api"] = "the bundled server (`serve-api`, records generated per request)"
        if args.matrix:
            probe_users = min(100_000, max(n for n, _ in args.matrix))
            meta["api"] += "; throughput " + probe_api(ctx, probe_users)
            print(f"API server: {meta['api']}", flush=True)
        if not args.no_warmup:
            _warm_up(ctx)
        if args.fixed_costs:
            costs = fixed_costs(ctx, args.runs)
        if args.first_command:  # before the harness's Prefect server starts: none at all
            import cells as more  # not `cells`: the matrix's, here

            sizes = args.first_command_users
            extras += _extra_cell(
                failures, "first command", lambda: more.first_command(ctx, sizes, args.runs)
            )
        if args.matrix or args.scaling or args.expired_rerun:
            with prefect_server(work / "server-prefect-home", base_env) as (api, prefect_pid):
                meta["server"] = f"`prefect server start` on {api} (started once by the harness)"
                ctx.flow_env = {**base_env, "PREFECT_API_URL": api}
                ctx.prefect_pid = prefect_pid
                print(f"Prefect server at {api}", flush=True)
                for users, latency in args.matrix:
                    print(f"cell: {users:,} users @{latency * 1000:.0f} ms", flush=True)
                    at_zero = next(
                        (c.seconds("dlt") for c in cells if c.users == users and c.latency == 0),
                        None,
                    )
                    try:
                        cell_runs, note = run_cell(ctx, users, latency, args.runs, at_zero)
                    except (RuntimeError, OSError) as exc:
                        failures.append(f"{users:,} users @{latency * 1000:.0f} ms: {exc}")
                        print(f"!!! cell FAILED: {failures[-1]}", flush=True)
                        continue
                    runs += cell_runs
                    by_kind = {k: [r for r in cell_runs if r.kind == k] for k in ctx.kinds}
                    cells.append(Cell(users, latency, by_kind, note))
                extras += _server_cells(args, ctx, failures)
                rss = _tree_rss(prefect_pid)
                meta["server"] += f"; its RSS at the end: {rss:.0f} MiB"
        meta.setdefault("server", "none (fixed costs only)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for cell in extras:
        if hasattr(cell, "matrix"):  # the first command beside the matrix's same-size cells
            cell.matrix = cells
        runs += cell.runs
    meta["load_after"] = _load()
    meta["noise"] = noise(runs)
    print()
    if cells:
        print(text_table(SUMMARY_HEADER, summary_rows(cells)))
        print()
        for cell in cells:
            if cell.note:
                print(f"{cell.users:,} users @{_ms(cell.latency)} ms: {cell.note}")
        for line in growth_lines(cells):
            print(line)
        print()
        print(f"other processes on the machine: {meta['noise']}")
        print("where the flow's time goes (medians, s):")
        print(text_table(PHASE_HEADER, phase_rows(cells)))
        print()
    if costs:
        print("fixed costs (10 users, ephemeral Prefect server):")
        terminal = [
            [name, med, runs, note]
            for (name, med, runs, _), note in zip(
                fixed_rows(costs), (c.note for c in costs), strict=True
            )
        ]
        print(text_table(["fixed cost", "median s", "runs s", "note"], terminal, left=(0, 3)))
        print()
    for cell in extras:
        print(cell.terminal())
        print()
    meta["failures"] = "; ".join(failures)
    sections = [line for cell in extras for line in cell.markdown()]
    write_markdown(args.results, args, cells, runs, costs, meta, sections)
    print(f"results written to {args.results}")
    bad = [r for r in runs if not r.ok]
    if bad:
        print(f"!!! {len(bad)} run(s) FAILED their checks (see above and the raw runs)")
    for failure in failures:
        print(f"!!! cell FAILED: {failure}")
    return 1 if bad or failures else 0


def _extra_cell(failures: list[str], name: str, run: Callable[[], Any]) -> list[Any]:
    """Run one of ``cells.py``'s cells: ``[cell]``, or ``[]`` (a failure noted) if it could
    not run (a run that fails its checks is in the cell, marked)."""
    try:
        return [run()]
    except (RuntimeError, OSError, ValueError) as exc:
        failures.append(f"{name}: {exc}")
        print(f"!!! cell FAILED: {failures[-1]}", flush=True)
        return []


def _server_cells(args: argparse.Namespace, ctx: Context, failures: list[str]) -> list[Any]:
    """The scaling curve and the expired-cache rerun, if asked (with the Prefect server)."""
    import cells

    done = []
    if args.scaling:
        users, workers, runs = args.scaling_users, args.scaling_workers, args.scaling_runs
        done += _extra_cell(failures, "scaling", lambda: cells.scaling(ctx, users, workers, runs))
    if args.expired_rerun:
        users, age = args.expired_users, args.expired_age_hours
        done += _extra_cell(
            failures,
            "expired-cache rerun",
            lambda: cells.expired_rerun(ctx, users, args.runs, age),
        )
    return done


def _warm_up(ctx: Context) -> None:
    """One untimed run of each program at 10 users: fills the bytecode cache."""
    print(f"warm-up (untimed): {', '.join(ctx.kinds)} at 10 users", flush=True)
    env = dict(ctx.base_env)
    warm = Context(ctx.work, env, env, ctx.timeout, ctx.interval, server=ctx.server)
    warm.kinds, warm.dlt_python, warm.fast_cache = ctx.kinds, ctx.dlt_python, ctx.fast_cache
    with api_server(warm, 10, 0.0) as (api_url, _):
        for kind in ctx.kinds:
            measured, run, out = run_one(warm, kind, api_url, None, 10, 0.0)
            shutil.rmtree(out, ignore_errors=True)
            print(f"  warm-up {kind}: {measured.wall_s:.2f} s {'ok' if run.ok else run.problems}")


if __name__ == "__main__":
    sys.modules.setdefault("bench", sys.modules[__name__])  # cells.py's `import bench`: this one
    sys.exit(main())
