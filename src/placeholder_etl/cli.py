"""The ``placeholder-etl`` command line: ``run`` the pipeline, ``serve-api`` the bundled API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from placeholder_etl.client import DEFAULT_API_URL

app = typer.Typer(
    help="ETL of a JSONPlaceholder-style API into CSV, on Prefect 3 and Dask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("serve-api")
def serve_api(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 3000,
    users: Annotated[
        int, typer.Option(min=0, help="Users to generate; other resources scale.")
    ] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the generated data.")] = 0,
    latency: Annotated[float, typer.Option(min=0, help="Seconds added to every response.")] = 0.0,
    fault: Annotated[
        str, typer.Option(help="Fault to inject: MODE[:ARG], see the README's fault table.")
    ] = "none",
    fault_resource: Annotated[
        str | None, typer.Option(help="Only inject the fault on this resource.")
    ] = None,
    fault_page: Annotated[
        int | None, typer.Option(help="Only inject the fault on this page number.")
    ] = None,
) -> None:
    """Serve generated JSONPlaceholder-compatible data (paging, filters, nested routes, faults)."""
    from placeholder_etl.server import serve

    serve(
        host=host,
        port=port,
        users=users,
        seed=seed,
        latency=latency,
        fault=fault,
        fault_resource=fault_resource,
        fault_page=fault_page,
    )


@app.command("run")
def run(
    api_url: Annotated[
        str,
        typer.Option(
            envvar="PLACEHOLDER_ETL_API_URL",
            help="API root, or 'bundled' to start the bundled server for this run.",
        ),
    ] = DEFAULT_API_URL,
    output_dir: Annotated[
        Path, typer.Option(envvar="PLACEHOLDER_ETL_OUTPUT_DIR", help="Where CSVs go.")
    ] = Path("output"),
    resources: Annotated[
        str, typer.Option(help="'users', a comma list such as 'users,posts', or 'all'.")
    ] = "users",
    runner: Annotated[
        str, typer.Option(help="'dask' (DaskTaskRunner, LocalCluster) or 'local' (threads).")
    ] = "dask",
    page_size: Annotated[int, typer.Option(min=1, help="Records per request.")] = 1000,
    paging: Annotated[
        str, typer.Option(help="'page' (_page/_limit) or 'start' (_start).")
    ] = "page",
    dask_workers: Annotated[int | None, typer.Option(min=1, help="LocalCluster workers.")] = None,
    dask_threads: Annotated[int | None, typer.Option(min=1, help="Threads per worker.")] = None,
    dask_address: Annotated[
        str | None,
        typer.Option(envvar="DASK_SCHEDULER_ADDRESS", help="Existing Dask scheduler to use."),
    ] = None,
    dask_cluster: Annotated[
        str | None,
        typer.Option(help="'local' or 'saturn' [default: saturn inside Saturn Cloud, else local]"),
    ] = None,
    dask_worker_size: Annotated[str | None, typer.Option(help="Saturn worker size.")] = None,
    dask_scheduler_size: Annotated[str | None, typer.Option(help="Saturn scheduler size.")] = None,
    dask_adapt_min: Annotated[
        int | None, typer.Option(min=0, help="Adaptive: min workers.")
    ] = None,
    dask_adapt_max: Annotated[
        int | None, typer.Option(min=1, help="Adaptive: max workers.")
    ] = None,
    dask_processes: Annotated[
        bool | None,
        typer.Option(
            "--dask-processes/--no-dask-processes",
            help="LocalCluster workers as processes, or as threads in this process "
            "[default: processes from 200,000 records on]",
            show_default=False,
        ),
    ] = None,
    pages_per_task: Annotated[int | None, typer.Option(min=1, help="Pages per task.")] = None,
    in_flight: Annotated[int, typer.Option(min=1, help="Requests in flight per task.")] = 16,
    request_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request.")] = 10.0,
    request_retries: Annotated[int, typer.Option(min=0, help="Retries per request.")] = 3,
    task_retries: Annotated[int, typer.Option(min=0, help="Prefect retries per task.")] = 2,
    retry_delay: Annotated[
        float, typer.Option(min=0, help="Seconds before the first task retry (then doubles).")
    ] = 2.0,
    cache: Annotated[bool, typer.Option(help="Reuse pages fetched within --cache-hours.")] = True,
    cache_dir: Annotated[
        Path | None, typer.Option(envvar="PLACEHOLDER_ETL_CACHE_DIR", help="Page cache.")
    ] = None,
    cache_hours: Annotated[float, typer.Option(min=0, help="Page cache lifetime.")] = 1.0,
    report: Annotated[
        bool, typer.Option(help="Render report_<timestamp>.html from the report notebook.")
    ] = False,
    keep_formulas: Annotated[
        bool,
        typer.Option(help="Keep text starting with = + - @ as is (default: prefix it with ')."),
    ] = False,
    notify_webhook: Annotated[
        str | None,
        typer.Option(
            envvar="PLACEHOLDER_ETL_NOTIFY_WEBHOOK",
            help="Slack-compatible webhook told when the run fails (a secret: never logged).",
            show_default=False,
        ),
    ] = None,
    bundled_users: Annotated[
        int, typer.Option(min=1, help="Users the bundled server generates (--api-url bundled).")
    ] = 10,
) -> None:
    """Run the ETL flow and list the files it wrote.

    Exit status 0 on success, 1 when the run failed (the last line says why), 3 when the data
    was written but the report (--report) failed.
    """
    from placeholder_etl.notify import WEBHOOK_ENV
    from placeholder_etl.runner import run_etl

    if notify_webhook:
        os.environ[WEBHOOK_ENV] = notify_webhook  # read by the flow's failure hook

    params: dict[str, Any] = {
        "output_dir": str(output_dir),
        "resources": resources,
        "runner": runner,
        "page_size": page_size,
        "paging": paging,
        "dask_workers": dask_workers,
        "dask_threads": dask_threads,
        "dask_address": dask_address,
        "dask_cluster": dask_cluster,
        "dask_worker_size": dask_worker_size,
        "dask_scheduler_size": dask_scheduler_size,
        "dask_adapt_min": dask_adapt_min,
        "dask_adapt_max": dask_adapt_max,
        "dask_processes": dask_processes,
        "pages_per_task": pages_per_task,
        "in_flight": in_flight,
        "request_timeout": request_timeout,
        "request_retries": request_retries,
        "task_retries": task_retries,
        "retry_delay": retry_delay,
        "use_cache": cache,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "cache_hours": cache_hours,
        "report": report,
        "keep_formulas": keep_formulas,
    }
    raise typer.Exit(run_etl(api_url, params, bundled_users=bundled_users))


@app.command("serve")
def serve_flow(
    name: Annotated[str, typer.Option(help="Deployment name.")] = "placeholder-etl-served",
    cron: Annotated[str, typer.Option(help="Cron schedule.")] = "0 6 * * *",
    timezone: Annotated[str, typer.Option(help="Time zone of the cron schedule.")] = "UTC",
    interval: Annotated[int | None, typer.Option(min=60, help="Also run every N seconds.")] = None,
    api_url: Annotated[str, typer.Option(envvar="PLACEHOLDER_ETL_API_URL")] = DEFAULT_API_URL,
    output_dir: Annotated[str, typer.Option(envvar="PLACEHOLDER_ETL_OUTPUT_DIR")] = "output",
    resources: Annotated[str, typer.Option()] = "users",
    runner: Annotated[str, typer.Option()] = "dask",
) -> None:
    """Serve the flow with its schedule in this process (the simplest scheduled setup).

    Needs a Prefect server (PREFECT_API_URL); runs until interrupted.
    """
    from prefect.schedules import Cron, Interval

    from placeholder_etl.flow import etl

    schedules = [Cron(cron, timezone=timezone)]
    if interval:
        schedules.append(Interval(interval))
    etl.serve(
        name=name,
        schedules=schedules,
        parameters={
            "api_url": api_url,
            "output_dir": output_dir,
            "resources": resources,
            "runner": runner,
        },
        tags=["placeholder-etl", "served"],
    )


@app.command("setup-alerts")
def setup_alerts(
    webhook: Annotated[
        str,
        typer.Option(
            envvar="PLACEHOLDER_ETL_NOTIFY_WEBHOOK",
            help="The webhook the Prefect server notifies (stored as a secret in a block).",
            show_default=False,
        ),
    ],
) -> None:
    """Install the server-side failure automation (automations/notify-on-failure.yaml)."""
    from placeholder_etl.notify import BLOCK_NAME, install_failure_automation

    block_id, automation_id = install_failure_automation(webhook)
    typer.echo(f"notification block {BLOCK_NAME} ({block_id}) and automation {automation_id}")
