"""The ``placeholder-etl`` command line: ``run`` the pipeline, ``verify`` its output against
the manifest, ``serve`` it on a schedule, ``setup-alerts``, and ``serve-api`` (the bundled
test API).

``run`` has one option per field of the settings models (:mod:`placeholder_etl.options`
generates them). Options whose default comes from the environment say so in ``--help``.
Importing this module imports neither Prefect nor Dask: ``--help`` and ``serve-api`` stay
quick.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from typer.core import TyperCommand, TyperGroup

from placeholder_etl.core.settings import (
    DEFAULT_API_URL,
    DEFAULT_OUTPUT_DIR,
    DEFAULT_RESOURCES,
    environment,
)
from placeholder_etl.options import (
    SettingsError,
    settings_from_options,
    with_settings_options,
)
from placeholder_etl.runtime import prepare_process

__all__ = ["app", "main"]


class _HelpFlag:
    """``--help`` without a type: typer (0.29) shows the help option as ``--help <bool>``,
    as if it took a value. An empty metavar, as the other flags have (options.py)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Group(_HelpFlag, TyperGroup):
    pass


class _Command(_HelpFlag, TyperCommand):
    pass


app = typer.Typer(
    cls=_Group,
    help="ETL of a JSONPlaceholder-style API into CSV, on Prefect 3 and Dask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def prepare() -> None:
    """ETL of a JSONPlaceholder-style API into CSV, on Prefect 3 and Dask."""
    prepare_process()  # before any command imports Prefect


@app.command("run", cls=_Command)
@with_settings_options
def run(
    bundled_users: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Users the bundled server generates (--api-url bundled; default 10).",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only errors and where the output is.", metavar="")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Every log line of the flow and its tasks.", metavar=""
        ),
    ] = False,
    notify_webhook: Annotated[
        str | None,
        typer.Option(
            help="Slack-compatible webhook told when the run fails (a secret: never logged) "
            "(env var: PLACEHOLDER_ETL_NOTIFY_WEBHOOK).",
            show_default=False,
        ),
    ] = None,
    **options: Any,
) -> None:
    """Run the ETL flow and list the files it wrote.

    --api-url bundled starts the bundled test API for the run. Exit status 0 on success,
    1 when the run failed (the last line says why), 3 when the data was written but the
    report (--report) failed.
    """
    from placeholder_etl.notify import WEBHOOK_ENV
    from placeholder_etl.terminal import run_etl

    if notify_webhook:
        os.environ[WEBHOOK_ENV] = notify_webhook  # read by the flow's failure hook
    bundled = options.get("api_url") == "bundled"
    if bundled_users is not None and not bundled:
        print("error: --bundled-users: only with --api-url bundled", file=sys.stderr)
        raise typer.Exit(2)
    if bundled:
        options = {**options, "api_url": DEFAULT_API_URL}  # replaced by the server's URL
    try:
        settings = settings_from_options(options)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    verbosity = "quiet" if quiet else "verbose" if verbose else "normal"
    users = (bundled_users or 10) if bundled else None
    code = run_etl(settings, bundled_users=users, verbosity=verbosity)
    # Everything is written, closed and sent (run_etl drains Prefect's logs and events, and
    # stops its servers and cluster): skip the interpreter's teardown of the modules Prefect
    # and Dask loaded, ~0.6 s of every run.
    _exit_now(code)


def _exit_now(code: int) -> NoReturn:
    """Flush the terminal and end the process without the interpreter's teardown: for a
    command whose work is all written and closed. (Tearing down the modules Prefect, Dask
    and Arrow loaded costs ~0.6 s, and once in a while Arrow's native threads abort it:
    ``terminate called without an active exception``, exit status -6, seen after a
    ``verify`` that had printed ``ok``.)"""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command("serve-api", cls=_Command)
def serve_api(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 3000,
    users: Annotated[
        int, typer.Option(min=0, help="Users to generate; other resources scale.")
    ] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the generated data.")] = 0,
    latency: Annotated[float, typer.Option(min=0, help="Seconds added to every response.")] = 0.0,
    fault: Annotated[
        str, typer.Option(help="Fault to inject: MODE[:ARG], see docs/bundled-api.md.")
    ] = "none",
    fault_resource: Annotated[
        str | None, typer.Option(help="Only inject the fault on this resource.")
    ] = None,
    fault_page: Annotated[
        int | None, typer.Option(help="Only inject the fault on this page number.")
    ] = None,
) -> None:
    """Serve the bundled JSONPlaceholder-compatible test API (also: the placeholder-api command)."""
    from placeholder_api.server import serve

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


