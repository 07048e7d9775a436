"""The flow's Prefect tasks: thin wrappers of the core's steps, and the run's artifacts.

Tasks pass references (paths, counts), never records or DataFrames: Prefect builds cache keys
from task inputs and records them, so the heavy data stays inside the task that made it.
A chunk task takes two arguments: its :class:`~placeholder_etl.core.results.ChunkJob`, what
decides its rows (the API, the pages, page size and paging, the cache folder, the formula
setting), which is its cache key; and a
:class:`~placeholder_etl.core.results.FetchPolicy`, how patiently they are fetched (timeouts,
retries, requests in flight), left out of the key by its name, :data:`NOT_IN_CACHE_KEY`.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from placeholder_etl.core.assemble import assemble_tables
from placeholder_etl.core.errors import is_transient
from placeholder_etl.core.extract import extract_chunk
from placeholder_etl.core.names import TableFormat
from placeholder_etl.core.output import Output
from placeholder_etl.core.plan import check_plan, count_records
from placeholder_etl.core.prepare import cache_store
from placeholder_etl.core.redact import (
    install_log_redaction,
    redact,
    register_secret,
    register_url_secrets,
)
from placeholder_etl.core.results import ChunkJob, ChunkResult, FetchPolicy, RunResult, StagedTable
from placeholder_etl.core.settings import ClientSettings, FetchSettings, Paging, environment
from placeholder_etl.core.text import duration, plural, reused, size
from placeholder_etl.core.transport import ship_parts
from placeholder_etl.core.urls import is_remote
from placeholder_etl.progress import assembling

__all__ = [
    "NOT_IN_CACHE_KEY",
    "assemble_tables_task",
    "count_records_task",
    "extract_chunk_task",
    "guard_secrets",
    "leave_artifacts",
    "render_report_task",
    "task_options",
]

#: The chunk task's argument that is not part of its cache key (how pages are fetched).
NOT_IN_CACHE_KEY = "how"


def guard_secrets(api_url: str) -> None:
    """As a run (or a task, in a Dask worker process) starts: register its secrets — those
    of the API URL, the webhook URL — and put the redaction filter on every log handler, so
    no log line, in the terminal or in Prefect, shows them."""
    register_url_secrets(api_url)
    webhook = environment().notify_webhook
    if webhook is not None and webhook.get_secret_value():
        url = webhook.get_secret_value()
        register_secret(url)
        register_url_secrets(url)
        if len(path := urlsplit(url).path) >= 8:
            register_secret(path)
    install_log_redaction()
    if console := environment().console:  # a run from the command line: its verbosity
        from placeholder_etl.terminal import shape_console

        shape_console(console)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry transient faults, fail permanent ones at once."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, BaseException) or is_transient(exc)


def task_options(fetch: FetchSettings) -> dict[str, Any]:
    """Retries and caching of the fetching tasks for this run (``Task.with_options``)."""
    options: dict[str, Any] = {
        "retries": fetch.task_retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=fetch.retry_delay),
    }
    if fetch.cache:
        options["cache_expiration"] = timedelta(hours=fetch.cache_hours)
    else:
        options["cache_policy"] = NO_CACHE
    return options


@task(
    name="count-records",
    cache_policy=NO_CACHE,  # asked every run: a changed total must be seen
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    timeout_seconds=600,
)
def count_records_task(
    api_url: str,
    resources: list[str],
    client: ClientSettings,
    paging: Paging,
    max_records: int | None = None,
) -> dict[str, int | None]:
    """How many records each resource has (None when the server does not say); a total
    above ``max_records`` fails the task (:func:`~placeholder_etl.core.plan.check_plan`)."""
    guard_secrets(api_url)
    totals = count_records(api_url, resources, client, paging)
    for resource, total in totals.items():
        get_run_logger().info(
            "%s: %s records", resource, "unknown" if total is None else f"{total:,}"
        )
    if max_records is not None:
        check_plan(totals, max_records)
    return totals


@task(
    name="extract-chunk",
    task_run_name="extract {job.spec.label}",
    # how patiently pages are fetched does not change what a chunk holds: not in its key
    cache_policy=(INPUTS - NOT_IN_CACHE_KEY) + TASK_SOURCE,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    timeout_seconds=600,
)
def extract_chunk_task(job: ChunkJob, how: FetchPolicy) -> ChunkResult:
    """Fetch a chunk of pages, each durable once checked; returns paths and counts.

    On a worker on another machine than the flow, with a local cache, the rows travel back
    compressed in the result (:func:`placeholder_etl.core.transport.ship_parts`).
    """
    spec = job.spec
    guard_secrets(spec.api_url)
    started = time.perf_counter()
    cache = cache_store(job.cache_url)
    result = extract_chunk(spec, cache, how.client, how.in_flight, job.keep_formulas, how.max_age)
    for number, damage in result.pages_damaged.items():
        get_run_logger().warning(
            "%s page %d: cached copy %s, fetching again", spec.resource, number, damage
        )
    if result.note:
        get_run_logger().warning("%s", result.note)
    get_run_logger().info(
        "%s: %d rows from %d pages (%s) in %.2f s (%d retries) on %s",
        spec.label,
        result.rows,
        result.pages,
        reused(result.pages_reused, result.pages_revalidated),
        time.perf_counter() - started,
        result.retries,
        result.worker,
    )
    result = result.model_copy(update={"flow_run_id": str(flow_run.get_id())})
    return ship_parts(result, cache, how.flow_host)


@task(name="assemble-tables", cache_policy=NO_CACHE)
def assemble_tables_task(
    resources: list[str],
    results: list[ChunkResult],
    cache_url: str,
    staging: Output,
    fmt: TableFormat,
) -> dict[str, StagedTable]:
    """Write the tables (and the activity summary with every resource) into the staging.

    A local output folder is written by the flow's own process; an object-store output by a
    task on the task runner (a Dask worker), so the flow's process never reads row data.
    What was staged is returned (the commit's argument): the staging object this task got
    is a copy when it runs on a Dask worker.
    """
    return assemble_tables(resources, results, cache_store(cache_url), staging, fmt, assembling)


@task(name="render-report", cache_policy=NO_CACHE)
def render_report_task(result: RunResult) -> RunResult:
    """Execute the report notebook and link its HTML from an artifact.

    A failure is logged and returned as ``report_error``; it never undoes the load.
    """
    from placeholder_etl.prefect_api import flow_run_ui_url
    from placeholder_etl.report import headline, render_report

    if is_remote(result.output_dir) or result.manifest.format != "csv":
        message = "the run report reads a local CSV output; none was rendered"
        get_run_logger().error("report failed: %s", message)
        return result.model_copy(update={"report_error": message})
    ui = flow_run_ui_url(result.manifest.flow_run_id)  # none from a temporary server
    try:
        path = render_report(Path(result.manifest_file), Path(result.output_dir), flow_run_url=ui)
    except Exception as exc:  # noqa: BLE001 - report problems must not fail a good load
        get_run_logger().error("report failed: %s", exc)
        return result.model_copy(update={"report_error": str(exc)})
    # a file:// link would not open from the UI's http(s) page: the figures and the full path
    create_markdown_artifact(
        key="placeholder-etl-report",
        description="The run report: its headline, and where the HTML is",
        markdown=redact(f"{headline(result.manifest, ui)}\n\n**Report**: `{path}`"),
    )
    get_run_logger().info("report: %s", path)
    return result.model_copy(update={"report_file": str(path)})


def leave_artifacts(result: RunResult) -> None:
    """Log the tables written and leave a table and a markdown artifact on the flow run."""
    manifest = result.manifest
    rows = [
        {"table": name, "file": info.file, "rows": f"{info.rows:,}", "size": size(info.bytes)}
        for name, info in manifest.tables.items()
    ]
    # the source in code style: a bundled API is gone after the run, so no link to it
    source = redact(f"`{manifest.source}`")
    create_table_artifact(
        key="placeholder-etl-tables",
        table=rows,
        description=f"Tables written from {source}, stamped {manifest.created}",
    )
    timings = manifest.timings
    create_markdown_artifact(
        key="placeholder-etl-summary",
        description="What the run fetched and wrote, and where",
        markdown=redact(
            "\n".join(
                [
                    f"# placeholder-etl run `{manifest.created}`",
                    (
                        f"From {source}: {plural(manifest.pages, 'page')} in "
                        f"{plural(manifest.chunks, 'task')} ({manifest.cached_chunks:,} from "
                        f"cache, {reused(manifest.pages_reused, manifest.pages_revalidated, manifest.pages)}), "
                        f"{plural(manifest.retries, 'retry', 'retries')}."
                    ),
                    "",
                    "| table | file | rows | size |",
                    "| --- | --- | ---: | ---: |",
                    *(
                        f"| {r['table']} | `{r['file']}` | {r['rows']} | {r['size']} |"
                        for r in rows
                    ),
                    "",
                    (
                        f"Took {duration(timings.total_s)}: counting "
                        f"{duration(timings.count_s)}, extracting {duration(timings.extract_s)}, "
                        f"assembling and committing {duration(timings.load_s)}."
                    ),
                    "",
                    f"Manifest: `{result.manifest_file}`",
                ]
            )
        ),
    )
    get_run_logger().info("wrote %s", ", ".join(f"{r['file']} ({r['rows']} rows)" for r in rows))
