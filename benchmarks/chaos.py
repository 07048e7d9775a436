"""Chaos test: runs broken on purpose, each followed by a rerun; no row may be lost or doubled.

Three kinds of fault, mixed at random with a fixed seed (``--seed``), in equal numbers:

``kill``
    SIGKILL of the whole ``placeholder-etl run`` process group at a random moment from start-up
    to the commit (after a random time, after a random number of checkpointed pages, or as the
    tables are staged), with the thread runner, the in-process Dask worker or Dask worker
    processes; then a rerun into the same output dir and cache dir.
``api``
    the API misbehaves while the run goes, switched on and off through ``POST /__control/fault``:
    5xx bursts (``5xx-rate:P`` or ``5xx:N`` for a stretch), connection resets on one page or on
    all for a moment, slow pages (some slower than ``--request-timeout``), 429s. The run must
    succeed, or, if it failed after its retries, the (fault-free) rerun must.
``worker``
    one of two real ``dask worker`` processes (nanny and worker, started here with a ``dask
    scheduler`` on 127.0.0.1) SIGKILLed while it holds a task, once a random share of the pages
    is checkpointed (``--runner dask --dask-address``); the run must succeed, and no page that
    was checkpointed at the kill may be fetched again. A fresh worker replaces the dead one.

Every faulted run is followed by a fault-free rerun with the same command. Each output a run
commits is compared with the fault-free reference runs made first (rows and sha256 of every
table, ids read back from each CSV: rows lost = reference ids missing, rows duplicated = ids
seen twice), the output dir must hold no temporary file after the rerun, no file under a final
name that no manifest names, and the earlier output (the reference files, copied in before the
faulted run) byte for byte. Page requests come from the API server's ``GET /__control/stats``
(per-page counts, the one-record count request of each invocation taken off page 1).
Results go to ``benchmarks/CHAOS.md``; the exit status is 1 when any check failed.

    .venv/bin/python benchmarks/chaos.py --runs 36        # make chaos
    .venv/bin/python benchmarks/chaos.py --runs 6 --kinds worker --report /tmp/c.md
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench
import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
KINDS = ("kill", "api", "worker")
#: Kinds whose faulted run is killed: at random, or inside its commit (``--commit-kills``).
KILLS = ("kill", "commit")
#: How the faulted run of a ``kill`` scenario runs its tasks (the CLI options).
KILL_RUNNERS = {
    "local": ["--runner", "local"],
    "dask": ["--runner", "dask", "--no-dask-processes"],
    "dask-processes": ["--runner", "dask", "--dask-processes", "--dask-workers", "2"],
}
MARKER = re.compile(r"p(\d{7})\.done\.")
Pages = Counter  # (resource, page) -> requests


# --------------------------------------------------------------------------- scenarios


@dataclass
class Phase:
    """One stretch of an API fault: ``mode`` from ``at`` s after the start, for ``seconds``."""

    at: float
    mode: str
    seconds: float
    page: int | None = None

    def label(self) -> str:
        where = f"@p{self.page}" if self.page else ""
        return f"{self.mode}{where} {self.seconds:.1f}s"


@dataclass
class Scenario:
    """What one faulted run does (drawn from the seeded generator)."""

    number: int
    kind: str
    page_size: int
    latency: float
    runner: str
    in_flight: int = 16
    request_timeout: float = 10.0
    trigger: str = ""  # kill: time | pages | staging; worker: pages
    trigger_at: float = 0.0  # seconds (time, staging delay) or a share of the pages
    phases: list[Phase] = field(default_factory=list)

    def describe(self) -> str:
        if self.kind == "api":
            text = ", ".join(p.label() for p in self.phases)
            return f"{text}; timeout {self.request_timeout:g}s"
        if self.trigger == "time":
            return f"kill at {self.trigger_at:.0%} of a run's time"
        if self.trigger == "rename":
            return f"kill before the commit's rename {self.trigger_at:.0f}"
        if self.trigger == "staging":
            return f"kill {self.trigger_at * 1000:.0f}ms after staging starts"
        return f"kill at {self.trigger_at:.0%} of pages checkpointed"


def draw_scenarios(args: argparse.Namespace, rng: random.Random) -> list[Scenario]:
    """``args.runs`` scenarios, the kinds in equal numbers, in a shuffled order."""
    kinds = [args.kinds[i % len(args.kinds)] for i in range(args.runs)]
    rng.shuffle(kinds)
    scenarios = []
    for number, kind in enumerate(kinds, 1):
        latency = round(rng.uniform(*args.latency), 3)
        page_size = rng.choice(args.page_sizes)
        if kind in KILLS:
            runner = rng.choice(list(KILL_RUNNERS))
            trigger = rng.choices(["time", "pages", "staging"], weights=[4, 4, 2])[0]
            at = {
                "time": rng.uniform(0.05, 1.0),  # of the reference run's time (start-up is ~half)
                "pages": rng.uniform(0.02, 0.98),
                "staging": rng.uniform(0.0, 0.05),
            }[trigger]
            scenarios.append(Scenario(number, kind, page_size, latency, runner, 16, 10.0,
                                      trigger, at))  # fmt: skip
        elif kind == "api":
            timeout = rng.choice([3.0, 10.0])
            scenario = Scenario(number, kind, page_size, latency, "local", 16, timeout)
            scenario.phases = draw_phases(rng, -(-args.users // page_size), timeout)
            scenarios.append(scenario)
        else:
            scenarios.append(Scenario(number, kind, page_size, latency, "cluster",
                                      rng.choice([2, 4]), 10.0, "pages",
                                      rng.uniform(0.1, 0.75)))  # fmt: skip
    return scenarios


def draw_commit_kills(args: argparse.Namespace, rng: random.Random, first: int) -> list[Scenario]:
    """``--commit-kills`` scenarios: the CLI (threads) SIGKILLed inside its commit, before
    the 2nd or 3rd rename of a file to its final name (``users``: the second table, or the
    manifest, which is renamed last)."""
    return [
        Scenario(
            n,
            "commit",
            rng.choice(args.page_sizes),
            round(rng.uniform(*args.latency), 3),
            "local",
            trigger="rename",
            trigger_at=rng.choice([2, 3]),
        )
        for n in range(first, first + args.commit_kills)
    ]


def draw_phases(rng: random.Random, pages: int, timeout: float) -> list[Phase]:
    """3 to 6 stretches of API faults with fault-free gaps, timed from the run's first request
    (its count). One run in three starts with an outage of one page for 15 to 20 s, longer
    than the run's request and task retries last: that run fails, and its rerun must not."""
    phases = []
    at = rng.uniform(0.0, 1.0)
    if rng.random() < 1 / 3:
        mode = rng.choice(["reset", "5xx-rate:1"])
        phases.append(Phase(0.0, mode, round(rng.uniform(15.0, 20.0), 2), rng.randint(1, pages)))
        at += phases[0].seconds
    for _ in range(rng.randint(3, 6)):
        what = rng.choice(["5xx-rate", "5xx", "reset-page", "reset", "slow-page", "slow", "429"])
        page = rng.randint(1, pages) if what.endswith("-page") else None
        if what == "5xx-rate":
            mode, seconds = f"5xx-rate:{rng.uniform(0.2, 0.6):.2f}", rng.uniform(0.5, 2.5)
        elif what == "5xx":
            mode, seconds = f"5xx:{rng.randint(1, 3)}", rng.uniform(0.5, 2.0)
        elif what == "reset-page":
            mode, seconds = "reset", rng.uniform(0.5, 3.0)
        elif what == "reset":
            mode, seconds = "reset", rng.uniform(0.1, 0.6)
        elif what == "slow-page":  # slower than the request timeout half of the time
            mode, seconds = f"slow:{rng.uniform(0.5, 1.5) * timeout:.1f}", rng.uniform(1.0, 4.0)
        elif what == "slow":
            mode, seconds = f"slow:{rng.uniform(0.1, 0.5):.2f}", rng.uniform(0.5, 2.0)
        else:
            mode, seconds = "429:1", rng.uniform(0.5, 1.5)
        phases.append(Phase(round(at, 2), mode, round(seconds, 2), page))
        at += seconds + rng.uniform(0.0, 1.0)
    return phases