@app.command("serve", cls=_Command)
def serve_flow(
    name: Annotated[str, typer.Option(help="Deployment name.")] = "placeholder-etl-served",
    cron: Annotated[str, typer.Option(help="Cron schedule.")] = "0 6 * * *",
    timezone: Annotated[str, typer.Option(help="Time zone of the cron schedule.")] = "UTC",
    interval: Annotated[int | None, typer.Option(min=60, help="Also run every N seconds.")] = None,
    api_url: Annotated[
        str | None, typer.Option(help="(env var: PLACEHOLDER_ETL_API_URL)", show_default=False)
    ] = None,
    output_dir: Annotated[
        str | None,
        typer.Option(help="(env var: PLACEHOLDER_ETL_OUTPUT_DIR)", show_default=False),
    ] = None,
    resources: Annotated[str, typer.Option()] = DEFAULT_RESOURCES,
) -> None:
    """Serve the flow with its schedule in this process (the simplest scheduled setup).

    Needs a Prefect server (PREFECT_API_URL); runs until interrupted. The other settings
    keep their defaults; change them per run in the Prefect UI.
    """
    from prefect.schedules import Cron, Interval
    from prefect.types.entrypoint import EntrypointType

    from placeholder_etl.flow import etl

    schedules = [Cron(cron, timezone=timezone)]
    if interval:
        schedules.append(Interval(interval))
    settings = settings_from_options(
        {"api_url": api_url, "output_dir": output_dir, "resources": resources}
    )
    etl.serve(
        name=name,
        schedules=schedules,
        parameters=settings.model_dump(include={"api_url", "output_dir", "resources"}),
        tags=["placeholder-etl", "served"],
        # `placeholder_etl.flow.etl`, not a file path relative to this process's directory
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


@app.command("verify", cls=_Command)
def verify(
    output: Annotated[
        str | None,
        typer.Argument(
            help="The output folder or URL (default: $PLACEHOLDER_ETL_OUTPUT_DIR, else output).",
            show_default=False,
        ),
    ] = None,
    manifest: Annotated[
        str | None,
        typer.Option(
            help="The manifest to check against: a name in OUTPUT, or a path or URL "
            "(default: the newest in OUTPUT).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check a run's tables against its manifest: each one there, with the recorded size,
    sha256 and row count.

    Exit status 0 when every table is as recorded; 1 with one line per table that is not
    (missing, short, changed), or when there is no manifest to check against.
    """
    from placeholder_etl.core.verify import verify_output

    folder = output or environment().output_dir or DEFAULT_OUTPUT_DIR
    try:
        verified = verify_output(folder, manifest)
    except (FileNotFoundError, ValidationError) as exc:
        reason = "not a manifest this version reads" if isinstance(exc, ValidationError) else exc
        print(f"error: {reason}", file=sys.stderr)
        raise typer.Exit(1) from None
    tables = verified.manifest.tables
    name = verified.manifest_file.rsplit("/", 1)[-1]
    for problem in verified.problems:
        print(problem, file=sys.stderr)
    if verified.problems:
        print(
            f"error: {len(verified.problems)} of {len(tables)} tables are not as {name} records",
            file=sys.stderr,
        )
        _exit_now(1)
    rows = sum(info.rows for info in tables.values())
    print(f"ok: {len(tables)} tables, {rows:,} rows, as {verified.manifest_file} records")
    _exit_now(0)


@app.command("setup-alerts", cls=_Command)
def setup_alerts(
    webhook: Annotated[
        str | None,
        typer.Option(
            help="The webhook the Prefect server notifies (stored as a secret in a block) "
            "(env var: PLACEHOLDER_ETL_NOTIFY_WEBHOOK).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Install the server-side failure automation (automations/notify-on-failure.yaml)."""
    from placeholder_etl.notify import BLOCK_NAME, install_failure_automation

    secret = environment().notify_webhook
    webhook = webhook or (secret.get_secret_value() if secret else None)
    if not webhook:
        raise typer.BadParameter("give --webhook or set PLACEHOLDER_ETL_NOTIFY_WEBHOOK")
    block_id, automation_id = install_failure_automation(webhook)
    typer.echo(f"notification block {BLOCK_NAME} ({block_id}) and automation {automation_id}")


def main() -> None:
    """The ``placeholder-etl`` command: typer's app, with a usage error (an unknown option, a
    bad value) on one line in the style of every other error, exit status 2."""
    args = sys.argv[1:] or ["--help"]
    try:
        code = app(args, prog_name="placeholder-etl", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors, as typer vendors them
        print(f"error: {_usage_error(exc)}", file=sys.stderr)
        code = getattr(exc, "exit_code", 2)
    except typer.Abort:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc: Exception) -> str:
    """``--page-size: Input should be …`` rather than click's ``Invalid value for …``."""
    param = getattr(exc, "param", None)
    if isinstance(exc, typer.BadParameter) and param is not None and param.opts:
        text = f"{param.opts[0]}: {exc.message}"
    else:
        text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "placeholder-etl"
    return f"{text[:1].lower()}{text[1:]} (see {command} --help)"
