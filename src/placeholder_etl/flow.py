"""The Prefect 3 flow: extract → check → transform → load, on threads or Dask.

Read it top to bottom: :func:`etl` picks the task runner and starts :func:`pipeline`, which
counts each resource, maps :func:`extract_chunk_task` over chunks of pages, joins the part
files into tables, writes the manifest and renames everything into place at once.

Tasks pass references (paths, counts), never records or DataFrames (see GUIDE.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.runtime import flow_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from placeholder_etl import pipeline
from placeholder_etl.client import DEFAULT_API_URL, ApiClient, ClientSettings, Paging, ordered_map
from placeholder_etl.cluster import (
    ClusterKind,
    check_workers,
    cluster_threads,
    dask_runner_kwargs,
    fit_local_cluster,
)
from placeholder_etl.errors import PermanentError, is_transient
from placeholder_etl.load import Staging, manifest_bytes, remove_stale_temps
from placeholder_etl.notify import notify_failure
from placeholder_etl.prefect_api import export_api_url
from placeholder_etl.redact import redact_url
from placeholder_etl.resources import RESOURCE_NAMES, resolve_resources
from placeholder_etl.settings import default_cache_dir, local_slots

__all__ = ["etl", "make_task_runner", "pipeline_flow"]

Runner = Literal["local", "dask"]
CACHE_POLICY = INPUTS + TASK_SOURCE


class _ThreadTimeoutNotice(logging.Filter):
    """Drop Prefect's per-task notice that timeouts cannot interrupt a worker thread.

    Every blocking call here has its own deadline (the request timeout), so the task's
    ``timeout_seconds`` is a backstop and the notice on every task run is noise.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout of %s seconds configured")


logging.getLogger("prefect.task_runs").addFilter(_ThreadTimeoutNotice())


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry transient faults, fail permanent ones at once."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, BaseException) or is_transient(exc)


_RETRYING: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_if_transient,
}


@task(
    name="count-records",
    cache_policy=CACHE_POLICY,
    cache_expiration=timedelta(hours=1),
    timeout_seconds=600,
    **_RETRYING,
)
def count_records(
    api_url: str, resources: list[str], settings: ClientSettings, paging: Paging, cache_dir: str
) -> dict[str, int | None]:
    """How many records each resource has (None when the server does not say).

    The resources are asked at once. ``cache_dir`` is only part of the cache key: a fresh
    ``--cache-dir`` is a fresh cache.
    """
    with ApiClient(api_url, settings) as client:
        counts = ordered_map(lambda name: client.count(name, 1, paging), resources, len(resources))
        totals = dict(zip(resources, counts, strict=True))
    for resource, total in totals.items():
        get_run_logger().info("%s: %s records", resource, "unknown" if total is None else total)
    return totals


@task(
    name="extract-chunk",
    task_run_name="extract {spec.label}",
    cache_policy=CACHE_POLICY,
    cache_expiration=timedelta(hours=1),
    timeout_seconds=600,
    **_RETRYING,
)
def extract_chunk_task(
    spec: pipeline.ChunkSpec,
    parts_dir: str,
    settings: ClientSettings,
    in_flight: int,
    keep_formulas: bool = False,
    flow_host: str = "",
) -> dict[str, Any]:
    """Fetch a chunk of pages and write its part files; returns paths and counts.

    On a worker on another machine than the flow (``flow_host``) the parts travel back
    compressed in the result (see :func:`placeholder_etl.pipeline.ship_parts`).
    """
    started = time.perf_counter()
    result = pipeline.extract_chunk(spec, Path(parts_dir), settings, in_flight, keep_formulas)
    result = pipeline.ship_parts(result, flow_host)
    result["fetched_in"] = str(flow_run.get_id())
    get_run_logger().info(
        "%s: %d rows from %d pages in %.2f s (%d retries) on %s",
        spec.label,
        result["rows"],
        result["pages"],
        time.perf_counter() - started,
        result["retries"],
        result["worker"],
    )
    return result


@task(name="assemble-table", task_run_name="assemble {table}", cache_policy=NO_CACHE)
def assemble_table_task(
    table: str, parts: list[str], dest: str, rows: int, ordered: bool
) -> dict[str, Any]:
    """Join a table's part files into its (temporary) output file."""
    return pipeline.assemble_table(table, parts, Path(dest), rows, ordered)