# --------------------------------------------------------------------------- what a run left


@dataclass
class Reference:
    """The fault-free output: per table its rows, sha256 and ids; per resource its records."""

    files: dict[str, bytes]  # name -> bytes (copied into every scenario's output dir)
    tables: dict[str, dict[str, Any]]  # table -> {"rows", "sha256"}
    ids: dict[str, set[int]]
    records: dict[str, int]  # resource -> records
    seconds: float


def first_column_ids(path: Path) -> list[int]:
    """The ids of a CSV table (its first column), header skipped."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        next(rows, None)
        return [int(row[0]) for row in rows if row]


def final_names(out: Path) -> set[str]:
    """Files under final names (temporaries and the lock file start with a dot)."""
    return {p.name for p in out.iterdir() if not p.name.startswith(".")} if out.is_dir() else set()


def temps(folder: Path) -> list[str]:
    """Temporary files (``.*.tmp``) anywhere under ``folder``."""
    return (
        sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp"))
        if folder.exists()
        else []
    )


@dataclass
class Audit:
    """What one look at an output dir found (new commits checked against the reference)."""

    commits: list[str] = field(default_factory=list)  # manifest names, good or not
    orphans: list[str] = field(default_factory=list)  # final names no manifest names
    broken: list[str] = field(default_factory=list)  # named by a manifest, missing or altered
    mismatches: list[str] = field(default_factory=list)  # rows or sha256 unlike the reference
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    earlier_changed: list[str] = field(default_factory=list)


def audit(out: Path, reference: Reference, seen: frozenset[str] = frozenset()) -> Audit:
    """Check every file under a final name in ``out`` that is not the reference's or ``seen``."""
    found = Audit()
    for name, data in reference.files.items():
        path = out / name
        if not path.exists() or path.read_bytes() != data:
            found.earlier_changed.append(name)
    new = final_names(out) - set(reference.files) - set(seen)
    claimed: set[str] = set()
    for name in sorted(n for n in new if n.startswith("manifest_")):
        found.commits.append(name)
        try:
            manifest = json.loads((out / name).read_text())
            tables = manifest["tables"]
        except (ValueError, KeyError) as exc:
            found.broken.append(f"{name}: {exc}")
            continue
        for table, info in tables.items():
            claimed.add(info["file"])
            path = out / info["file"]
            if not path.exists() or bench.sha256(path) != info["sha256"]:
                found.broken.append(info["file"])
                continue
            expected = reference.tables.get(table)
            if expected is None:
                continue
            if (info["rows"], info["sha256"]) != (expected["rows"], expected["sha256"]):
                found.mismatches.append(info["file"])
            ids = first_column_ids(path)
            distinct = set(ids)
            found.lost += len(reference.ids[table] - distinct)
            found.duplicated += len(ids) - len(distinct)
            found.unexpected += len(distinct - reference.ids[table])
        missing = set(reference.tables) - set(tables)
        found.mismatches += [f"{name}: no {t}" for t in sorted(missing)]
    found.orphans = sorted(n for n in new if not n.startswith("manifest_") and n not in claimed)
    return found


