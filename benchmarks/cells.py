"""The harness's cells beyond the matrix (issues 23 and 24), run by ``bench.py``.

* :func:`first_command`: ``placeholder-etl run`` as a new user types it, with no Prefect
  server anywhere (no ``PREFECT_API_URL``, a new ``PREFECT_HOME``, nothing answering where
  Prefect looks for a local server): the CLI starts a temporary one, and the whole command is
  timed (``--first-command``);
* :func:`scaling`: the flow at a million users on 1, 2, 4, 8 Dask worker processes, each from a
  cold cache: the curve, with the machine's core count (``--scaling``);
* :func:`expired_rerun`: a cold run, then the same command "the next day" (its page
  checkpoints aged past the cache lifetime, its Prefect task-cache records gone as expired
  ones are), against the unchanged API: wall time and the bytes the API sent; and dlt's
  rerun beside it (``--expired-rerun``).

Every flow run's output is checked like the matrix's (rows, byte-identical users CSV,
``verify_output`` against its manifest; see ``bench.measure_run``). Each cell returns a result
that renders a terminal table and a markdown section. ``bench.py`` imports this module in
``main`` (it is ``bench`` to this module, also when run as a script).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import statistics
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import bench
from bench import Context, Run

# --------------------------------------------------------------------------- shared


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ok(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.ok]


def _checks(runs: list[Run]) -> str:
    bad = [r for r in runs if not r.ok]
    if not bad:
        return "ok"
    return "FAILED: " + "; ".join(dict.fromkeys(p for r in bad for p in r.problems))


def _same_csv(run: Run, earlier: Iterable[Run]) -> None:
    """``run``'s users CSV byte-identical to the first of ``earlier`` that has one."""
    bench.check_same_csv(run, next((r.sha256 for r in earlier if r.sha256), None))


def _fresh_dir(ctx: Context, prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=ctx.work))


def _run(
    ctx: Context,
    kind: str,
    cmd: list[str],
    env: dict[str, str],
    out: Path,
    api: tuple[str, int | None],
    users: int,
    label: str,
    **kwargs: bool,
) -> tuple[bench.Measured, Run]:
    """One measured, checked run (``bench.measure_run``), labelled and printed."""
    measured, run = bench.measure_run(ctx, kind, cmd, env, out, api, users, 0.0, **kwargs)
    run.label = label
    return measured, run


def _print(run: Run, extra: str = "") -> None:
    status = "ok" if run.ok else "PROBLEM: " + "; ".join(run.problems)
    print(
        f"  {run.label}: {run.wall_s:.2f} s  peak {run.peak_mib:.0f} MiB ({run.peak_proc}; "
        f"sum {run.peak_sum_mib:.0f})  cpu {run.cpu_s:.1f} s  {run.requests} req"
        f"{extra}  {status}",
        flush=True,
    )
    if not run.ok:
        print(f"  !!! {run.label} FAILED its checks: {'; '.join(run.problems)}", flush=True)


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / bench.MIB:,.2f}"