@task(name="build-activity", cache_policy=NO_CACHE)
def build_activity_task(flat_tables: dict[str, str], dest: str) -> dict[str, Any]:
    """Summarise activity per user from the flattened tables."""
    return pipeline.build_activity(flat_tables, Path(dest))


@task(name="render-report", cache_policy=NO_CACHE)
def render_report_task(manifest: str, output_dir: str) -> dict[str, str]:
    """Execute the report notebook and link its HTML from an artifact.

    A failure is logged and returned as ``report_error``; it never undoes the load.
    """
    from placeholder_etl.report import render_report

    try:
        path = render_report(Path(manifest), Path(output_dir))
    except Exception as exc:  # noqa: BLE001 - report problems must not fail a good load
        get_run_logger().error("report failed: %s", exc)
        return {"report_error": str(exc)}
    create_link_artifact(
        key="placeholder-etl-report",
        link=path.as_uri(),
        link_text=path.name,
        description="The run report (HTML, rendered from notebooks/05-run-report.ipynb)",
    )
    get_run_logger().info("report: %s", path)
    return {"report": str(path)}


@flow(name="extract-transform-load")
def pipeline_flow(
    api_url: str,
    output_dir: str,
    resources: list[str],
    page_size: int,
    paging: Paging,
    pages_per_task: int | None,
    in_flight: int,
    slots: int,
    request_timeout: float,
    request_retries: int,
    task_retries: int,
    retry_delay: float,
    use_cache: bool,
    cache_dir: str,
    cache_hours: float,
    report: bool,
    keep_formulas: bool,
    run_id: str,
    dask_processes: bool | None = None,
    dask_threads: int | None = None,
) -> dict[str, Any]:
    """Run the pipeline on the task runner this flow was given (see :func:`etl`)."""
    logger = get_run_logger()
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    out = Path(output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output dir {out} is a file")
    for stale in remove_stale_temps(out) + remove_stale_temps(Path(cache_dir)):
        logger.info("removed %s left by an earlier run", stale)
    settings = ClientSettings(timeout=request_timeout, retries=request_retries)
    parts_dir = Path(cache_dir).expanduser() / "parts"
    options: dict[str, Any] = {
        "retries": task_retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=retry_delay),
    }
    if use_cache:
        options["cache_expiration"] = timedelta(hours=cache_hours)
    else:
        options["cache_policy"] = NO_CACHE
        parts_dir = parts_dir / f"run-{run_id}"
    try:
        # Counted here, in the flow's process, so the Dask cluster can be sized to the run.
        totals = count_records.with_options(**options)(
            api_url, resources, settings, paging, cache_dir
        )
        counted = time.perf_counter()
        slots = _prepare_workers(slots, totals, dask_processes, dask_threads)
        extractor = extract_chunk_task.with_options(**options)
        per_task = pages_per_task or pipeline.auto_pages_per_chunk(totals, page_size, slots)
        chunks = pipeline.plan_chunks(api_url, totals, page_size, per_task, paging)
        logger.info(
            "%d pages of up to %d records in %d tasks",
            pipeline.total_pages(totals, page_size),
            page_size,
            len(chunks),
        )
        chunk_args = {
            "parts_dir": str(parts_dir),
            "settings": settings,
            "in_flight": in_flight,
            "keep_formulas": keep_formulas,
            # PLACEHOLDER_ETL_SHIP_PARTS=1 ships parts as if every worker were remote (tests)
            "flow_host": ""
            if os.environ.get("PLACEHOLDER_ETL_SHIP_PARTS")
            else socket.gethostname(),
        }
        results = extractor.map(chunks, **{k: unmapped(v) for k, v in chunk_args.items()}).result()
        results = [pipeline.receive_parts(r, parts_dir) for r in results]
        results = _refetch_missing(extractor, chunks, results, chunk_args)
        extracted = time.perf_counter()

        staging = Staging(out)
        try:
            tables = _assemble(resources, chunks, results, staging)
            _check_totals(totals, tables)
            manifest = {
                "source": redact_url(api_url),
                "resources": resources,
                "flow_run_id": str(flow_run.get_root_flow_run_id() or flow_run.get_id()),
                "started": started_at,
                "tables": tables,
                "chunks": len(chunks),
                "pages": sum(r["pages"] for r in results),
                "contract": {
                    "records_checked": {
                        resource: sum(r["rows"] for r in results if r["resource"] == resource)
                        for resource in resources
                    },
                    "breaches": 0,  # any breach fails the run before this point
                },
                "cached_chunks": sum(r["fetched_in"] != str(flow_run.get_id()) for r in results),
                "retries": sum(r["retries"] for r in results),
                "workers": sorted({r["worker"] for r in results}),
                "timings": {
                    "count_s": round(counted - started, 3),
                    "extract_s": round(extracted - counted, 3),
                    "load_s": round(time.perf_counter() - extracted, 3),
                    "total_s": round(time.perf_counter() - started, 3),
                },
            }

            def finish(stamp: str) -> bytes:
                """Called under the output dir's lock with the stamp the files get."""
                manifest["created"] = stamp
                for table, info in tables.items():
                    info["file"] = f"{table}_{stamp}.csv"
                manifest["timings"]["total_s"] = round(time.perf_counter() - started, 3)
                return manifest_bytes(manifest)

            stamp = staging.commit(finish)
        except BaseException:
            staging.abort()
            raise
    finally:
        if not use_cache:  # this run's own parts, kept by no cache
            shutil.rmtree(parts_dir, ignore_errors=True)
    manifest["manifest"] = str(out / f"manifest_{stamp}.json")
    _publish(manifest)
    if report:
        manifest.update(render_report_task(manifest["manifest"], str(out)))
    return manifest