def checkpointed(cache: Path, resources: list[str]) -> set[tuple[str, int]]:
    """Pages with a checkpoint marker in ``cache`` (every data version)."""
    done = set()
    for resource in resources:
        for folder in cache.glob(f"pages/*/{resource}"):
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(folder):
                    match = MARKER.match(entry.name)
                    if match:
                        done.add((resource, int(match.group(1))))
    return done


# --------------------------------------------------------------------------- the API server


def stats(url: str) -> dict[str, Any]:
    return requests.get(f"{url}/__control/stats", timeout=10).json()


def set_fault(url: str, mode: str, page: int | None = None) -> None:
    body = {"mode": mode, "page": page}
    requests.post(f"{url}/__control/fault", json=body, timeout=10).raise_for_status()


def page_requests(snapshot: dict[str, Any]) -> Pages:
    return Counter(
        {(res, int(p)): n for res, pages in snapshot["pages"].items() for p, n in pages.items()}
    )


def without_counts(window: Pages, resources: list[str]) -> Pages:
    """Page requests of one invocation, less its one-record count request per resource.

    The count (``?_page=1&_limit=1``) is made once by every invocation that made any request,
    before any page (faulted count attempts stay in: they are retries, like a page's).
    """
    pages = Counter(window)
    if sum(window.values()):
        for resource in resources:
            if pages[(resource, 1)]:
                pages[(resource, 1)] -= 1
    return +pages


# --------------------------------------------------------------------------- processes


class Group:
    """A command in a process group of its own, its output in a log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.cmd, self.log = cmd, log
        self.started = time.monotonic()
        with log.open("wb") as handle:
            self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                         stdout=handle, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip

    def kill(self) -> bool:
        """SIGKILL the whole group; True when the leader was still running."""
        alive = self.proc.poll() is None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return alive

    def wait(self, timeout: float) -> int:
        """Wait for the leader (killing the group on timeout); then clear what it left."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = -9
        bench.stop_group(self.proc, grace=5)
        return code

    def last_line(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1][:160] if lines else ""


class Cluster:
    """A ``dask scheduler`` and two ``dask worker`` processes (with nannies) on 127.0.0.1."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env = work, {**env, "DASK_DISTRIBUTED__WORKER__DAEMON": "false"}
        self.work.mkdir(parents=True, exist_ok=True)
        self.scheduler_file = work / "scheduler.json"
        self.workers: list[Group] = []
        self.started = 0
        self.scheduler = Group(
            [bench.tool("dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
             "--scheduler-file", str(self.scheduler_file)],
            self.env, work / "scheduler.log",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.scheduler_file.exists():
            if time.monotonic() > deadline or self.scheduler.proc.poll() is not None:
                raise RuntimeError(f"dask scheduler did not start: {self.scheduler.last_line()}")
            time.sleep(0.2)
        from distributed import Client

        self.client = Client(scheduler_file=str(self.scheduler_file), timeout=60)
        self.address = self.client.scheduler.address
        for _ in range(2):
            self.add_worker()
        self.wait_for(2)

    def add_worker(self) -> None:
        self.started += 1
        self.workers.append(
            Group(
                [
                    bench.tool("dask"),
                    "worker",
                    "--scheduler-file",
                    str(self.scheduler_file),
                    "--nthreads",
                    "2",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--dashboard-address",
                    "127.0.0.1:0",
                    "--name",
                    f"chaos-worker-{self.started}",
                ],
                self.env,
                self.work / f"worker-{self.started}.log",
            )
        )

    def wait_for(self, count: int, gone: str | None = None, timeout: float = 120) -> None:
        """Until the scheduler knows ``count`` workers, none of them ``gone``."""
        deadline = time.monotonic() + timeout
        while True:
            known = set(self.client.scheduler_info()["workers"])
            if len(known) == count and gone not in known:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"dask workers: {sorted(known)}, wanted {count}")
            time.sleep(0.2)

    def groups_by_address(self) -> dict[str, Group]:
        """Each live worker's address and the process group (nanny + worker) it runs in."""
        pids = self.client.run(os.getpid)
        found = {}
        for address, pid in pids.items():
            with contextlib.suppress(ProcessLookupError):
                group = os.getpgid(pid)
                for candidate in self.workers:
                    if candidate.proc.pid == group:
                        found[address] = candidate
        return found

    def replace(self, victim: Group, address: str) -> None:
        """Start a worker in place of ``victim`` (killed) and wait until it is known."""
        self.workers.remove(victim)
        self.add_worker()
        self.wait_for(2, gone=address)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)
        for group in [*self.workers, self.scheduler]:
            bench.stop_group(group.proc, grace=10)


# --------------------------------------------------------------------------- one scenario


