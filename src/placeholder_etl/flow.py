"""The Prefect 3 flow: count → plan → extract (mapped) → assemble → check → commit → publish.

The steps are :mod:`placeholder_etl.core.pipeline` functions, wrapped in tasks by
:mod:`placeholder_etl.tasks`; the task runner (threads or Dask) is chosen once the records are
counted (:mod:`placeholder_etl.task_runner`), so one flow run does everything and carries every
log and artifact.

No ``from __future__ import annotations`` here: ``flow.serve`` runs each flow run in a spawned
process that gets the flow by cloudpickle, and cloudpickle copies ``etl``'s function by value
(the module attribute ``etl`` is the Flow, not the function) with only the globals its body
uses. Prefect validates the parameters against the annotations; as strings they would name
types (``ResourceNames``, ``FetchSettings``) that the copy cannot resolve.
"""

import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.context import FlowRunContext
from prefect.futures import wait
from prefect.runtime import flow_run

from placeholder_etl import __version__
from placeholder_etl.cluster import check_workers, cluster_threads, make_task_runner
from placeholder_etl.core import fastpath, pipeline
from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.names import manifest_name
from placeholder_etl.core.resources import resolve_resources
from placeholder_etl.core.results import ChunkResult, ChunkSpec, RunResult, Timings
from placeholder_etl.core.settings import (
    DEFAULT_API_URL,
    DEFAULT_OUTPUT_DIR,
    DEFAULT_RESOURCES,
    ClusterSettings,
    FetchSettings,
    OutputSettings,
    ResourceNames,
    environment,
)
from placeholder_etl.core.store import Store
from placeholder_etl.core.urls import check_api_url
from placeholder_etl.notify import notify_failure
from placeholder_etl.progress import track
from placeholder_etl.runtime import prepare_process
from placeholder_etl.task_runner import ChosenAtStart
from placeholder_etl.tasks import (
    assemble_tables_task,
    count_records_task,
    extract_chunk_task,
    guard_secrets,
    publish,
    render_report_task,
    task_options,
)

__all__ = ["etl"]


