"""Run the flow for the command line: start the bundled server if asked, report the result."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table

from placeholder_etl.errors import EtlError

__all__ = ["BUNDLED", "run_etl"]

BUNDLED = "bundled"


def run_etl(api_url: str, params: dict[str, Any], bundled_users: int = 10) -> int:
    """Run :func:`placeholder_etl.flow.etl`; print the files written, or one line of error.

    Returns:
        The exit status: 0 on success, 1 when the run failed, 3 when the data was written
        but the report failed.
    """
    console = Console(highlight=False, soft_wrap=True)
    with ExitStack() as stack:
        if api_url == BUNDLED:
            from placeholder_etl.server import bundled_server

            api_url = stack.enter_context(bundled_server(users=bundled_users))
            console.print(f"bundled API server with {bundled_users} users at {api_url}")
        from placeholder_etl.flow import etl
        from placeholder_etl.prefect_api import drain, prefect_api

        try:
            with prefect_api(), _no_heartbeat_unless_asked():
                try:
                    manifest = etl(api_url=api_url, **params)
                finally:
                    drain()  # Prefect's queued logs and events go out before our last line
        except Exception as exc:  # noqa: BLE001 - the CLI's one place to report any failure
            sys.stdout.flush()
            print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
            return 1
    _report(console, manifest)
    if "report_error" in manifest:
        print(f"error: the data was written, but {manifest['report_error']}", file=sys.stderr)
        return 3
    return 0


@contextmanager
def _no_heartbeat_unless_asked() -> Iterator[None]:
    """No flow-run heartbeat thread for a command-line run, unless the environment asks.

    Prefect 3.9 starts one per flow run (every 180 s) for zombie detection, which needs an
    automation you set up; ending a run joins that thread, which sleeps in 1 s steps, so
    each run finished up to a second late. ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` in the
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


def _report(console: Console, manifest: dict[str, Any]) -> None:
    table = Table(title=f"placeholder-etl: {manifest['source']}", title_justify="left")
    table.add_column("table")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, info in manifest["tables"].items():
        table.add_row(name, info["file"], f"{info['rows']:,}")
    console.print(table)
    timings = manifest["timings"]
    console.print(
        f"{manifest['pages']} pages, {manifest['retries']} retries, "
        f"{manifest['cached_chunks']}/{manifest['chunks']} tasks from cache, "
        f"{timings['total_s']:.2f} s; flow run {manifest['flow_run_id']}"
    )
    console.print(f"output: {manifest['manifest'].rsplit('/', 1)[0]}")
    if "report" in manifest:
        console.print(f"report: {manifest['report']}")
    console.print(f"manifest: {manifest['manifest']}")