@dataclass
class Result:
    """What happened in one scenario, and what the checks found."""

    scenario: Scenario
    first_exit: int = 0
    first_s: float = 0.0
    killed: bool = False  # a kill landed on a live process
    kill_phase: str = ""
    kill_s: float = 0.0  # when the kill landed, s after the start
    rerun_exit: int = 0
    rerun_s: float = 0.0
    planned: int = 0
    requests: int = 0  # page requests, both invocations (count requests taken off)
    repeats: int = 0  # requests beyond the first, per page
    twice: int = 0  # pages requested more than once
    refetched: int = 0  # pages requested both before and after the break
    at_break: int = 0  # pages checkpointed at the break
    checkpointed_refetched: int = 0  # of those, requested again after the break
    faults: int = 0
    first_commits: int = 0  # outputs the faulted run committed
    reused_first: int = 0  # manifest pages_reused of the faulted run (worker: the lost task's)
    rerun_fetched: int | None = None  # manifest pages_fetched of the rerun
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    mismatches: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    earlier_changed: list[str] = field(default_factory=list)
    temps_out: list[str] = field(default_factory=list)
    temps_cache: list[str] = field(default_factory=list)
    error: str = ""

    def problems(self) -> list[str]:
        """The checks this scenario failed, in words (empty: all passed)."""
        found = [
            (self.rerun_exit != 0, f"rerun exit {self.rerun_exit}"),
            (self.scenario.kind == "worker" and self.first_exit != 0, "run failed"),
            (self.lost, f"{self.lost} rows lost"),
            (self.duplicated, f"{self.duplicated} rows duplicated"),
            (self.unexpected, f"{self.unexpected} unexpected ids"),
            (self.checkpointed_refetched, f"{self.checkpointed_refetched} checkpointed re-fetched"),
            (self.mismatches, f"unlike the reference: {', '.join(self.mismatches)}"),
            (self.broken, f"unlike their manifest: {', '.join(self.broken)}"),
            (self.orphans, f"no manifest names {', '.join(self.orphans)}"),
            (self.earlier_changed, f"earlier output changed: {', '.join(self.earlier_changed)}"),
            (self.temps_out, f"temp files in the output dir: {', '.join(self.temps_out)}"),
            (self.temps_cache, f"{len(self.temps_cache)} temp files in the cache"),
        ]
        return [text for failed, text in found if failed]

    @property
    def ok(self) -> bool:
        return not self.problems()

    @property
    def survived(self) -> bool:
        return self.killed and self.ok


