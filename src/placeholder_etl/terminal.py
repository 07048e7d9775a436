"""A run from the terminal: start the bundled API if asked, run the flow, print the result.

What a person sees: a progress bar (pages, rows, rate, ETA; plain lines when the output is
not a terminal), warnings, then the tables written, where they are and the run in the
Prefect UI — or one line that says what went wrong and where. ``verbose`` shows every log
line of the flow and its tasks, with tracebacks; ``normal`` warnings and errors without
tracebacks; ``quiet`` only the final error line, or where the output is. Every line passes
the redaction gate (:mod:`placeholder_etl.core.redact`).
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from placeholder_etl.core.errors import EtlError
from placeholder_etl.core.redact import install_log_redaction, redact, register_url_secrets
from placeholder_etl.core.results import RunResult
from placeholder_etl.core.settings import RunSettings
from placeholder_etl.core.text import plural, reused

__all__ = ["run_etl", "shape_console"]


Verbosity = Literal["quiet", "normal", "verbose"]


def run_etl(
    settings: RunSettings, bundled_users: int | None = None, verbosity: Verbosity = "normal"
) -> int:
    """Run :func:`placeholder_etl.flow.etl`; print the files written, or one line of error.

    Args:
        settings: the run's settings.
        bundled_users: start the bundled test API with this many users and run against it
            (``settings.api_url`` is replaced by its URL).
        verbosity: ``quiet`` (errors and where the output is), ``normal`` (progress,
            warnings, the result) or ``verbose`` (every log line too).

    Returns:
        The exit status: 0 on success, 1 when the run failed, 3 when the data was written
        but the report failed.
    """
    if verbosity != "verbose":  # read when Prefect sets up logging, in workers too
        level = "CRITICAL" if verbosity == "quiet" else "WARNING"
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", level)
    os.environ["PLACEHOLDER_ETL_CONSOLE"] = verbosity  # Dask worker processes read it
    started = time.perf_counter()
    register_url_secrets(settings.api_url)
    console = Console(highlight=False, soft_wrap=True, quiet=verbosity == "quiet")
    bundled: str | None = None  # the bundled API, named for what it was (it stops first)
    with ExitStack() as stack:
        from placeholder_etl.prefect_api import start_server_if_needed

        # before the bundled API and the flow's imports, so that they overlap its start
        server = start_server_if_needed(say=console.print)
        if server is not None:
            stack.callback(server.stop)  # also when the run never reaches it
        if bundled_users is not None:
            from placeholder_api.server import bundled_server

            url = stack.enter_context(bundled_server(users=bundled_users))
            settings = settings.model_copy(update={"api_url": url})
            bundled = f"the bundled API ({plural(bundled_users, 'user')})"
            console.print(f"Bundled API: {plural(bundled_users, 'user')} at {url}")
        from placeholder_etl.flow import etl
        from placeholder_etl.prefect_api import drain, prefect_api

        _configure_logging(verbosity)
        try:
            with prefect_api(console.print, server) as api, _no_heartbeat_unless_asked():
                try:
                    with _progress_shown(console, verbosity):
                        result = etl(**settings.flow_parameters())
                finally:
                    drain()  # Prefect's queued logs and events go out before our last line
                # a temporary server stops with the run: no link to a page that is gone
                ui = None if api.temporary else _run_url(result.manifest.flow_run_id)
        except Exception as exc:  # noqa: BLE001 - the CLI's one place to report any failure
            sys.stdout.flush()
            print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
            return 1
    source = bundled or result.manifest.source  # the manifest's: secrets hidden
    _print_result(console, result, source, time.perf_counter() - started, ui)
    if verbosity == "quiet":
        print(f"output: {result.output_dir}\nmanifest: {result.manifest_file}")
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
    """The error on one line, secrets hidden; pipeline errors already say what and where."""
    text = redact(" ".join(str(exc).split()))
    if isinstance(exc, EtlError | ValueError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _configure_logging(verbosity: Verbosity) -> None:
    """Set up Prefect's logging now (it would at the run's start) and shape the console."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    shape_console(verbosity)


