"""Break one README guarantee at a time and check that the tests holding it fail.

Each mutation is a one-place edit of the source, applied to a copy of the checkout (``src``,
``tests``, ``pyproject.toml``), never to the checkout itself; the tests named for it run
against the copy (``PYTHONPATH`` puts its ``src`` first, subprocesses and Dask workers
inherit it). A mutation is *caught* when those tests fail.

    .venv/bin/python -m tests.break_guarantees            # every mutation
    .venv/bin/python -m tests.break_guarantees flock fsync # some, by name
    .venv/bin/python -m tests.break_guarantees --list

Prints one Markdown row per mutation (guarantee, breakage, tests, caught) and exits 1 when
any mutation survived.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """One guarantee broken in one place: replace ``old`` (found exactly once) by ``new``."""

    name: str
    guarantee: str
    breakage: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


STAGING = "src/placeholder_etl/core/staging.py"
PIPELINE = "src/placeholder_etl/core/pipeline.py"
CLIENT = "src/placeholder_etl/core/client.py"
TASKS = "src/placeholder_etl/tasks.py"
T = "tests/"

MUTATIONS = (
    Mutation(
        "undo",
        "A failed run leaves the output dir as it was",
        "a commit failing halfway keeps the files it had renamed",
        STAGING,
        "                _undo_renames(done)\n",
        "                pass\n",
        (
            T
            + "unit/test_staging.py::test_a_commit_that_fails_halfway_leaves_the_output_dir_as_it_was",
        ),
    ),
    Mutation(
        "abort",
        "A failed run leaves the output dir as it was",
        "a failed run keeps its temporary files",
        STAGING,
        "            tmp.unlink(missing_ok=True)\n        self.staged.clear()",
        "            pass\n        self.staged.clear()",
        (
            T
            + "integration/test_hostile.py::test_counts_that_disagree_with_the_pages_fail_and_write_nothing",
        ),
    ),
    Mutation(
        "fsync",
        "A failed run leaves the output dir as it was (durable files)",
        "files are not fsynced before their rename",
        STAGING,
        "    handle.flush()\n    os.fsync(handle.fileno())",
        "    handle.flush()",
        (T + "unit/test_staging.py",),
    ),
    Mutation(
        "stale",
        "A killed run's leftovers are removed by the next run",
        "temporary files of dead processes are kept",
        STAGING,
        "                stale = not _alive(int(pid))",
        "                stale = False",
        (
            T
            + "unit/test_staging.py::test_stale_temps_of_dead_processes_are_removed_live_ones_kept",
        ),
    ),
    Mutation(
        "flock",
        "Concurrent runs never overwrite or interleave",
        "no lock around the commit",
        STAGING,
        "            fcntl.flock(lock, fcntl.LOCK_EX)\n",
        "",
        (T + "unit/test_staging.py::test_concurrent_commits_never_share_or_overwrite_files",),
    ),
    Mutation(
        "stamp",
        "Concurrent runs never overwrite or interleave",
        "the stamp is not checked against files already there",
        STAGING,
        '            if not any((self.directory / f"{k}_{stamp}{s}").exists() for k, s in names):',
        "            if True:",
        (T + "unit/test_staging.py::test_concurrent_commits_never_share_or_overwrite_files",),
    ),
    Mutation(
        "retry-permanent",
        "Permanent faults fail at once",
        "Prefect retries every error",
        TASKS,
        "    return not isinstance(exc, BaseException) or is_transient(exc)",
        "    return True",
        (T + "integration/test_flow.py::test_permanent_errors_are_not_retried",),
    ),
    Mutation(
        "5xx-permanent",
        "Transient faults are retried",
        "a 5xx is classified permanent",
        CLIENT,
        "            if response.status_code == 429 or response.status_code >= 500:",
        "            if response.status_code == 429:",
        (T + "integration/test_flow.py::test_transient_errors_are_retried_by_the_task",),
    ),
    Mutation(
        "no-backoff-jitter",
        "Transient faults are retried with backoff and jitter",
        "request retries without jitter",
        CLIENT,
        "            backoff_jitter=self.settings.backoff / 2,",
        "            backoff_jitter=0.0,",
        (
            T
            + "integration/test_client.py::test_request_retries_back_off_exponentially_with_jitter",
        ),
    ),
    Mutation(
        "no-task-jitter",
        "Transient faults are retried with backoff and jitter",
        "task retries without jitter",
        TASKS,
        '    task_run_name="extract {spec.label}",',
        '    task_run_name="extract {spec.label}",\n    retry_jitter_factor=None,',
        (T + "integration/test_flow.py::test_task_retries_wait_longer_each_time_with_jitter",),
    ),
    Mutation(
        "no-doubling",
        "Transient faults are retried with backoff (doubling task delay)",
        "the task retry delay stays the same",
        TASKS,
        '"retry_delay_seconds": exponential_backoff(backoff_factor=fetch.retry_delay),',
        '"retry_delay_seconds": fetch.retry_delay,',
        (T + "integration/test_flow.py::test_task_retries_wait_longer_each_time_with_jitter",),
    ),
    Mutation(
        "no-dedup",
        "Duplicate ids across pages are dropped",
        "duplicates are kept",
        PIPELINE,
        'frame = frame.drop_duplicates("_id").sort_values',
        "frame = frame.sort_values",
        (T + "integration/test_hostile.py::test_duplicate_ids_across_pages_are_dropped",),
    ),
    Mutation(
        "last-wins",
        "Duplicate ids: first occurrence wins",
        "the last occurrence wins",
        PIPELINE,
        'frame = frame.drop_duplicates("_id").sort_values',
        'frame = frame.drop_duplicates("_id", keep="last").sort_values',
        (T + "integration/test_hostile.py::test_duplicate_ids_across_pages_are_dropped",),
    ),
    Mutation(
        "no-sort",
        "Duplicate or unordered ids: the table is sorted by id",
        "unordered tables are not sorted",
        PIPELINE,
        '.sort_values("_id", kind="stable").drop(columns="_id")',
        '.drop(columns="_id")',
        (T + "integration/test_hostile.py::test_pages_out_of_order_are_sorted_by_id",),
    ),
    Mutation(
        "no-total-check",
        "X-Total-Count disagreeing with the pages fails the run",
        "the totals are not checked",
        PIPELINE,
        "        if total is not None and rows != total:",
        "        if False:",
        (
            T
            + "integration/test_hostile.py::test_counts_that_disagree_with_the_pages_fail_and_write_nothing",
        ),
    ),
    Mutation(
        "utf8-replace",
        "Bytes that are not UTF-8 fail the run",
        "invalid bytes are replaced",
        CLIENT,
        "    body = response.content\n",
        '    body = response.content.decode("utf-8", "replace").encode()\n',
        (T + "integration/test_client.py::test_faults_are_classified_and_named",),
    ),
    Mutation(
        "extra-forbid",
        "Unexpected extra fields are allowed and dropped",
        "extra fields are refused",
        "src/placeholder_etl/core/contract.py",
        '_STRICT = ConfigDict(strict=True, extra="ignore")',
        '_STRICT = ConfigDict(strict=True, extra="forbid")',
        (T + "integration/test_hostile.py::test_unexpected_extra_fields_are_allowed_and_dropped",),
    ),
    Mutation(
        "string-ids",
        'The contract is strict ("3" is not an id)',
        "string ids are accepted",
        "src/placeholder_etl/core/contract.py",
        '_STRICT = ConfigDict(strict=True, extra="ignore")',
        '_STRICT = ConfigDict(strict=False, extra="ignore")',
        (T + "integration/test_client.py::test_faults_are_classified_and_named",),
    ),
    Mutation(
        "formulas",
        "Formulas are prefixed with '",
        "formula guarding dropped",
        "src/placeholder_etl/core/rows.py",
        "    if not keep_formulas and _has_formula(rows):",
        "    if False:",
        (T + "integration/test_hostile.py::test_formulas_are_neutralised_by_default",),
    ),
    Mutation(
        "resources",
        "Nothing is written outside the output dir",
        "unknown resource names are accepted",
        "src/placeholder_etl/core/resources.py",
        "    if unknown:\n",
        "    if False:\n",
        (T + "integration/test_flow.py::test_unknown_resources_are_rejected",),
    ),
    Mutation(
        "names",
        "Nothing is written outside the output dir",
        "output names are not checked",
        STAGING,
        '        if not key.replace("_", "").isalnum():',
        "        if False:",
        (T + "unit/test_staging.py::test_staging_rejects_names_that_could_escape_the_directory",),
    ),
    Mutation(
        "redact",
        "Secrets stay secret",
        "passwords in --api-url are not redacted",
        "src/placeholder_etl/core/redact.py",
        "    if parts.password is not None:",
        "    if False:",
        (T + "integration/test_hostile.py::test_credentials_in_the_api_url_never_reach_outputs",),
    ),
    Mutation(
        "cache-expiry",
        "--cache-hours: pages stay valid that long",
        "cached pages never expire",
        TASKS,
        '        options["cache_expiration"] = timedelta(hours=fetch.cache_hours)',
        "        pass",
        (T + "integration/test_flow.py::test_cached_pages_expire_after_cache_hours",),
    ),
    Mutation(
        "chunk-key",
        "The cache key holds page size and paging",
        "part files of chunks that differ only in page size share a folder",
        "src/placeholder_etl/core/results.py",
        '        text = "|".join(str(v) for v in self.model_dump().values())',
        '        text = "|".join(str(v) for k, v in self.model_dump().items() if k != "page_size")',
        (T + "integration/test_flow.py::test_another_page_size_or_paging_is_a_cache_miss",),
    ),
    Mutation(
        "on-crashed",
        "A run that crashes notifies",
        "no on_crashed hook",
        "src/placeholder_etl/flow.py",
        "    on_crashed=[notify_failure],\n",
        "",
        (T + "integration/test_notify.py::test_a_crashed_run_posts_one_message",),
    ),
)


def _copy_checkout(into: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    for folder in ("src", "tests"):
        shutil.copytree(ROOT / folder, into / folder, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", into / "pyproject.toml")


def run_mutation(mutation: Mutation, timeout: float = 900) -> tuple[bool, float, str]:
    """Apply ``mutation`` to a copy and run its tests; (caught, seconds, last output line)."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutation.name}-") as scratch:
        copy = Path(scratch)
        _copy_checkout(copy)
        target = copy / mutation.file
        source = target.read_text()
        if source.count(mutation.old) != 1:
            raise SystemExit(f"{mutation.name}: the text to replace is not in {mutation.file} once")
        target.write_text(source.replace(mutation.old, mutation.new))
        env = {**os.environ, "PYTHONPATH": str(copy / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutation.tests],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        lines = [line for line in result.stdout.strip().splitlines() if line.strip()]
        return result.returncode == 1, time.monotonic() - started, lines[-1] if lines else ""


def main(argv: list[str]) -> int:
    if argv == ["--list"]:
        for mutation in MUTATIONS:
            print(f"{mutation.name}: {mutation.guarantee} — {mutation.breakage}")
        return 0
    chosen = [m for m in MUTATIONS if not argv or m.name in argv]
    print("| guarantee | breakage | test | caught |\n| --- | --- | --- | --- |", flush=True)
    survived = 0
    for mutation in chosen:
        caught, seconds, last = run_mutation(mutation)
        survived += not caught
        tests = ", ".join(f"`{t.split('/')[-1]}`" for t in mutation.tests)
        verdict = "yes" if caught else f"**no** ({last})"
        print(
            f"| {mutation.guarantee} | {mutation.breakage} (`{mutation.name}`) | {tests} | "
            f"{verdict} ({seconds:.0f} s) |",
            flush=True,
        )
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
