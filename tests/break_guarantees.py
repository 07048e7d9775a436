"""Break one guarantee of docs/guarantees.md at a time and check that the tests holding it fail.

Each mutation is an edit of the source, applied to a copy of the checkout (``src``,
``tests``, ``pyproject.toml``), never to the checkout itself. Most are a one-place edit; where
a guarantee is held in two places (the compiled page path in ``fastpath.py`` and the pydantic
path in ``contract.py``/``rows.py`` it falls back to), the mutation breaks both (``also``),
since breaking one leaves the guarantee intact. The tests named for a mutation run against
the copy (``PYTHONPATH`` puts its ``src`` first, subprocesses and Dask workers inherit it);
the mutation is *caught* when they fail.

    .venv/bin/python -m tests.break_guarantees            # every mutation
    .venv/bin/python -m tests.break_guarantees flock fsync # some, by name
    .venv/bin/python -m tests.break_guarantees --list
    .venv/bin/python -m tests.break_guarantees --no-baseline flock

First the named tests run once without any mutation (the baseline; ``--no-baseline`` skips
it): a test that fails already cannot tell a mutation apart, so it is left out of every
mutation's run, and a mutation left with no test is reported as not judged. Prints one
Markdown row per mutation (guarantee, breakage, tests, caught) and exits 1 when any mutation
survived or could not be judged.
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
    """One guarantee broken: replace ``old`` (found exactly once in ``file``) by ``new``, and
    likewise each ``(file, old, new)`` of ``also``."""

    name: str
    guarantee: str
    breakage: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    also: tuple[tuple[str, str, str], ...] = ()

    @property
    def edits(self) -> tuple[tuple[str, str, str], ...]:
        return ((self.file, self.old, self.new), *self.also)


ATOMIC = "src/placeholder_etl/core/atomic.py"
FOLDER = "src/placeholder_etl/core/folder.py"
OUTPUT = "src/placeholder_etl/core/output.py"
ASSEMBLE = "src/placeholder_etl/core/assemble.py"
TRANSPORT = "src/placeholder_etl/core/transport.py"
TABLES = "src/placeholder_etl/core/tables.py"
FASTPATH = "src/placeholder_etl/core/fastpath.py"
CONTRACT = "src/placeholder_etl/core/contract.py"
PAGES = "src/placeholder_etl/core/pages.py"
CLIENT = "src/placeholder_etl/core/client.py"
RESPONSES = "src/placeholder_etl/core/responses.py"
TASKS = "src/placeholder_etl/tasks.py"
T = "tests/"

MUTATIONS = (
    Mutation(
        "undo",
        "A failed run leaves the output dir as it was",
        "a commit failing halfway keeps the files it had renamed",
        FOLDER,
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
        FOLDER,
        '        for tmp in self.directory.glob(f".*.{self.run_tag}{TEMP_SUFFIX}"):\n'
        "            tmp.unlink(missing_ok=True)\n",
        '        for tmp in self.directory.glob(f".*.{self.run_tag}{TEMP_SUFFIX}"):\n'
        "            pass\n",
        (
            T
            + "integration/test_hostile.py::test_counts_that_disagree_with_the_pages_fail_and_write_nothing",
        ),
    ),
    Mutation(
        "published",
        "The manifest never names a file that is not there",
        "the commit writes the manifest without checking the tables under their final names",
        FOLDER,
        "                check_published(finals, _local_size)  # before a manifest names them\n",
        "",
        (T + "unit/test_staging.py::test_a_commit_refuses_a_table_that_is_not_what_was_written",),
    ),
    Mutation(
        "fsync",
        "A failed run leaves the output dir as it was (durable files)",
        "files are not fsynced before their rename",
        ATOMIC,
        "    handle.flush()\n    os.fsync(handle.fileno())",
        "    handle.flush()",
        (T + "unit/test_staging.py",),
    ),
    Mutation(
        "stale",
        "A killed run's leftovers are removed by the next run",
        "temporary files of dead processes are kept",
        ATOMIC,
        "        return not _alive(pid)\n",
        "        return False\n",
        (
            T
            + "unit/test_staging.py::test_stale_temps_of_dead_processes_are_removed_live_ones_kept",
        ),
    ),
    Mutation(
        "flock",
        "Concurrent runs never overwrite or interleave",
        "no lock around the commit",
        FOLDER,
        "            fcntl.flock(lock, fcntl.LOCK_EX)\n",
        "",
        (T + "unit/test_staging.py::test_concurrent_commits_never_share_or_overwrite_files",),
    ),
    Mutation(
        "stamp",
        "Concurrent runs never overwrite or interleave",
        "the stamp is not checked against files already there",
        FOLDER,
        "            if not any((self.directory / final_name(k, stamp, s)).exists() for k, s in names):",
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
        RESPONSES,
        "    if response.status_code == 429 or response.status_code >= 500:",
        "    if response.status_code == 429:",
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
        '    task_run_name="extract {job.spec.label}",',
        '    task_run_name="extract {job.spec.label}",\n    retry_jitter_factor=None,',
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
        TABLES,
        'frame = frame.drop_duplicates("_id").sort_values',
        "frame = frame.sort_values",
        (
            T
            + "unit/test_assemble.py::test_unordered_parts_are_sorted_and_the_first_occurrence_wins",
            T + "integration/test_hostile.py::test_duplicate_ids_across_pages_are_dropped",
        ),
    ),
    Mutation(
        "last-wins",
        "Duplicate ids: first occurrence wins",
        "the last occurrence wins",
        TABLES,
        'frame = frame.drop_duplicates("_id").sort_values',
        'frame = frame.drop_duplicates("_id", keep="last").sort_values',
        (
            T
            + "unit/test_assemble.py::test_unordered_parts_are_sorted_and_the_first_occurrence_wins",
            T + "integration/test_hostile.py::test_duplicate_ids_across_pages_are_dropped",
        ),
    ),
    Mutation(
        "no-sort",
        "Duplicate or unordered ids: the table is sorted by id",
        "unordered tables are not sorted",
        TABLES,
        '.sort_values("_id", kind="stable").drop(columns="_id")',
        '.drop(columns="_id")',
        (
            T + "unit/test_assemble.py::test_assemble_tables_stages_every_table",
            T + "integration/test_hostile.py::test_pages_out_of_order_are_sorted_by_id",
        ),
    ),
    Mutation(
        "no-total-check",
        "X-Total-Count disagreeing with the pages fails the run",
        "the totals are not checked",
        ASSEMBLE,
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
        "            body=body,\n",
        '            body=body.decode("utf-8", "replace").encode(),\n',
        (T + "integration/test_client.py::test_faults_are_classified_and_named",),
    ),
    Mutation(
        "extra-forbid",
        "Unexpected extra fields are allowed and dropped",
        "extra fields are refused (by the compiled path and the contract)",
        CONTRACT,
        '_STRICT = ConfigDict(strict=True, extra="ignore")',
        '_STRICT = ConfigDict(strict=True, extra="forbid")',
        (
            T + "unit/test_client_rules.py::test_a_fetched_page_is_decoded_and_checked_when_asked",
            T + "integration/test_hostile.py::test_unexpected_extra_fields_are_allowed_and_dropped",
        ),
        also=(
            (
                FASTPATH,
                'unexpected_field_behavior="ignore",',
                'unexpected_field_behavior="error",',
            ),
        ),
    ),
    Mutation(
        "string-ids",
        'The contract is strict ("3" is not an id)',
        "string ids are accepted (the compiled path declines them to the contract)",
        CONTRACT,
        '_STRICT = ConfigDict(strict=True, extra="ignore")',
        '_STRICT = ConfigDict(strict=False, extra="ignore")',
        (
            T + "unit/test_client_rules.py::test_contract_breaches_name_the_record_and_the_field",
            T + "integration/test_client.py::test_faults_are_classified_and_named",
        ),
    ),
    Mutation(
        "formulas",
        "Formulas are prefixed with '",
        "formula guarding dropped (in the compiled path and rows.py)",
        "src/placeholder_etl/core/rows.py",
        "    if not keep_formulas and _has_formula(rows):",
        "    if False:",
        (
            T + "unit/test_extract.py::test_formula_guarding_follows_keep_formulas",
            T + "integration/test_hostile.py::test_formulas_are_neutralised_by_default",
        ),
        also=(
            (
                FASTPATH,
                "_render_text(texts, not keep_formulas)",
                "_render_text(texts, False)",
            ),
        ),
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
        "output names are not checked (the check both outputs share)",
        OUTPUT,
        '        if not key.replace("_", "").isalnum():\n'
        '            raise ValueError(f"output name {key!r} must be letters, digits and underscores")\n',
        "",
        (
            T + "unit/test_staging.py::test_staging_rejects_names_that_could_escape_the_directory",
            T
            + "unit/test_prepare.py::test_either_staging_refuses_names_that_could_escape_the_output",
        ),
    ),
    Mutation(
        "redact",
        "Secrets stay secret",
        "the redaction gate lets everything through (URLs, text, registered secrets)",
        "src/placeholder_etl/core/redact.py",
        "    if not text:\n        return text\n",
        "    return text\n",
        (
            T + "integration/test_hostile.py::test_credentials_in_the_api_url_never_reach_outputs",
            T + "integration/test_hostile_api.py::"
            "test_a_hostile_api_fails_the_run_quickly_with_one_clear_line_and_no_secret",
        ),
        also=(
            (
                "src/placeholder_etl/core/redact.py",
                '        netloc = f"{user}:{MASK}@{host}" if has_password else f"{MASK}@{host}"\n',
                "        netloc = netloc\n",
            ),
        ),
    ),
    Mutation(
        "cache-expiry",
        "--cache-hours: pages stay valid that long",
        "cached pages never expire",
        TASKS,
        '        options["cache_expiration"] = timedelta(hours=fetch.cache_hours)',
        "        pass",
        (
            T + "unit/test_extract.py::test_checkpoints_older_than_the_cache_window_are_not_reused",
            T + "integration/test_flow.py::test_cached_pages_expire_after_cache_hours",
        ),
        # pages are cached twice: Prefect's task cache and the page checkpoints (reused while
        # younger than --cache-hours, their folders removed once older); break all three
        also=(
            (
                PAGES,
                "            if max_age is None or now - mtime <= max_age:",
                "            if True:",
            ),
            (
                PAGES,
                "        if now - newest > max_age + (KEPT_FOR_REVALIDATION if validated else 0):",
                "        if False:",
            ),
        ),
    ),
    Mutation(
        "checksum",
        "A damaged cached page is fetched again, never trusted",
        "cached pages are reused without reading their checksums",
        PAGES,
        "        if not self.store.local:\n            return None\n",
        "        return None\n",
        (
            T
            + "unit/test_page_checkpoints.py::test_damaged_truncated_and_missing_pages_are_not_done",
            T + "integration/test_checked_checkpoints.py",
        ),
    ),
    Mutation(
        "page-sizes",
        "A damaged cached page is fetched again, never trusted",
        "page files are not checked against their markers' sizes",
        PAGES,
        '            if info["size"] != size:\n                return "damaged"\n',
        "",
        (T + "unit/test_page_checkpoints.py", T + "integration/test_checked_checkpoints.py"),
        # the checksum read on reuse would catch a truncated file too: break both
        also=(
            (
                PAGES,
                "        if not self.store.local:\n            return None\n",
                "        return None\n",
            ),
        ),
    ),
    Mutation(
        "cached-chunk-check",
        "A damaged cached page is fetched again, never trusted",
        "chunks served from Prefect's cache are reused without checking their pages",
        TRANSPORT,
        "        if not numbers <= done.keys() or any(book.check(done[n]) for n in sorted(numbers)):",
        "        if not all(cache.exists(book.file(n, t)) for n in numbers for t in book.tables):",
        (
            T
            + "integration/test_checked_checkpoints.py::test_a_rerun_fetches_damaged_cached_pages_again_and_says_which",
        ),
    ),
    Mutation(
        "chunk-key",
        "The cache key holds page size and paging",
        "page checkpoints of runs that differ only in page size share a folder",
        PAGES,
        "        fields = (spec.api_url, spec.resource, spec.total, spec.page_size, spec.paging)",
        "        fields = (spec.api_url, spec.resource, spec.total, spec.paging)",
        (
            T
            + "unit/test_extract.py::test_page_checkpoints_are_kept_apart_by_every_setting_that_decides_their_rows",
            T + "integration/test_flow.py::test_another_page_size_or_paging_is_a_cache_miss",
        ),
    ),
    Mutation(
        "on-crashed",
        "A run that crashes notifies",
        "no on_crashed hook",
        "src/placeholder_etl/flow.py",
        ", on_crashed=[notify_failure])",
        ")",
        (T + "integration/test_notify.py::test_a_crashed_run_posts_one_message",),
    ),
)


def _copy_checkout(into: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    for folder in ("src", "tests"):
        shutil.copytree(ROOT / folder, into / folder, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", into / "pyproject.toml")


def _pytest(
    edits: tuple[tuple[str, str, str], ...],
    tests: list[str],
    *options: str,
    name: str,
    timeout: float = 900,
) -> tuple[int, float, str]:
    """Run ``tests`` on a copy of the checkout with ``edits`` applied: (exit code, s, stdout)."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{name}-") as scratch:
        copy = Path(scratch)
        _copy_checkout(copy)
        for file, old, new in edits:
            target = copy / file
            source = target.read_text()
            if source.count(old) != 1:
                raise SystemExit(f"{name}: the text to replace is not in {file} once")
            target.write_text(source.replace(old, new))
        env = {**os.environ, "PYTHONPATH": str(copy / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, *tests],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return result.returncode, time.monotonic() - started, result.stdout


def baseline_failures(mutations: list[Mutation]) -> set[str]:
    """The named tests that fail with no mutation at all (their node ids, without params)."""
    tests = list(dict.fromkeys(t for m in mutations for t in m.tests))
    code, _, out = _pytest((), tests, "-rfE", name="baseline", timeout=3600)
    if code not in (0, 1):
        raise SystemExit(f"baseline: pytest exited with {code}:\n{out[-2000:]}")
    failed = set()
    for line in out.splitlines():
        kind, _, rest = line.partition(" ")
        if kind in ("FAILED", "ERROR") and rest.startswith("tests/"):
            failed.add(rest.split(" - ", 1)[0].split("[", 1)[0])
    return failed


def _fails(test: str, failed: set[str]) -> bool:
    return any(f == test or f.startswith(test + "::") or test.startswith(f + "::") for f in failed)


def run_mutation(
    mutation: Mutation, tests: tuple[str, ...] | None = None, timeout: float = 900
) -> tuple[bool, float, str]:
    """Apply ``mutation`` to a copy and run its tests (or ``tests``); (caught, s, last line)."""
    code, seconds, out = _pytest(
        mutation.edits, list(tests or mutation.tests), "-x", name=mutation.name, timeout=timeout
    )
    lines = [line for line in out.strip().splitlines() if line.strip()]
    return code == 1, seconds, lines[-1] if lines else ""


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return 0
    if argv == ["--list"]:
        for mutation in MUTATIONS:
            print(f"{mutation.name}: {mutation.guarantee} — {mutation.breakage}")
        return 0
    check = "--no-baseline" not in argv
    names = [a for a in argv if a != "--no-baseline"]
    unknown = sorted(set(names) - {m.name for m in MUTATIONS})
    if unknown:
        raise SystemExit(f"unknown mutation {', '.join(unknown)}: see --list")
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    failed = baseline_failures(chosen) if check else set()
    if failed:
        print("Failing without any mutation (left out below):", flush=True)
        for test in sorted(failed):
            print(f"- `{test}`", flush=True)
        print(flush=True)
    print("| guarantee | breakage | test | caught |\n| --- | --- | --- | --- |", flush=True)
    bad = 0
    for mutation in chosen:
        usable = tuple(t for t in mutation.tests if not _fails(t, failed))
        left_out = [t.split("::")[-1] for t in mutation.tests if t not in usable]
        note = f"; left out, failing unmutated: {', '.join(left_out)}" if left_out else ""
        tests = ", ".join(f"`{t.split('/')[-1]}`" for t in mutation.tests)
        if not usable:
            bad += 1
            verdict, seconds = f"**not judged** (every test fails unmutated{note})", 0.0
        else:
            caught, seconds, last = run_mutation(mutation, usable)
            bad += not caught
            verdict = (
                f"yes{f' ({note[2:]})' if note else ''}" if caught else f"**no** ({last}{note})"
            )
        print(
            f"| {mutation.guarantee} | {mutation.breakage} (`{mutation.name}`) | {tests} | "
            f"{verdict} ({seconds:.0f} s) |",
            flush=True,
        )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