def shape_console(verbosity: Verbosity | None) -> None:
    """Every log handler redacts; the terminal's show no tracebacks (``normal``) or nothing
    at all (``quiet``). Idempotent: the flow's process and each Dask worker process call it
    (a worker with ``$PLACEHOLDER_ETL_CONSOLE``, which the command line sets)."""
    install_log_redaction()
    if verbosity in (None, "verbose"):
        return
    if verbosity == "quiet":
        warnings.filterwarnings("ignore")
    for handler in _console_handlers():
        if verbosity == "quiet":
            handler.setLevel(logging.CRITICAL + 1)
        elif not isinstance(handler.formatter, _NoTraceback):
            handler.setFormatter(_NoTraceback(handler.formatter))


def _console_handlers() -> list[logging.Handler]:
    """Every logging handler that writes to the terminal (stderr or stdout)."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = [h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    streams = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    found: list[logging.Handler] = []
    for handler in handlers:
        if getattr(handler, "stream", None) in streams and handler not in found:
            found.append(handler)
    return found


class _NoTraceback(logging.Formatter):
    """A console formatter that leaves tracebacks out (``--verbose`` shows them).

    Formats a copy of the record: other handlers (Prefect's API) still get the traceback.
    """

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = copy.copy(record)
            record.exc_info = record.exc_text = record.stack_info = None
        return self.inner.format(record).split("\nTraceback (most recent call last)", 1)[0]


@contextmanager
def _progress_shown(console: Console, verbosity: Verbosity) -> Iterator[None]:
    """Show the run's progress: a bar on a terminal, a line every ~10 % otherwise."""
    from placeholder_etl.progress import Phase, Snapshot, listening

    if verbosity == "quiet":
        yield
        return
    if not console.is_terminal:
        shown = {"step": -1, "at": 0.0}

        def line(snapshot: Snapshot | Phase) -> None:
            if isinstance(snapshot, Phase):
                console.print(f"progress: {snapshot.text}")
                return
            step = int((snapshot.percent or 0) // 10)
            if snapshot.final or step > shown["step"] or snapshot.seconds - shown["at"] >= 30:
                shown.update(step=step, at=snapshot.seconds)
                console.print(f"progress: {snapshot.line()}")

        with listening(line):
            yield
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rows]:,} rows · {task.fields[rate]:,.0f} rows/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("pages", total=None, rows=0, rate=0.0)

        def update(snapshot: Snapshot | Phase) -> None:
            if isinstance(snapshot, Phase):
                bar.update(task, description=f"pages · {snapshot.text}")
                return
            done = {"completed": snapshot.pages, "rows": snapshot.rows, "rate": snapshot.rate}
            bar.update(task, total=snapshot.total_pages, **done)

        with listening(update):
            yield


def _run_url(flow_run_id: str | None) -> str | None:
    """The flow run's page in the Prefect UI, when there is a UI to open."""
    from prefect.utilities.urls import url_for

    if flow_run_id is None:
        return None
    try:
        return url_for("flow-run", obj_id=flow_run_id)
    except Exception:  # noqa: BLE001 - no UI URL configured: say nothing
        return None


def _print_result(
    console: Console, result: RunResult, source: str, seconds: float, ui: str | None
) -> None:
    manifest = result.manifest
    table = Table(title=f"Tables from {source}", title_justify="left")
    table.add_column("table")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, info in manifest.tables.items():
        table.add_row(name, info.file, f"{info.rows:,}")
    console.print(table)
    console.print(
        f"{plural(manifest.pages, 'page')} ({reused(manifest.pages_reused, manifest.pages_revalidated)}), "
        f"{plural(manifest.retries, 'retry', 'retries')}, {seconds:.1f} s in all "
        f"({manifest.timings.total_s:.1f} s in the flow); flow run {manifest.flow_run_id}"
    )
    if ui:
        console.print(f"in the Prefect UI: {ui}")
    console.print(f"output: {result.output_dir}")
    if result.report_file:
        console.print(f"report: {result.report_file}")
    console.print(f"manifest: {result.manifest_file}")