def cores() -> str:
    """``2 cores (2 usable)``: the machine's, and those this process may run on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{os.cpu_count()} cores ({usable} usable)"


# --------------------------------------------------------------------------- first command

FIRST_LABEL = "flow, no Prefect server: the CLI starts a temporary one"
FIRST_RUN = "flow, no Prefect server, first command (new PREFECT_HOME)"
AGAIN_RUN = "flow, no Prefect server, again (same PREFECT_HOME)"
#: What the CLI prints once its temporary server answers (``prefect_api.prefect_api``).
TEMPORARY = re.compile(r"Prefect server: temporary, at \S+, ready in ([\d.]+) s")
#: What it prints when it reuses a server it found running at Prefect's local address.
REUSED = re.compile(r"Prefect server: (\S+) \(running here")


def prefect_local_address(env: dict[str, str]) -> tuple[str, int]:
    """Where the CLI looks for a running Prefect server when no API is configured:
    ``PREFECT_SERVER_API_HOST``/``_PORT`` (Prefect's defaults: 127.0.0.1:4200)."""
    host = env.get("PREFECT_SERVER_API_HOST", "127.0.0.1")
    return host, int(env.get("PREFECT_SERVER_API_PORT", "4200"))


def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@dataclass
class FirstCommand:
    """The first-command cell: per user count, the plain script and two flow commands."""

    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    matrix: list[bench.Cell] = field(default_factory=list)  # the same sizes with a server

    HEADER = (
        "users",
        "command",
        "wall s",
        "runs s",
        "temporary server ready s",
        "before flow s",
        "in flow s",
        "CPU s",
        "largest MiB (process)",
        "tree MiB",
        "checks",
    )

    def rows(self) -> list[list[str]]:
        """One row per (users, command), medians over the runs."""
        rows = []
        for users in dict.fromkeys(r.users for r in self.runs):
            mine = [r for r in self.runs if r.users == users]
            for label in dict.fromkeys(r.label for r in mine):
                runs = [r for r in mine if r.label == label]
                rows.append(self._row(users, label, runs))
            for cell in self.matrix:
                if cell.users == users and cell.latency == 0 and cell.runs.get("flow"):
                    label = "flow, with a running Prefect server (the matrix's cell)"
                    rows.append(self._row(users, label, cell.runs["flow"]))
        return rows

    @staticmethod
    def _row(users: int, label: str, runs: list[Run]) -> list[str]:
        good = _ok(runs)

        def med(get: Callable[[Run], float | None]) -> str:
            values = [v for r in good if (v := get(r)) is not None]
            return bench._num(_median(values), ".2f")

        return [
            f"{users:,}",
            label,
            med(lambda r: r.wall_s),
            " / ".join(f"{r.wall_s:.2f}" for r in runs),
            med(lambda r: r.extra.get("server_ready_s")),
            med(lambda r: r.phases.get("before_flow")),
            med(lambda r: r.phases.get("in_flow")),
            bench._num(_median([r.cpu_s for r in good]), ".1f"),
            bench._num(max((r.peak_mib for r in runs), default=float("nan")), ".0f"),
            bench._num(max((r.peak_sum_mib for r in runs), default=float("nan")), ".0f"),
            _checks(runs),
        ]

    def terminal(self) -> str:
        """The table for the terminal."""
        table = bench.text_table(list(self.HEADER), self.rows(), left=(1, 10))
        return "\n".join([f"first command: {FIRST_LABEL}", table, *self.notes])

    def markdown(self) -> list[str]:
        """The results file's section."""
        return [
            f"## A first command: {FIRST_LABEL}",
            "",
            bench.md_table(list(self.HEADER), self.rows()),
            "",
            (
                "`placeholder-etl run` as a new user runs it: no `PREFECT_API_URL`, a new, empty "
                "`PREFECT_HOME` (the *first command* creates the Prefect database in it; *again* "
                "is the next command in the same home), nothing listening where the CLI looks for "
                "a running server (`127.0.0.1:4200`), so it starts a temporary Prefect server "
                "(`TemporaryServer`) and stops it before it exits; the run must say so "
                "(`Prefect server: temporary, at …`). `wall s`: the whole command, process start "
                "to exit; `temporary server ready s`: what the CLI reports (start → health check "
                "answered, overlapping its imports); `before flow`: process start → first flow-run "
                "log line; `in flow`: the manifest's `total_s`. The temporary server is in the "
                "command's process tree (its CPU and memory count). Cold page cache; output "
                "checked against the manifest and byte-identical to the plain script's."
            ),
            "",
            *(f"- {note}" for note in self.notes),
            *([""] if self.notes else []),
        ]


def first_command(
    ctx: Context, sizes: list[int], runs: int, matrix: list[bench.Cell] | None = None
) -> FirstCommand:
    """For each size (0 ms): per repetition the plain script, then ``placeholder-etl run`` in
    a new ``PREFECT_HOME`` with no Prefect API (the first command), then the same again."""
    result = FirstCommand(matrix=list(matrix or []))
    base = {k: v for k, v in ctx.base_env.items() if k != "PREFECT_API_URL"}
    host, port = prefect_local_address(base)
    for users in sizes:
        print(f"first command (no Prefect server): {users:,} users @0 ms", flush=True)
        with bench.api_server(ctx, users, 0.0) as (api_url, api_pid):
            api = (api_url, api_pid)
            for rep in range(1, runs + 1):
                env = dict(base)
                if listening(host, port):  # the CLI would reuse it: look elsewhere
                    spare = bench.free_port()
                    env["PREFECT_SERVER_API_PORT"] = str(spare)
                    note = (
                        f"something listened on {host}:{port} (where the CLI looks for a "
                        f"running Prefect server, and would have reused it) during "
                        f"{users:,}-user run {rep}: that run had PREFECT_SERVER_API_PORT="
                        f"{spare}, where nothing listened, so it started its own"
                    )
                    result.notes.append(note)
                    print(f"  note: {note}", flush=True)
                home = _fresh_dir(ctx, "first-")
                env["PREFECT_HOME"] = str(home / "prefect-home")
                plain_out = _fresh_dir(ctx, "plain-")
                cmd, plain_env = bench.command(ctx, "plain", api_url, plain_out)
                reference = "plain script (reference)"
                _, plain = _run(
                    ctx, "plain", cmd, plain_env, plain_out / "o", api, users, reference
                )
                shutil.rmtree(plain_out, ignore_errors=True)
                flows = []
                for label in (FIRST_RUN, AGAIN_RUN):
                    out = _fresh_dir(ctx, "flow-")
                    cmd, _ = bench.command(ctx, "flow", api_url, out)
                    measured, run = _run(ctx, "flow", cmd, env, out / "o", api, users, label)
                    _check_temporary(run, measured)
                    flows.append(run)
                    shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(home, ignore_errors=True)
                for run in flows:
                    _same_csv(run, [plain, *flows])
                for run in (plain, *flows):
                    run.rep = rep
                    ready = run.extra.get("server_ready_s")
                    _print(run, f"  server ready {ready:.1f} s" if ready is not None else "")
                result.runs += [plain, *flows]
    return result


def _check_temporary(run: Run, measured: bench.Measured) -> None:
    """The command must have started its own temporary Prefect server (and say so)."""
    text = measured.stdout + "\n" + measured.stderr
    if found := TEMPORARY.search(text):
        run.extra["server_ready_s"] = float(found.group(1))
        return
    reused = REUSED.search(text)
    run.problems.append(
        f"reused the Prefect server at {reused.group(1)}: not a command with no server"
        if reused
        else "did not say it started a temporary Prefect server"
    )
    run.ok = False


# --------------------------------------------------------------------------- scaling


@dataclass
class Scaling:
    """The scaling curve: flow runs at one size on 1, 2, 4, 8… Dask worker processes."""

    users: int
    workers: list[int]
    runs: list[Run] = field(default_factory=list)

    HEADER = (
        "Dask workers",
        "threads/worker",
        "wall s",
        "runs s",
        "speedup vs 1 worker",
        "records/s",
        "Dask cluster start s",
        "extract s",
        "extract records/s",
        "CPU s",
        "cores busy",
        "other CPU s",
        "largest MiB (process)",
        "tree MiB",
        "workers that ran tasks",
        "checks",
    )

    def _of(self, workers: int) -> list[Run]:
        return [r for r in self.runs if r.extra.get("workers") == workers]

    def rows(self) -> list[list[str]]:
        """One row per worker count (medians of the runs that passed their checks)."""
        one = _median([r.wall_s for r in _ok(self._of(self.workers[0]))])
        rows = []
        for workers in self.workers:
            runs = self._of(workers)
            good = _ok(runs)
            wall = _median([r.wall_s for r in good])
            extract = _median([r.phases["extract"] for r in good if "extract" in r.phases])
            cluster = _median([r.phases["cluster"] for r in good if "cluster" in r.phases])
            cpu = _median([r.cpu_s for r in good])
            used = sorted({r.extra.get("workers_used", 0) for r in good})
            rows.append(
                [
                    str(workers),
                    "1",
                    bench._num(wall, ".2f"),
                    " / ".join(f"{r.wall_s:.2f}" for r in runs),
                    bench._num(one / wall if wall > 0 else float("nan"), ".2f"),
                    bench._num(self.users / wall if wall > 0 else float("nan"), ",.0f"),
                    bench._num(cluster, ".2f"),
                    bench._num(extract, ".2f"),
                    bench._num(self.users / extract if extract > 0 else float("nan"), ",.0f"),
                    bench._num(cpu, ".1f"),
                    bench._num(cpu / wall if wall > 0 else float("nan"), ".2f"),
                    bench._num(_median([r.other_cpu_s for r in good]), ".1f"),
                    bench._num(max((r.peak_mib for r in runs), default=float("nan")), ".0f"),
                    bench._num(max((r.peak_sum_mib for r in runs), default=float("nan")), ".0f"),
                    ", ".join(map(str, used)) or "-",
                    _checks(runs),
                ]
            )
        return rows

    def title(self) -> str:
        """What was run, on what."""
        return (
            f"{self.users:,} users, 0 ms, cold cache each run, `--dask-workers N "
            f"--dask-threads 1`; machine: {cores()}"
        )

    def terminal(self) -> str:
        """The curve for the terminal."""
        return self.title() + "\n" + bench.text_table(list(self.HEADER), self.rows(), left=(15,))

    def markdown(self) -> list[str]:
        """The results file's section."""
        return [
            "## Scaling: Dask worker processes",
            "",
            self.title() + ".",
            "",
            bench.md_table(list(self.HEADER), self.rows()),
            "",
            (
                "Each run: `placeholder-etl run --dask-workers N --dask-threads 1` (a LocalCluster "
                "of N worker processes, one task thread each), a fresh `--cache-dir`, against the "
                "running Prefect server and the fast API server (its own process, on the same "
                "cores). `wall s`: the whole command; `speedup`: 1 worker's median wall time / "
                "this one's; `records/s`: users / wall s; `Dask cluster start s`: LocalCluster "
                "start (N processes importing the package; log timestamps); `extract s`: the "
                "manifest's extract phase without the cluster start (free of the fixed costs); "
                "`cores busy`: CPU s of the command's process tree / wall s; `other CPU s`: "
                "the rest of the machine's busy CPU meanwhile (noise); `largest MiB`: the peak RSS of its "
                "largest process; `workers that ran tasks`: distinct workers in the manifest. "
                "More workers than cores cannot run faster: where the curve flattens is the "
                "machine's limit, not the flow's; the same command on a bigger machine shows how "
                "it scales."
            ),
            "",
        ]


def scaling(ctx: Context, users: int, workers: list[int], runs: int) -> Scaling:
    """The flow at ``users`` users (0 ms) on each worker count, ``runs`` times, cold cache."""
    result = Scaling(users, workers)
    print(f"scaling: {users:,} users on {workers} Dask worker(s); {cores()}", flush=True)
    with bench.api_server(ctx, users, 0.0) as (api_url, api_pid):
        for rep in range(1, runs + 1):
            for count in workers:
                out = _fresh_dir(ctx, f"scale{count}-")
                cmd, env = bench.command(ctx, "flow", api_url, out)
                cmd += ["--dask-workers", str(count), "--dask-threads", "1"]
                label = f"flow, {count} Dask worker{'s' if count > 1 else ''}"
                _, run = _run(ctx, "flow", cmd, env, out / "o", (api_url, api_pid), users, label)
                run.rep = rep
                run.extra["workers"] = count
                run.extra["workers_used"] = len(bench.flow_manifest(out / "o").get("workers", []))
                shutil.rmtree(out, ignore_errors=True)
                _same_csv(run, result.runs)
                result.runs.append(run)
                _print(run, f"  workers used {run.extra['workers_used']}")
    return result


# --------------------------------------------------------------------------- expired rerun

MANIFEST_PAGES = ("pages", "pages_fetched", "pages_reused", "pages_revalidated")


def age_files(folder: Path, seconds: float) -> int:
    """Set back the modification (and access) time of everything under ``folder`` by
    ``seconds``, as if written that long ago; how many entries."""
    count = 0
    for path in [folder, *folder.rglob("*")]:
        info = path.lstat()
        os.utime(
            path,
            (info.st_atime - seconds, info.st_mtime - seconds),
            follow_symlinks=False,
        )
        count += 1
    return count


def default_cache_hours() -> float:
    """The flow's page-cache lifetime (``--cache-hours``'s default)."""
    from placeholder_etl.core.settings import FetchSettings

    return float(FetchSettings().cache_hours)


@dataclass
class ExpiredRerun:
    """A cold flow run, its rerun once the cache has expired, and dlt's two runs."""

    users: int
    age_hours: float
    cache_hours: float
    runs: list[Run] = field(default_factory=list)

    HEADER = (
        "run",
        "wall s",
        "runs s",
        "API requests",
        "304 answers",
        "MiB from the API",
        "pages fetched",
        "pages reused",
        "pages revalidated",
        "checks",
    )

    def rows(self) -> list[list[str]]:
        """One row per kind of run (medians over the repetitions)."""
        rows = []
        for label in dict.fromkeys(r.label for r in self.runs):
            runs = [r for r in self.runs if r.label == label]
            good = _ok(runs)
            sent = [r.api_bytes for r in good if r.api_bytes is not None]
            not_modified = [r.extra["not_modified"] for r in good if "not_modified" in r.extra]
            flow = runs[0].kind == "flow"

            def page(key: str, runs: list[Run] = good, flow: bool = flow) -> str:
                if not flow:
                    return "-"
                values = [r.extra[key] for r in runs if isinstance(r.extra.get(key), int)]
                return f"{_median(values):,.0f}" if values else "n/a"

            rows.append(
                [
                    label,
                    bench._num(_median([r.wall_s for r in good]), ".2f"),
                    " / ".join(f"{r.wall_s:.2f}" for r in runs),
                    bench._num(_median([r.requests for r in good]), ",.0f"),
                    bench._num(_median(not_modified), ",.0f", "n/a"),
                    _mib(int(_median(sent))) if sent else "n/a",
                    page("pages_fetched"),
                    page("pages_reused"),
                    page("pages_revalidated"),
                    _checks(runs),
                ]
            )
        return rows

    def title(self) -> str:
        """What was run."""
        return (
            f"{self.users:,} users, 0 ms; the rerun {self.age_hours:g} h later "
            f"(cache lifetime {self.cache_hours:g} h), same command, unchanged API"
        )

    def terminal(self) -> str:
        """The table for the terminal."""
        return self.title() + "\n" + bench.text_table(list(self.HEADER), self.rows(), left=(0, 9))

    def markdown(self) -> list[str]:
        """The results file's section."""
        return [
            "## Rerun after the cache expired (issue 24)",
            "",
            self.title() + ".",
            "",
            bench.md_table(list(self.HEADER), self.rows()),
            "",
            (
                "The same `placeholder-etl run` twice, into the same output and cache folders: "
                "cold (empty cache), then as a user runs it the next day against an API whose "
                f"data has not changed. The rerun's day is simulated: every file under the cache "
                f"folder gets its modification time set back {self.age_hours:g} h (the page "
                "checkpoints expire by mtime: `--cache-hours`), and the run's Prefect task-cache "
                "records (its own `PREFECT_RESULTS_LOCAL_STORAGE_PATH`) are removed, which is "
                "what their expiry does to a lookup (Prefect keeps the expiry inside each record, "
                "not in its mtime); so the rerun must report no cached chunk. `MiB from the API` "
                "and `304 answers`: counted by the API server (`fast_server.py`: status lines, "
                "headers and bodies; `n/a` with a server that does not count them). `pages "
                "revalidated`: the manifest's `pages_revalidated` (pages whose stored ETag the API "
                "confirmed with a 304), `n/a` while the flow does not record it (no conditional "
                "requests: the rerun downloads everything again). dlt has no conditional requests "
                "either: its rerun (same pipeline and pipelines folder, dlt's default append) "
                "downloads every page again; its newest load is checked (N rows, ids 1..N). Every "
                "flow run's output is checked against its newest manifest, its users CSV "
                "byte-identical to the cold run's."
            ),
            "",
        ]


def _check_expired(run: Run) -> None:
    """The rerun must not have taken a page from the cache without asking the API."""
    reused, revalidated = run.extra.get("pages_reused"), run.extra.get("pages_revalidated")
    revalidated = revalidated if isinstance(revalidated, int) else 0
    if isinstance(reused, int) and reused > revalidated:
        run.problems.append(
            f"{reused - revalidated} page(s) reused without asking the API: the cache had not "
            "expired"
        )
        run.ok = False


def _report(run: Run, rep: int, pair: list[Run]) -> None:
    """Number, compare (the flow's users CSV with the cold run's), print and keep ``run``."""
    run.rep = rep
    _same_csv(run, (r for r in pair if r.kind == run.kind))
    told = [f"{_mib(run.api_bytes)} MiB from the API"]
    told += [f"{k} {run.extra[k]}" for k in MANIFEST_PAGES if k in run.extra]
    _print(run, "  " + ", ".join(told))
    pair.append(run)


def expired_rerun(ctx: Context, users: int, runs: int, age_hours: float) -> ExpiredRerun:
    """Per repetition: the flow cold, then rerun after aging its cache by ``age_hours``; dlt
    twice into the same pipeline (if dlt is run)."""
    cache_hours = default_cache_hours()
    result = ExpiredRerun(users, age_hours, cache_hours)
    if age_hours <= cache_hours:
        raise ValueError(
            f"--expired-age-hours {age_hours:g} is within the cache lifetime ({cache_hours:g} h)"
        )
    print(f"expired-cache rerun: {users:,} users @0 ms, aged {age_hours:g} h", flush=True)
    with bench.api_server(ctx, users, 0.0) as (api_url, api_pid):
        api = (api_url, api_pid)
        for rep in range(1, runs + 1):
            out = _fresh_dir(ctx, "expired-")
            records = out / "prefect-results"
            env = {**ctx.flow_env, "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(records)}
            cmd, _ = bench.command(ctx, "flow", api_url, out)
            pair: list[Run] = []
            for label in ("flow, cold (empty cache)", "flow, rerun the next day (cache expired)"):
                if pair:  # the next day
                    aged = age_files(out / "cache", age_hours * 3600)
                    shutil.rmtree(records, ignore_errors=True)
                    print(f"  aged {aged} cache entries; Prefect task-cache records removed")
                _, run = _run(ctx, "flow", cmd, env, out / "o", api, users, label)
                manifest = bench.flow_manifest(out / "o")
                run.extra |= {k: manifest.get(k, "n/a") for k in MANIFEST_PAGES}
                if pair:
                    _check_expired(run)
                _report(run, rep, pair)
            shutil.rmtree(out, ignore_errors=True)
            if ctx.dlt_python is not None:
                out = _fresh_dir(ctx, "dlt-")
                cmd, dlt_env = bench.command(ctx, "dlt", api_url, out)
                for label in ("dlt, first run", "dlt, rerun (same pipeline)"):
                    _, run = _run(
                        ctx, "dlt", cmd, dlt_env, out / "o", api, users, label, newest_load=True
                    )
                    _report(run, rep, pair)
                shutil.rmtree(out, ignore_errors=True)
            result.runs += pair
    return result