class Chaos:
    """The harness: reference runs, then every scenario, then the report."""

    def __init__(self, args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
        self.args, self.work, self.env = args, work, env
        self.resources = args.resources.split(",")
        self.cluster: Cluster | None = None
        self.reference: Reference | None = None

    # -- commands

    def command(self, s: Scenario, url: str, out: Path, cache: Path) -> list[str]:
        cmd = [PYTHON, "-m", "placeholder_etl", "run", "--api-url", url,
               "--output-dir", str(out), "--cache-dir", str(cache),
               "--resources", self.args.resources, "--page-size", str(s.page_size),
               "--in-flight", str(s.in_flight),
               "--request-timeout", f"{s.request_timeout:g}"]  # fmt: skip
        if s.runner == "cluster":
            assert self.cluster is not None
            return [*cmd, "--runner", "dask", "--dask-address", self.cluster.address]
        return [*cmd, *KILL_RUNNERS[s.runner]]

    def invoke(self, cmd: list[str], log: Path) -> tuple[int, float, Group]:
        group = Group(cmd, self.env, log)
        code = group.wait(self.args.timeout)
        return code, time.monotonic() - group.started, group

    @contextlib.contextmanager
    def api(self, latency: float) -> Iterator[str]:
        from placeholder_api.server import bundled_server

        with bundled_server(
            users=self.args.users, seed=self.args.data_seed, latency=latency
        ) as url:
            yield url

    # -- reference

    def make_reference(self, with_cluster: bool) -> Reference:
        """Fault-free runs: threads twice (the first fills the bytecode cache; the second
        times a run), then, with ``with_cluster``, on the Dask cluster (started here, after
        them). Their tables must be identical."""
        latency = round(sum(self.args.latency) / 2, 3)
        runs = [Scenario(n, "reference", self.args.page_sizes[0], latency, "local") for n in (1, 2)]
        if with_cluster:
            runs.append(Scenario(3, "reference", self.args.page_sizes[-1], latency, "cluster"))
        found: list[tuple[dict[str, Any], Path, float]] = []
        for s in runs:
            if s.runner == "cluster":
                self.cluster = Cluster(self.work / "dask", self.env)
            folder = self.work / f"reference-{s.number}-{s.runner}"
            out = folder / "out"
            folder.mkdir(parents=True)
            with self.api(s.latency) as url:
                code, seconds, group = self.invoke(
                    self.command(s, url, out, folder / "cache"), folder / "run.log"
                )
            if code != 0:
                raise RuntimeError(f"reference run ({s.runner}) failed: {group.last_line()}")
            (manifest_path,) = out.glob("manifest_*.json")
            found.append((json.loads(manifest_path.read_text()), out, seconds))
            print(
                f"reference {s.number}/{len(runs)} ({s.runner}, page size {s.page_size}): "
                f"{seconds:.1f} s",
                flush=True,
            )
        manifest, out, seconds = found[0]
        tables = {
            t: {"rows": i["rows"], "sha256": i["sha256"]} for t, i in manifest["tables"].items()
        }
        for other, _, _ in found[1:]:
            theirs = {
                t: {"rows": i["rows"], "sha256": i["sha256"]} for t, i in other["tables"].items()
            }
            if theirs != tables:
                raise RuntimeError(f"reference runs disagree: {tables} != {theirs}")
        ids = {t: set(first_column_ids(out / i["file"])) for t, i in manifest["tables"].items()}
        for table, info in tables.items():
            if len(ids[table]) != info["rows"]:
                raise RuntimeError(f"reference {table}: {len(ids[table])} ids, {info['rows']} rows")
        return Reference(
            files={p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")},
            tables=tables,
            ids=ids,
            records=manifest["contract"]["records_checked"],
            seconds=found[1][2],
        )

    # -- scenarios

    def run(self, s: Scenario) -> Result:
        assert self.reference is not None
        folder = self.work / f"s{s.number:02d}-{s.kind}"
        out, cache = folder / "out", folder / "cache"
        out.mkdir(parents=True)
        for name, data in self.reference.files.items():  # the earlier output
            (out / name).write_bytes(data)
        result = Result(s)
        result.planned = sum(-(-n // s.page_size) for n in self.reference.records.values())
        with self.api(s.latency) as url:
            cmd = self.command(s, url, out, cache)
            faulted = cmd
            if s.trigger == "rename":
                faulted = [PYTHON, __file__, RENAME_KILL, f"{s.trigger_at:.0f}", *cmd[3:]]
            group = Group(faulted, self.env, folder / "run.log")
            kill_stats: dict[str, Any] | None = None  # at a worker's kill (the run goes on)
            at_kill: set[tuple[str, int]] = set()
            victim = None
            if s.kind in KILLS:
                at_kill = self.kill_cli(s, result, group, out, cache)
            elif s.kind == "api":
                self.flaky_api(s, group, url)
            else:
                kill_stats, at_kill, victim = self.kill_worker(s, result, group, url, cache)
            result.first_exit = group.wait(self.args.timeout)
            result.first_s = time.monotonic() - group.started
            if victim is not None and self.cluster is not None:
                self.cluster.replace(*victim)
            if result.first_exit != 0 and not result.killed:
                result.error = group.last_line()
            first_stats = stats(url)
            if s.kind == "api":
                set_fault(url, "none")
                at_kill = checkpointed(cache, self.resources)
            after_first = audit(out, self.reference)
            seen = frozenset(after_first.commits) | {
                f for m in after_first.commits for f in self.manifest_files(out / m)
            }
            result.first_commits = len(after_first.commits)
            result.reused_first = self.manifest_value(out, after_first.commits, "pages_reused")

            code, seconds, rerun = self.invoke(cmd, folder / "rerun.log")
            result.rerun_exit, result.rerun_s = code, seconds
            if code != 0:
                result.error = (result.error + " | rerun: " + rerun.last_line()).strip(" |")
            end_stats = stats(url)
        after_rerun = audit(out, self.reference, seen)
        # a kill between the commit's renames may leave a table no manifest names (a reader
        # trusts a stamp only once its manifest exists); the rerun must have removed it
        result.orphans = list(after_rerun.orphans)
        result.rerun_fetched = self.manifest_value(out, after_rerun.commits, "pages_fetched", None)
        self.count_pages(result, first_stats, end_stats, kill_stats, at_kill)
        for found in (after_first, after_rerun):
            result.lost += found.lost
            result.duplicated += found.duplicated
            result.unexpected += found.unexpected
            result.mismatches += found.mismatches
            result.broken += found.broken
            result.earlier_changed += [
                name for name in found.earlier_changed if name not in result.earlier_changed
            ]
        if not after_rerun.commits or code != 0:  # no final output: every row is lost
            result.lost += sum(len(ids) for ids in self.reference.ids.values())
        result.temps_out, result.temps_cache = temps(out), temps(cache)
        result.faults = end_stats["faults_injected"]
        if result.ok and not self.args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        return result

    @staticmethod
    def manifest_files(path: Path) -> list[str]:
        with contextlib.suppress(ValueError, KeyError, OSError):
            return [i["file"] for i in json.loads(path.read_text())["tables"].values()]
        return []

    @staticmethod
    def manifest_value(out: Path, names: list[str], key: str, default: Any = 0) -> Any:
        for name in names:
            with contextlib.suppress(ValueError, KeyError, OSError):
                return json.loads((out / name).read_text())[key]
        return default

    def count_pages(
        self,
        result: Result,
        first: dict[str, Any],
        end: dict[str, Any],
        at_kill_stats: dict[str, Any] | None,
        at_break: set[tuple[str, int]],
    ) -> None:
        """Page requests of both invocations, split at the break (the kill or the run's end)."""
        run = without_counts(page_requests(first), self.resources)
        rerun = without_counts(page_requests(end) - page_requests(first), self.resources)
        if at_kill_stats is not None:  # a worker killed mid-run: the run goes on after it
            before = without_counts(page_requests(at_kill_stats), self.resources)
            after = (run - before) + rerun
        else:
            before, after = run, rerun
        total = run + rerun
        result.requests = sum(total.values())
        result.repeats = sum(n - 1 for n in total.values() if n > 1)
        result.twice = sum(1 for n in total.values() if n > 1)
        result.refetched = sum(1 for page in after if before[page])
        result.at_break = len(at_break)
        result.checkpointed_refetched = sum(1 for page in after if page in at_break)

    def kill_cli(
        self, s: Scenario, result: Result, group: Group, out: Path, cache: Path
    ) -> set[tuple[str, int]]:
        """SIGKILL the run's process group when its trigger fires; the pages done by then."""
        assert self.reference is not None
        slower = {"local": 1.0, "dask": 1.1, "dask-processes": 1.4}[s.runner]
        deadline = s.trigger_at * self.reference.seconds * slower
        wanted = max(1, round(s.trigger_at * result.planned))
        seen = final_names(out)
        if s.trigger == "rename":  # the run kills itself (see cli_killed_at_rename)
            result.killed = group.proc.wait(timeout=self.args.timeout) == -signal.SIGKILL
            result.kill_s = time.monotonic() - group.started
            result.kill_phase = (
                f"commit, rename {s.trigger_at:.0f}" if result.killed else "finished"
            )
            return checkpointed(cache, self.resources)
        while group.proc.poll() is None:
            elapsed = time.monotonic() - group.started
            if s.trigger == "time" and elapsed >= deadline:
                break
            if s.trigger == "pages" and len(checkpointed(cache, self.resources)) >= wanted:
                break
            if s.trigger == "staging" and temps(out):
                time.sleep(s.trigger_at)
                break
            if elapsed > self.args.timeout:
                break
            time.sleep(0.005)
        done = len(checkpointed(cache, self.resources))
        staged, committed = bool(temps(out)), bool(final_names(out) - seen)
        result.kill_s = time.monotonic() - group.started
        result.killed = group.kill()
        if not result.killed:
            result.kill_phase = "finished first"
        elif committed:
            result.kill_phase = "after commit"
        elif staged or done >= result.planned:
            result.kill_phase = "load"
        elif done:
            result.kill_phase = "extract"
        else:
            result.kill_phase = "start-up"
        return checkpointed(cache, self.resources)

    def flaky_api(self, s: Scenario, group: Group, url: str) -> None:
        """Switch the API's faults on and off on schedule, from the run's first request (its
        count) until the run ends."""
        while not stats(url)["requests"]:
            if group.proc.poll() is not None:
                return
            time.sleep(0.01)
        first_request = time.monotonic()

        def wait_until(at: float) -> bool:
            while time.monotonic() - first_request < at:
                if group.proc.poll() is not None:
                    return False
                time.sleep(0.01)
            return True

        for phase in s.phases:
            if not wait_until(phase.at):
                break
            set_fault(url, phase.mode, phase.page)
            ended = wait_until(phase.at + phase.seconds)
            set_fault(url, "none")
            if not ended:
                break

    def kill_worker(
        self, s: Scenario, result: Result, group: Group, url: str, cache: Path
    ) -> tuple[dict[str, Any] | None, set[tuple[str, int]], tuple[Group, str] | None]:
        """SIGKILL a worker holding a task once the share of pages is checkpointed.

        Returns:
            The API's stats and the checkpointed pages right after the kill, and the killed
            worker's group and address (None, the empty set and None when the run ended first).
        """
        cluster = self.cluster
        assert cluster is not None
        groups = cluster.groups_by_address()
        wanted = max(1, round(s.trigger_at * result.planned))
        rng = random.Random(s.number)
        while group.proc.poll() is None:
            if len(checkpointed(cache, self.resources)) >= wanted:
                busy = [
                    a for a, keys in cluster.client.processing().items() if keys and a in groups
                ]
                if busy:
                    address = rng.choice(sorted(busy))
                    victim = groups[address]
                    done = len(checkpointed(cache, self.resources))
                    result.killed = victim.kill()
                    pages = checkpointed(cache, self.resources)  # before the stats: see count_pages
                    at_kill = stats(url)
                    result.kill_phase = f"{done}/{result.planned} pages"
                    return at_kill, pages, (victim, address)
            time.sleep(0.01)
        result.kill_phase = "finished first"
        return None, set(), None


# --------------------------------------------------------------------------- report


def kind_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    groups = [(k, [r for r in results if r.scenario.kind == k]) for k in KINDS]
    groups.append(("commit", [r for r in results if r.scenario.kind == "commit"]))
    for kind, mine in [*groups, ("**all**", results)]:
        if not mine:
            continue
        unkilled = [r for r in mine if r.scenario.kind not in KILLS]
        first_ok = sum(r.first_exit == 0 for r in unkilled)
        rows.append([
            kind, str(len(mine)),
            f"{first_ok}/{len(unkilled)}" if unkilled else "-",
            f"{sum(r.rerun_exit == 0 for r in mine)}/{len(mine)}",
            f"{sum(r.survived for r in mine)}/{sum(r.killed for r in mine)}",
            str(sum(r.faults for r in mine)),
            str(sum(r.planned for r in mine)), str(sum(r.requests for r in mine)),
            str(sum(r.repeats for r in mine)), str(sum(r.twice for r in mine)),
            str(sum(r.refetched for r in mine)), str(sum(r.checkpointed_refetched for r in mine)),
            str(sum(r.lost for r in mine)), str(sum(r.duplicated for r in mine)),
            str(sum(len(r.temps_out) + len(r.temps_cache) for r in mine)),
            str(sum(len(r.orphans) for r in mine)),
            str(sum(len(r.earlier_changed) for r in mine)),
            str(sum(len(r.mismatches) + len(r.broken) + bool(r.unexpected) for r in mine)),
        ])  # fmt: skip
    return rows


KIND_HEADER = [
    "kind", "runs", "faulted run ok", "rerun ok", "kills survived", "faults injected",
    "pages planned", "page requests", "repeat requests", "pages fetched twice",
    "re-fetched after the break", "checkpointed pages re-fetched", "rows lost",
    "rows duplicated", "temp files left", "orphan final files", "earlier output changed",
    "tables unlike the reference",
]  # fmt: skip


def run_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        s = r.scenario
        first = (
            "killed"
            if r.killed and s.kind in KILLS
            else ("ok" if r.first_exit == 0 else f"exit {r.first_exit}")
        )
        if s.kind == "worker" and r.killed:
            first = f"{first} (worker killed at {r.kill_phase})"
        elif s.kind in KILLS and r.killed:
            first = f"{first} at {r.kill_s:.1f}s ({r.kill_phase})"
        elif s.kind in KILLS:
            first = f"{first} ({r.kill_phase})"
        checks = "yes" if r.ok else "**NO**: " + "; ".join(r.problems())
        rows.append([
            str(s.number), s.kind, s.runner, str(s.page_size), f"{s.latency * 1000:.0f}",
            str(s.in_flight), s.describe(), first, f"{r.first_s:.1f}",
            "ok" if r.rerun_exit == 0 else f"exit {r.rerun_exit}", f"{r.rerun_s:.1f}",
            str(r.faults), f"{r.requests}/{r.planned}", str(r.repeats),
            str(r.refetched), f"{r.checkpointed_refetched}/{r.at_break}", str(r.reused_first),
            "-" if r.rerun_fetched is None else str(r.rerun_fetched),
            str(r.lost), str(r.duplicated), checks, r.error.replace("|", "/")[:120],
        ])  # fmt: skip
    return rows


RUN_HEADER = [
    "#", "kind", "runner", "page size", "latency ms", "in flight", "fault", "faulted run",
    "s", "rerun", "s", "faults", "requests / planned", "repeats", "re-fetched after break",
    "checkpointed re-fetched / at break", "pages reused by the faulted run",
    "rerun pages fetched", "lost", "dup", "checks", "error (last line)",
]  # fmt: skip


INTRO = (
    "`make chaos` (`benchmarks/chaos.py`, issue #14): runs broken on purpose (the CLI's process "
    "group SIGKILLed, the API failing while the run goes, a Dask worker lost), each followed by "
    "a fault-free rerun into the same output and cache dirs, every output compared with a "
    "fault-free run."
)
NOTES = (
    (
        "- *kills survived*: kills that landed on a live process (the CLI's group, or a Dask "
        "worker) after which every check passed. *faulted run ok*: exit 0 despite the API's "
        "faults (`api`) or the lost worker (`worker`, where it is required)."
    ),
    (
        "- *page requests*: requests for pages seen by the API server (`/__control/stats`, per "
        "page) in the faulted run and its rerun, each invocation's one-record count request "
        "taken off page 1; *repeat requests*: requests beyond the first per page (retries of "
        "injected 5xx/resets/timeouts included: the server counts them too); *pages fetched "
        "twice*: pages requested more than once."
    ),
    (
        "- *re-fetched after the break*: pages requested both before and after the break (the "
        "CLI kill, the worker kill, or the end of the faulted run for `api`): pages in flight "
        "when the process died, or not yet checkpointed. *checkpointed pages re-fetched* must be "
        "0: pages with a checkpoint marker at the break that were requested again."
    ),
    (
        "- *rows lost*: reference ids missing from a committed table (every table of every "
        "output the faulted run or the rerun committed; all rows when the rerun committed "
        "nothing); *rows duplicated*: ids seen twice. *temp files left*: `.*.tmp` in the output "
        "dir and the cache after the rerun. *orphan final files*: files under a final name that "
        "no manifest names (a killed run's partial commit). *earlier output changed*: the "
        "reference files, copied into the output dir before the faulted run, not byte for byte "
        "the same afterwards. *tables unlike the reference*: rows or sha256 differing from the "
        "fault-free run's, or a file differing from its manifest."
    ),
)


def findings(results: list[Result], moments: Counter[str]) -> list[str]:
    """What the table does not show: when the kills landed, what the reruns fetched."""
    lines = []
    if moments:
        when = ", ".join(f"{n} {m}" for m, n in moments.most_common())
        lines.append(f"- `kill`: where the kills landed: {when}.")
    failed = [r for r in results if r.scenario.kind == "api" and r.first_exit != 0]
    if failed:
        fetched = sum(r.rerun_fetched or 0 for r in failed)
        written = sum(r.first_commits for r in failed)
        wrote = "none of them writing anything" if not written else f"{written} committing"
        lines.append(
            f"- `api`: {len(failed)} runs failed after their retries (a page out for longer than "
            f"they last), {wrote}; their reruns fetched "
            f"{fetched} of {sum(r.planned for r in failed)} pages (the rest were checkpointed)."
        )
    workers = [r for r in results if r.scenario.kind == "worker" and r.killed]
    if workers:
        lines.append(
            f"- `worker`: the tasks of the {len(workers)} killed workers ran again on the other "
            f"worker and reused {sum(r.reused_first for r in workers)} pages the killed workers "
            f"had checkpointed (manifest `pages_reused`); "
            f"{sum(r.refetched for r in workers)} pages that were in flight were fetched again."
        )
    return lines


def write_report(
    path: Path,
    args: argparse.Namespace,
    results: list[Result],
    reference: Reference,
    seconds: float,
) -> str:
    kills = sum(r.killed for r in results)
    failures = [r for r in results if not r.ok]
    kinds = ", ".join(f"{n} {k}" for k, n in Counter(r.scenario.kind for r in results).items())
    headline = (
        f"{len(results)} faulted runs ({kinds}), "
        f"each followed by a rerun: {sum(r.survived for r in results)}/{kills} kills survived, "
        f"{sum(r.lost for r in results)} rows lost, {sum(r.duplicated for r in results)} rows "
        f"duplicated, {sum(r.checkpointed_refetched for r in results)} checkpointed pages "
        f"fetched again, {len(failures)} runs failing a check; {seconds / 60:.1f} min in all"
    )  # fmt: skip
    info = bench.machine()
    moments = Counter(r.kill_phase for r in results if r.scenario.kind in KILLS)
    tables = ", ".join(
        f"`{t}` {i['rows']:,} rows, sha256 `{i['sha256'][:12]}…`"
        for t, i in reference.tables.items()
    )
    lines = [
        "# Chaos test",
        "",
        INTRO,
        "",
        (
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {info['CPU']}, {info['cores']} cores, "
            f"{info['RAM']}; {info['OS']}; Python {info['Python']}, prefect {info['prefect']}, "
            f"dask/distributed {info['dask / distributed']}; {info['placeholder-etl']}."
        ),
        "",
        (
            f"`benchmarks/chaos.py {' '.join(sys.argv[1:])}`: seed {args.seed}, "
            f"{args.users:,} users (data seed {args.data_seed}), resources `{args.resources}`, "
            f"page sizes {', '.join(map(str, args.page_sizes))}, API latency "
            f"{args.latency[0] * 1000:.0f} to {args.latency[1] * 1000:.0f} ms, a Prefect server "
            f"started by the harness. Reference (fault-free; {reference.seconds:.1f} s with "
            f"threads): {tables}."
        ),
        "",
        f"**{headline}.**",
        "",
        bench.md_table(KIND_HEADER, kind_rows(results)),
        "",
        *NOTES,
        "",
        *findings(results, moments),
        "",
        "## Runs",
        "",
        bench.md_table(RUN_HEADER, run_rows(results)),
        "",
    ]
    path.write_text("\n".join(lines))
    return headline


# --------------------------------------------------------------------------- main

RENAME_KILL = "--cli-killed-at-rename"


def cli_killed_at_rename(nth: int, argv: list[str]) -> None:
    """Run ``placeholder-etl ARGV`` (threads), SIGKILLing its process group just before the
    ``nth`` rename of a file to a final name in its output dir: inside the commit, which
    renames the tables, then the manifest."""
    import pathlib
    import runpy

    out = Path(argv[argv.index("--output-dir") + 1]).resolve()
    original = pathlib.Path.replace
    renames = 0

    def replace(self: Path, target: Any) -> Path:
        nonlocal renames
        target = Path(target)
        if target.parent.resolve() == out and not target.name.startswith("."):
            renames += 1
            if renames == nth:
                os.killpg(0, signal.SIGKILL)
        return original(self, target)

    pathlib.Path.replace = replace  # type: ignore[method-assign]
    sys.argv = ["placeholder-etl", *argv]
    runpy.run_module("placeholder_etl", run_name="__main__", alter_sys=True)


def progress_line(r: Result) -> str:
    s = r.scenario
    first = f"killed: {r.kill_phase}" if s.kind in KILLS else f"exit {r.first_exit}"
    verdict = "ok" if r.ok else "FAILED: " + "; ".join(r.problems())
    return (
        f"{s.number:3d} {s.kind:6s} {s.runner:14s} {s.describe()[:60]:60s} {first}; "
        f"rerun exit {r.rerun_exit}; lost {r.lost}, duplicated {r.duplicated}, re-fetched "
        f"{r.refetched}, checkpointed re-fetched {r.checkpointed_refetched}/{r.at_break}; {verdict}"
    )


def environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in bench.SCRUBBED_ENV}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # see benchmarks/README.md, "Bytecode"
    (work / "tmp").mkdir()
    env.update({
        "PYTHONPYCACHEPREFIX": str(work / "pycache"),
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "TMPDIR": str(work / "tmp"),  # dask-scratch-space and the like of killed runs
    })  # fmt: skip
    return env


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=36, help="faulted runs (36)")
    parser.add_argument("--seed", type=int, default=14, help="seed of the scenarios (14)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="kill,api,worker (all)")
    parser.add_argument("--users", type=int, default=30_000, help="users served (30,000)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the API's data (0)")
    parser.add_argument("--resources", default="users", help="the runs' --resources (users)")
    parser.add_argument("--page-sizes", default="100,150,200,250", help="drawn per run")
    parser.add_argument("--latency", default="0.005,0.03", help="API latency range, s")
    parser.add_argument(
        "--commit-kills",
        type=int,
        default=0,
        help="extra kill runs SIGKILLed inside the commit, between two renames (0)",
    )
    parser.add_argument("--timeout", type=float, default=300, help="per invocation, s (300)")
    parser.add_argument("--report", type=Path, default=HERE / "CHAOS.md")
    parser.add_argument("--keep", action="store_true", help="keep every run's folders")
    parser.add_argument("--work", type=Path, help="work folder (default: a temp dir, removed)")
    args = parser.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    if not set(args.kinds) <= set(KINDS):
        parser.error(f"--kinds: choose from {', '.join(KINDS)}")
    args.page_sizes = [int(p) for p in args.page_sizes.split(",")]
    low, high = (float(x) for x in args.latency.split(","))
    args.latency = (low, high)
    return args


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == RENAME_KILL:
        cli_killed_at_rename(int(sys.argv[2]), sys.argv[3:])
        return 0
    args = parse_args()
    scenarios = draw_scenarios(args, random.Random(args.seed))
    scenarios += draw_commit_kills(args, random.Random(args.seed + 1), len(scenarios) + 1)
    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    env = environment(work)
    results: list[Result] = []
    harness: Chaos | None = None
    try:
        with bench.prefect_server(work / "prefect-home", env) as (api_url, _):
            env["PREFECT_API_URL"] = api_url
            harness = Chaos(args, work, env)
            with_cluster = any(s.kind == "worker" for s in scenarios)
            harness.reference = harness.make_reference(with_cluster)
            for s in scenarios:
                result = harness.run(s)
                results.append(result)
                print(progress_line(result), flush=True)
    finally:
        if harness is not None and harness.cluster is not None:
            harness.cluster.close()
        if not args.keep and args.work is None and (not results or all(r.ok for r in results)):
            shutil.rmtree(work, ignore_errors=True)
        elif results:
            print(f"kept {work}", file=sys.stderr)
    assert harness is not None
    assert harness.reference is not None
    headline = write_report(
        args.report, args, results, harness.reference, time.monotonic() - started
    )
    print(headline)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