def _check_totals(totals: dict[str, int | None], tables: dict[str, dict]) -> None:
    """Every resource must hold as many distinct records as the API said it had."""
    for resource, total in totals.items():
        rows = tables[pipeline.TABLES[resource][0]]["rows"]
        if total is not None and rows != total:
            raise PermanentError(
                f"{resource}: the API reported {total} records (X-Total-Count) but its pages "
                f"held {rows} distinct records; the data changed during the run or the server "
                "pages inconsistently, so nothing was written — run again"
            )


def _refetch_missing(extractor, chunks, results, chunk_args: dict[str, Any]) -> list[dict]:
    """Cached chunk results whose part files were deleted are fetched again."""
    for i, (spec, result) in enumerate(zip(chunks, results, strict=True)):
        if not all(Path(p).exists() for p in result["parts"].values()):
            get_run_logger().info("%s: cached parts are gone, fetching again", spec.label)
            fresh = extractor.with_options(refresh_cache=True)(spec, **chunk_args)
            results[i] = pipeline.receive_parts(fresh, Path(chunk_args["parts_dir"]))
    return results


def _assemble(resources, chunks, results, staging: Staging) -> dict[str, dict]:
    """Join part files into staged tables; add the activity summary when all are there.

    These tasks run in the flow's own process (they are called, not submitted), because the
    output dir is on the flow's machine, which a remote Dask worker cannot write to.
    """
    jobs = []
    for resource in resources:
        mine = [r for spec, r in zip(chunks, results, strict=True) if spec.resource == resource]
        ordered = pipeline.check_chunks(resource, mine)
        if not ordered:
            get_run_logger().warning("%s: ids out of order or repeated; sorting", resource)
        rows = sum(r["rows"] for r in mine)
        for table in pipeline.TABLES[resource]:
            dest = staging.temp_path(table)
            jobs.append((table, [r["parts"][table] for r in mine], str(dest), rows, ordered))
    tables = {job[0]: {**assemble_table_task(*job), "staged": job[2]} for job in jobs}
    if set(resources) == set(RESOURCE_NAMES):
        flat = {t: tables[t]["staged"] for t in ("users_flat", *RESOURCE_NAMES[1:])}
        dest = staging.temp_path(pipeline.ACTIVITY_TABLE)
        info = build_activity_task(flat, str(dest))
        tables[pipeline.ACTIVITY_TABLE] = info
    for info in tables.values():
        info.pop("staged", None)
        info.pop("table", None)
    return tables


