"""The Prefect 3 flow: prepare → count → extract (mapped) → assemble → check → commit → publish.

The flow is wiring: each step is a core function (:mod:`placeholder_etl.core`: the run's
decisions in :mod:`~placeholder_etl.core.run`) or a task wrapping one
(:mod:`placeholder_etl.tasks`). The task runner (threads or Dask, sized for the run) is started
inside the run once the records are counted (:func:`placeholder_etl.cluster.task_runner_for`),
so one flow run does everything and carries every log and artifact.

No ``from __future__ import annotations`` here: ``flow.serve`` runs each flow run in a spawned
process that gets the flow by cloudpickle, and cloudpickle copies ``etl``'s function by value
(the module attribute ``etl`` is the Flow, not the function) with only the globals its body
uses. Prefect validates the parameters against the annotations; as strings they would name
types (``ResourceNames``, ``FetchSettings``) that the copy cannot resolve.
"""

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner

from placeholder_etl import __version__
from placeholder_etl.cluster import task_runner_for, warm_up_in_background
from placeholder_etl.core.assemble import check_totals, unordered_resources
from placeholder_etl.core.manifest import commit
from placeholder_etl.core.plan import planned_pages
from placeholder_etl.core.resources import tables_of
from placeholder_etl.core.results import ChunkResult, ChunkSpec, RunResult, StagedTable
from placeholder_etl.core.run import Run, start_run
from placeholder_etl.core.settings import (
    DEFAULT_API_URL,
    DEFAULT_OUTPUT_DIR,
    DEFAULT_RESOURCES,
    ClusterSettings,
    FetchSettings,
    OutputSettings,
    ResourceNames,
)
from placeholder_etl.core.store import Store
from placeholder_etl.core.text import plural
from placeholder_etl.core.transport import parts_damaged, receive_parts
from placeholder_etl.lineage import record_lineage
from placeholder_etl.notify import notify_failure
from placeholder_etl.progress import phase, track
from placeholder_etl.runtime import prepare_process
from placeholder_etl.tasks import (
    assemble_tables_task,
    count_records_task,
    extract_chunk_task,
    guard_secrets,
    leave_artifacts,
    render_report_task,
    task_options,
)

__all__ = ["etl"]


@flow(name="placeholder-etl", on_failure=[notify_failure], on_crashed=[notify_failure])
def etl(
    api_url: str = DEFAULT_API_URL,
    output_dir: str = DEFAULT_OUTPUT_DIR,
    resources: ResourceNames = DEFAULT_RESOURCES,
    fetch: FetchSettings = FetchSettings(),  # noqa: B008 - frozen models, safe as defaults
    output: OutputSettings = OutputSettings(),  # noqa: B008
    cluster: ClusterSettings = ClusterSettings(),  # noqa: B008
) -> RunResult:
    """Download JSONPlaceholder resources, check them, write one CSV per table and a manifest.

    Args:
        api_url: Root of a json-server-style API.
        output_dir: Where the tables and the manifest go: a folder or a URL (s3://…).
        resources: Which resources: users (the default), a comma list such as users,posts, or all.
        fetch: Page size and paging, requests in flight, timeouts, retries, the page cache.
        output: File format, formula guarding, the HTML report.
        cluster: Threads or Dask, and which Dask cluster.

    Returns:
        The manifest (also written as ``manifest_<timestamp>.json``) and where things are.

    When ``$PLACEHOLDER_ETL_NOTIFY_WEBHOOK`` is set, a run that fails or crashes (after its
    retries) posts a Slack-compatible message there (:mod:`placeholder_etl.notify`).
    """
    prepare_process()  # log filters and Arrow's allocator, in this process (once)
    guard_secrets(api_url)  # before anything is logged that could show them
    run = prepare(api_url, output_dir, resources, fetch, output)
    warm_up_in_background(cluster)  # Arrow's first page, Dask's import: while counting
    count = count_records_task.with_options(**task_options(fetch))
    totals = count(run.api_url, run.resources, fetch.client, fetch.paging, fetch.max_records)
    run.mark("counted")
    with task_runner_for(cluster, totals) as (runner, slots), run.page_cache() as pages:
        results = extract(runner, run, run.plan(totals, slots), pages)
        run.mark("extracted")
        with run.output:  # a failure in the block removes what was staged
            staged = assemble(runner, run, results, pages)
            check_totals(totals, staged)
            manifest = run.manifest(results, staged, str(flow_run.get_id()))
            manifest = commit(run.output, staged, manifest, run.clock)
    result = run.result(manifest)
    leave_artifacts(result)
    record_lineage(result)  # each table and the manifest as a Prefect asset, committed only
    if output.report:
        phase("rendering the report")
        result = render_report_task(result)
    return result


def prepare(
    api_url: str,
    output_dir: str,
    resources: ResourceNames,
    fetch: FetchSettings,
    output: OutputSettings,
) -> Run:
    """Check the API URL, open the output and the page cache, clear what killed runs left."""
    logger = get_run_logger()
    logger.info("placeholder-etl %s from %s", __version__, Path(__file__).parent)
    run = start_run(api_url, output_dir, resources, fetch, output)
    for leftover in run.remove_leftovers():
        logger.info("removed %s left by an earlier run", leftover)
    return run


def extract(
    runner: TaskRunner[Any], run: Run, chunks: list[ChunkSpec], pages: Store
) -> list[ChunkResult]:
    """Fetch every chunk on ``runner``, showing progress; then fetch again (together) the
    cached chunks whose pages are gone or damaged (each such page is fetched again, logged)."""
    logger = get_run_logger()
    planned = planned_pages(chunks)
    logger.info(
        "%s of up to %d records in %s",
        "pages unknown" if planned is None else plural(planned, "page"),
        run.fetch.page_size,
        plural(len(chunks), "task"),
    )
    task = extract_chunk_task.with_options(**task_options(run.fetch))
    policy = run.fetch_policy()
    how = unmapped(policy)
    futures = runner.map(task, {"job": run.jobs(chunks, pages), "how": how})
    track(futures, pages, chunks, planned, run.keep_formulas, policy.max_age)
    wait(futures)  # on a failure, no task is left writing pages after this run ends
    results = [receive_parts(r, pages) for r in futures.result()]
    this_run = str(flow_run.get_id())  # this run's chunks checked their pages already
    gone = [
        i for i, r in enumerate(results) if r.flow_run_id != this_run and parts_damaged(r, pages)
    ]
    if gone:
        logger.info("%d cached chunks' pages are gone or damaged, fetching them again", len(gone))
        again = runner.map(
            task.with_options(refresh_cache=True),
            {"job": run.jobs([chunks[i] for i in gone], pages), "how": how},
        )
        for i, fresh in zip(gone, again.result(), strict=True):
            results[i] = receive_parts(fresh, pages)
    for resource in unordered_resources(results):
        logger.warning("%s: ids out of order or repeated; sorting", resource)
    return results


def assemble(
    runner: TaskRunner[Any], run: Run, results: list[ChunkResult], pages: Store
) -> dict[str, StagedTable]:
    """Write the tables into the run's staging: in this process for a local folder, on the
    task runner for an object store (no rows pass through this process)."""
    phase(f"assembling {plural(len(tables_of(run.resources)), 'table')}")
    args = {
        "resources": run.resources,
        "results": results,
        "cache_url": pages.url,
        "staging": run.output,
        "fmt": run.out.format,
    }
    if run.output.assembles_on_runner:
        return runner.submit(assemble_tables_task, args).result()
    return assemble_tables_task(**args)
