"""A run from the terminal: start the bundled API if asked, run the flow, print the result.

What a person sees: the tables written, where they are, and on failure one line that says
what went wrong and where.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from rich.console import Console
from rich.table import Table

from placeholder_etl.core.errors import EtlError
from placeholder_etl.core.results import RunResult
from placeholder_etl.core.settings import RunSettings

__all__ = ["run_etl"]


def run_etl(settings: RunSettings, bundled_users: int | None = None) -> int:
    """Run :func:`placeholder_etl.flow.etl`; print the files written, or one line of error.

    Args:
        settings: the run's settings.
        bundled_users: start the bundled test API with this many users and run against it
            (``settings.api_url`` is replaced by its URL).

    Returns:
        The exit status: 0 on success, 1 when the run failed, 3 when the data was written
        but the report failed.
    """
    console = Console(highlight=False, soft_wrap=True)
    with ExitStack() as stack:
        if bundled_users is not None:
            from placeholder_api.server import bundled_server

            url = stack.enter_context(bundled_server(users=bundled_users))
            settings = settings.model_copy(update={"api_url": url})
            console.print(f"bundled API server with {bundled_users} users at {url}")
        from placeholder_etl.flow import etl
        from placeholder_etl.prefect_api import drain, prefect_api

        try:
            with prefect_api(), _no_heartbeat_unless_asked():
                try:
                    result = etl(**settings.flow_parameters())
                finally:
                    drain()  # Prefect's queued logs and events go out before our last line
        except Exception as exc:  # noqa: BLE001 - the CLI's one place to report any failure
            sys.stdout.flush()
            print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
            return 1
    _print_result(console, result)
    if result.report_error:
        print(f"error: the data was written, but {result.report_error}", file=sys.stderr)
        return 3
    return 0


@contextmanager
def _no_heartbeat_unless_asked() -> Iterator[None]:
    """No flow-run heartbeat thread for a command-line run, unless the environment asks.

    Prefect 3.9 starts one per flow run (every 180 s) for zombie detection, which needs an
    automation you set up; ending a run joins that thread, which sleeps in 1 s steps, so
    each run would finish up to a second late. ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` in the
    environment keeps them on. Deployments run by a worker are not affected.
    """
    if os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _one_line(exc: BaseException) -> str:
    """The error on one line; pipeline errors already say what and where."""
    text = " ".join(str(exc).split())
    if isinstance(exc, EtlError | ValueError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _print_result(console: Console, result: RunResult) -> None:
    manifest = result.manifest
    table = Table(title=f"placeholder-etl: {manifest.source}", title_justify="left")
    table.add_column("table")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, info in manifest.tables.items():
        table.add_row(name, info.file, f"{info.rows:,}")
    console.print(table)
    console.print(
        f"{manifest.pages} pages, {manifest.retries} retries, "
        f"{manifest.cached_chunks}/{manifest.chunks} tasks from cache, "
        f"{manifest.timings.total_s:.2f} s; flow run {manifest.flow_run_id}"
    )
    console.print(f"output: {result.output_dir}")
    if result.report_file:
        console.print(f"report: {result.report_file}")
    console.print(f"manifest: {result.manifest_file}")