def _publish(manifest: dict[str, Any]) -> None:
    """Log the result and leave a table and a markdown artifact on the flow run."""
    rows = [
        {"table": t, "file": i["file"], "rows": i["rows"], "bytes": i["bytes"]}
        for t, i in manifest["tables"].items()
    ]
    create_table_artifact(
        key="placeholder-etl-tables",
        table=rows,
        description=f"Tables written from {manifest['source']}",
    )
    lines = [f"| `{r['table']}` | `{r['file']}` | {r['rows']:,} |" for r in rows]
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in manifest["timings"].items())
    create_markdown_artifact(
        key="placeholder-etl-summary",
        markdown="\n".join(
            [
                f"# placeholder-etl run `{manifest['created']}`",
                (
                    f"Source: {manifest['source']}; {manifest['pages']} pages in "
                    f"{manifest['chunks']} tasks ({manifest['cached_chunks']} from cache), "
                    f"{manifest['retries']} retries."
                ),
                "",
                "| table | file | rows |",
                "| --- | --- | ---: |",
                *lines,
                "",
                f"Timings: {timings}. Manifest: `{manifest['manifest']}`.",
            ]
        ),
    )
    get_run_logger().info("wrote %s", ", ".join(f"{r['file']} ({r['rows']} rows)" for r in rows))