@flow(
    name="placeholder-etl",
    task_runner=ChosenAtStart(),
    on_failure=[notify_failure],
    on_crashed=[notify_failure],
)
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
        api_url: root of a json-server-style API.
        output_dir: where the tables and the manifest go.
        resources: ``users`` (default), a comma list such as ``users,posts``, or ``all``.
        fetch: page size and paging, requests in flight, timeouts, retries, the page cache.
        output: file format, formula guarding, the HTML report.
        cluster: threads or Dask, and which Dask cluster.

    Returns:
        The manifest (also written as ``manifest_<timestamp>.json``) and where things are.

    When ``$PLACEHOLDER_ETL_NOTIFY_WEBHOOK`` is set, a run that fails or crashes (after its
    retries) posts a Slack-compatible message there (:mod:`placeholder_etl.notify`).
    """
    prepare_process()  # log filters and Arrow's allocator, in this process (once)
    guard_secrets(api_url)  # before anything is logged that could show them
    logger = get_run_logger()
    started, clock = datetime.now(UTC), time.perf_counter()
    logger.info("placeholder-etl %s from %s", __version__, Path(__file__).parent)
    api_url, names = _api_root(api_url), list(resolve_resources(resources))
    staging = pipeline.output_staging(output_dir)  # a clear error for an unusable URL
    cache = pipeline.cache_store(fetch.cache_url(output_dir))
    max_age = fetch.cache_hours * 3600
    for leftover in pipeline.remove_leftovers(staging, cache, max_age):
        logger.info("removed %s left by an earlier run", leftover)
    options = task_options(fetch)
    threading.Thread(target=_warm_up, args=(cluster,), daemon=True).start()  # while counting

    count = count_records_task.with_options(**options)
    # a total above --max-records fails the count, before any page is fetched
    totals = count(api_url, names, fetch.client, fetch.paging, fetch.max_records)
    counted = time.perf_counter()
    slots = _start_task_runner(cluster, totals)
    per_task = fetch.pages_per_task or pipeline.auto_pages_per_chunk(totals, fetch.page_size, slots)
    chunks = pipeline.plan_chunks(
        api_url, totals, fetch.page_size, per_task, fetch.paging, fetch.max_records
    )
    logger.info(
        "%d pages of up to %d records in %d tasks",
        pipeline.total_pages(totals, fetch.page_size),
        fetch.page_size,
        len(chunks),
    )
    run_id = f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    with pipeline.run_cache(cache, fetch.cache, run_id) as pages:
        extract = extract_chunk_task.with_options(**options)
        chunk_args = {
            "cache_url": pages.url,
            # Parquet keeps text as it is: formula guarding is for spreadsheets opening CSV
            "keep_formulas": output.keep_formulas or output.format == "parquet",
            "client": fetch.client,
            "in_flight": fetch.in_flight,
            "max_age": max_age if fetch.cache else None,
            # the flow's host; environment().ship_parts ships parts as if every worker were remote
            "flow_host": "" if environment().ship_parts else socket.gethostname(),
        }
        futures = extract.map(chunks, **{k: unmapped(v) for k, v in chunk_args.items()})
        planned = None if None in totals.values() else pipeline.total_pages(totals, fetch.page_size)
        track(futures, pages, chunks, planned, chunk_args["keep_formulas"])
        wait(futures)  # on a failure, no task is left writing pages after this run ends
        results = futures.result()
        results = _received(extract, chunks, results, pages, chunk_args)
        extracted = time.perf_counter()

        for resource in pipeline.unordered_resources(results):
            logger.warning("%s: ids out of order or repeated; sorting", resource)
        with staging:
            assemble = (names, results, pages.url, staging, output.format)
            if staging.assembles_on_runner:  # an object store: no rows in this process
                staged = assemble_tables_task.submit(*assemble).result()
            else:  # a local folder is written by this process
                staged = assemble_tables_task(*assemble)
            pipeline.check_totals(totals, staged)
            timings = Timings(
                count_s=round(counted - clock, 3),
                extract_s=round(extracted - counted, 3),
                load_s=round(time.perf_counter() - extracted, 3),
                total_s=round(time.perf_counter() - clock, 3),
            )
            manifest = pipeline.build_manifest(
                api_url=api_url,
                resources=names,
                results=results,
                tables=staged,
                started=started,
                timings=timings,
                flow_run_id=str(flow_run.get_id()),
                fmt=output.format,
            )
            manifest = pipeline.commit(staging, staged, manifest, clock)

    out = staging.store
    result = RunResult(
        manifest=manifest,
        output_dir=out.url,
        manifest_file=out.url_of(out.path(manifest_name(manifest.created))),
    )
    publish(result)
    return render_report_task(result) if output.report else result


def _api_root(api_url: str) -> str:
    """The API root, checked before any work (scheme, host, port).

    Raises:
        PermanentError: not an http(s) URL with a host (its secrets hidden).
    """
    try:
        return check_api_url(api_url)
    except ValueError as exc:
        raise PermanentError(f"api_url: {exc}") from None


def _received(
    extract: Any,
    chunks: list[ChunkSpec],
    results: list[ChunkResult],
    cache: Store,
    args: dict[str, Any],
) -> list[ChunkResult]:
    """Write shipped rows beside the flow; fetch again (together) the cached chunks whose
    pages are gone or damaged (each such page is then fetched again and logged)."""
    received = [pipeline.receive_parts(r, cache) for r in results]
    this_run = str(flow_run.get_id())  # this run's chunks checked their pages already
    gone = [
        i
        for i, result in enumerate(received)
        if result.flow_run_id != this_run and pipeline.parts_damaged(result, cache)
    ]
    if gone:
        get_run_logger().info(
            "%d cached chunks' pages are gone or damaged, fetching them again", len(gone)
        )
        again = extract.with_options(refresh_cache=True).map(
            [chunks[i] for i in gone], **{k: unmapped(v) for k, v in args.items()}
        )
        for i, fresh in zip(gone, again.result(), strict=True):
            received[i] = pipeline.receive_parts(fresh, cache)
    return received


def _warm_up(cluster: ClusterSettings) -> None:
    """Pay one-time costs in the background: Arrow's first page, Dask's import."""
    fastpath.warm_up()
    if cluster.runner == "dask":
        import prefect_dask  # noqa: F401


def _start_task_runner(cluster: ClusterSettings, totals: dict[str, int | None]) -> int:
    """Choose the task runner for a run of this size; on Dask, start and check the cluster.

    Returns:
        Task slots: the cluster's worker threads (Dask) or the thread pool's size.
    """
    context = FlowRunContext.get()
    records = None if None in totals.values() else sum(totals.values())  # type: ignore[arg-type]
    runner = context.task_runner if context else None
    if isinstance(runner, ChosenAtStart):  # the flow's own; a with_options runner is kept
        runner = runner.use(make_task_runner(cluster, records))
    client = getattr(runner, "client", None)  # a DaskTaskRunner starts its cluster here
    if client is None:
        return cluster.slots
    workers = check_workers(client)
    get_run_logger().info(
        "Dask cluster: %d workers, %d threads, dashboard %s",
        len(workers),
        cluster_threads(client),
        client.dashboard_link,
    )
    return cluster_threads(client)