def quiet_dask_logs() -> None:
    """Dask's scheduler and workers log every connection at INFO; keep warnings and errors."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # inherited by workers
    logging.getLogger("distributed").setLevel(logging.WARNING)


def make_task_runner(runner: Runner, **dask_options: Any):
    """The task runner: threads (``local``), or a ``DaskTaskRunner`` (``dask``).

    ``dask_options`` go to :func:`placeholder_etl.cluster.dask_runner_kwargs`: a
    LocalCluster by default, an existing scheduler with ``address``, or Saturn Cloud's cluster.
    """
    if runner == "local":
        workers, threads = dask_options.get("workers"), dask_options.get("threads")
        return ThreadPoolTaskRunner(max_workers=(workers or 1) * (threads or local_slots()))
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        export_api_url()
        quiet_dask_logs()
        return DaskTaskRunner(**dask_runner_kwargs(**dask_options))
    raise ValueError(f"unknown runner {runner!r}: use 'local' or 'dask'")


def _prepare_workers(
    default_slots: int,
    totals: dict[str, int | None],
    processes: bool | None,
    threads: int | None,
) -> int:
    """On Dask: start the cluster, sized to the run, check every worker can run the tasks.

    Returns:
        The cluster's worker threads (``default_slots`` when not on Dask).
    """
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or "prefect_dask" not in sys.modules:  # not on Dask
        return default_slots
    from prefect_dask import DaskTaskRunner

    if not isinstance(context.task_runner, DaskTaskRunner):
        return default_slots
    records = None if None in totals.values() else sum(totals.values())  # type: ignore[arg-type]
    fit_local_cluster(context.task_runner, records, processes, threads)
    client = context.task_runner.client  # connects (or starts the cluster) now
    workers = check_workers(client)
    get_run_logger().info(
        "Dask cluster: %d workers, %d threads, dashboard %s",
        len(workers),
        cluster_threads(client),
        client.dashboard_link,
    )
    return cluster_threads(client)


@flow(
    name="placeholder-etl",
    on_failure=[notify_failure],
    on_crashed=[notify_failure],
)
def etl(
    api_url: str = DEFAULT_API_URL,
    output_dir: str = "output",
    resources: str = "users",
    page_size: int = 1000,
    paging: Paging = "page",
    runner: Runner = "dask",
    dask_workers: int | None = None,
    dask_threads: int | None = None,
    dask_address: str | None = None,
    dask_cluster: ClusterKind | None = None,
    dask_worker_size: str | None = None,
    dask_scheduler_size: str | None = None,
    dask_adapt_min: int | None = None,
    dask_adapt_max: int | None = None,
    dask_processes: bool | None = None,
    pages_per_task: int | None = None,
    in_flight: int = 16,
    request_timeout: float = 10.0,
    request_retries: int = 3,
    task_retries: int = 2,
    retry_delay: float = 2.0,
    use_cache: bool = True,
    cache_dir: str | None = None,
    cache_hours: float = 1.0,
    report: bool = False,
    keep_formulas: bool = False,
) -> dict[str, Any]:
    """Download JSONPlaceholder resources, transform them with pandas, save CSV.

    Args:
        api_url: root of a json-server-style API.
        output_dir: where the CSV files and the manifest go.
        resources: ``users`` (default), a comma list such as ``users,posts``, or ``all``.
        page_size: records per request.
        paging: ``page`` (``_page``/``_limit``) or ``start`` (``_start``/``_limit``).
        runner: ``dask`` (a DaskTaskRunner on a LocalCluster) or ``local`` (threads).
        dask_workers: LocalCluster worker processes (default: one per core).
        dask_threads: task threads per worker (default 1; each task has ``in_flight``
            requests in flight).
        dask_address: an existing Dask scheduler (``tcp://host:8786``) to run the tasks on
            instead of starting a cluster.
        dask_cluster: ``local`` (LocalCluster) or ``saturn`` (``dask_saturn.SaturnCluster``);
            default ``saturn`` inside a Saturn Cloud resource, else ``local``.
        dask_worker_size: Saturn worker instance size (e.g. ``large``).
        dask_scheduler_size: Saturn scheduler instance size.
        dask_adapt_min: adaptive scaling: fewest workers.
        dask_adapt_max: adaptive scaling: most workers.
        dask_processes: LocalCluster workers as processes (True) or one worker in the
            flow's process (False); default: processes from 200,000 records on
            (:data:`placeholder_etl.cluster.PROCESSES_FROM_RECORDS`) or when
            ``dask_workers`` is given, else the flow's process.
        pages_per_task: pages one task fetches (default: about two tasks per worker thread).
        in_flight: requests in flight per task.
        request_timeout: seconds to wait for each response.
        request_retries: retries of one request on transient faults (backoff, Retry-After).
        task_retries: Prefect retries of a task after a transient fault.
        retry_delay: seconds before the first task retry; doubles each time, ±50 % jitter.
        use_cache: reuse pages fetched by an earlier run within ``cache_hours``.
        cache_dir: where fetched pages are kept (default ``~/.cache/placeholder-etl``).
        cache_hours: how long fetched pages stay valid.
        report: also render ``report_<timestamp>.html`` from ``notebooks/05-run-report.ipynb``.
        keep_formulas: write text starting with ``=``, ``+``, ``-`` or ``@`` as it is; by
            default it is prefixed with ``'`` so spreadsheets do not run it (CSV injection).

    Returns:
        The run manifest (also written as ``manifest_<timestamp>.json``).

    When ``$PLACEHOLDER_ETL_NOTIFY_WEBHOOK`` is set, a run that fails or crashes (after its
    retries) posts a Slack-compatible message there (:mod:`placeholder_etl.notify`).
    """
    names = list(resolve_resources(resources))
    if page_size < 1 or in_flight < 1:
        raise ValueError("page_size and in_flight must be at least 1")
    if dask_processes is None and dask_workers:
        dask_processes = True  # asking for workers is asking for worker processes
    slots = (dask_workers or local_slots()) * (dask_threads or 1)
    task_runner = make_task_runner(
        runner,
        cluster=dask_cluster,
        address=dask_address,
        workers=dask_workers,
        threads=dask_threads,
        worker_size=dask_worker_size,
        scheduler_size=dask_scheduler_size,
        adapt_min=dask_adapt_min,
        adapt_max=dask_adapt_max,
        processes=dask_processes,
    )
    # No heartbeat thread of its own for the subflow: this flow's heartbeat already covers the
    # process, and Prefect joins a heartbeat thread that sleeps in 1 s steps, so every flow
    # run ends up to a second late (half a second on average).
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return pipeline_flow.with_options(task_runner=task_runner)(
            api_url=api_url.rstrip("/"),
            output_dir=output_dir,
            resources=names,
            page_size=page_size,
            paging=paging,
            pages_per_task=pages_per_task,
            in_flight=in_flight,
            slots=slots,
            request_timeout=request_timeout,
            request_retries=request_retries,
            task_retries=task_retries,
            retry_delay=retry_delay,
            use_cache=use_cache,
            cache_dir=str(Path(cache_dir).expanduser() if cache_dir else default_cache_dir()),
            cache_hours=cache_hours,
            report=report,
            keep_formulas=keep_formulas,
            dask_processes=dask_processes,
            dask_threads=dask_threads,
            run_id=f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
        )
