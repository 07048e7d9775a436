"""The ``placeholder-etl`` command line: ``run`` the pipeline, ``verify`` its output against
the manifest, ``serve`` it on a schedule, ``setup-alerts``, and ``serve-api`` (the bundled
test API).

``run`` has one option per field of the settings models (:mod:`placeholder_etl.core.settings`),
generated from them: ``--page-size`` is ``FetchSettings.page_size``, with its default, bounds
and help. Options whose default comes from the environment say so in ``--help``. Importing
this module imports neither Prefect nor Dask: ``--help`` and ``serve-api`` stay quick.
"""

from __future__ import annotations

import enum
import inspect
import os
import sys
import typing
from collections.abc import Callable
from typing import Annotated, Any, get_args, get_origin

import typer
from annotated_types import Ge, Le
from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic.fields import FieldInfo

from placeholder_etl.core.settings import (
    DEFAULT_API_URL,
    DEFAULT_OUTPUT_DIR,
    DEFAULT_RESOURCES,
    Environment,
    RunSettings,
    environment,
)
from placeholder_etl.runtime import prepare_process

__all__ = ["ENV_DEFAULTS", "SettingsError", "app", "run_option_names", "settings_from_options"]

app = typer.Typer(
    help="ETL of a JSONPlaceholder-style API into CSV, on Prefect 3 and Dask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def prepare() -> None:
    """ETL of a JSONPlaceholder-style API into CSV, on Prefect 3 and Dask."""
    prepare_process()  # before any command imports Prefect


#: The setting groups of a run, by their field name in :class:`RunSettings`.
GROUPS: dict[str, type[BaseModel]] = {
    name: typing.cast(type[BaseModel], field.annotation)
    for name, field in RunSettings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}


def _fields() -> dict[str, tuple[str | None, FieldInfo]]:
    """Every run setting: option name -> (its group, or None at the top, and its field)."""
    fields: dict[str, tuple[str | None, FieldInfo]] = {
        name: (None, field)
        for name, field in RunSettings.model_fields.items()
        if name not in GROUPS
    }
    for group, model in GROUPS.items():
        fields |= {name: (group, field) for name, field in model.model_fields.items()}
    return fields


def _env_var(name: str, field: FieldInfo) -> str:
    """The environment variable :class:`Environment` reads ``name`` from."""
    if isinstance(field.validation_alias, AliasChoices):
        return str(field.validation_alias.choices[0])
    return f"{Environment.model_config.get('env_prefix', '')}{name}".upper()


#: Options whose default is read from the environment: option -> environment variable.
ENV_DEFAULTS: dict[str, str] = {
    name: _env_var(name, field)
    for name, field in Environment.model_fields.items()
    if name in _fields()
}


def run_option_names() -> list[str]:
    """The options of ``run`` generated from the settings (``--page-size`` ...)."""
    return ["--" + name.replace("_", "-") for name in _fields()]


def _cli_type(annotation: Any, name: str) -> Any:
    """The type typer understands: Literal becomes an Enum of its values, Optional stays."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is typing.Literal:
        return enum.Enum(name.title().replace("_", ""), {v: v for v in get_args(annotation)})
    if args and type(None) in get_args(annotation):  # X | None
        return _cli_type(args[0], name) | None
    if get_origin(annotation) is not None:  # str | list[str]: the command line gives a str
        return str
    return annotation


def _option(name: str, field: FieldInfo) -> inspect.Parameter:
    """A typer option for one settings field."""
    bounds = {"min": None, "max": None}
    for rule in field.metadata:
        if isinstance(rule, Ge):
            bounds["min"] = rule.ge
        if isinstance(rule, Le):
            bounds["max"] = rule.le
    help_text = field.description or ""
    default = field.default
    if name in ENV_DEFAULTS:  # the default is read when the option is not given
        if ENV_DEFAULTS[name] not in help_text:
            shown = "" if default is None else f"; default: {default}"
            help_text += f" (env var: {ENV_DEFAULTS[name]}{shown})"
        default = None
    cli_type = _cli_type(field.annotation, name)
    flag = "--" + name.replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}"] if field.annotation in (bool, bool | None) else [flag]
    option = typer.Option(
        *decls,
        help=help_text,
        show_default=default is not None,
        **{k: v for k, v in bounds.items() if v is not None},
    )
    annotation = Annotated[cli_type if default is not None else cli_type | None, option]
    if isinstance(default, str) and isinstance(cli_type, type) and issubclass(cli_type, enum.Enum):
        default = cli_type(default)
    kind = inspect.Parameter.KEYWORD_ONLY
    return inspect.Parameter(name, kind, default=default, annotation=annotation)


class SettingsError(ValueError):
    """A setting out of bounds or unknown; the message names the option."""


def settings_from_options(options: dict[str, Any]) -> RunSettings:
    """A :class:`RunSettings` from ``run``'s options (None: not given, so the environment or
    the model's default decides).

    Raises:
        SettingsError: a value out of bounds, naming the option (``--page-size: ...``).
    """
    env = environment()
    nested: dict[str, Any] = {group: {} for group in GROUPS}
    for name, (group, _) in _fields().items():
        value = options.get(name)
        if value is None and name in ENV_DEFAULTS:
            value = getattr(env, name)
        if value is None:
            continue
        value = value.value if isinstance(value, enum.Enum) else value
        (nested[group] if group else nested)[name] = value
    try:
        return RunSettings.model_validate(nested)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        field = str(error["loc"][-1]) if error["loc"] else ""
        if field and field not in GROUPS:  # a group's own check names its fields itself
            message = f"--{field.replace('_', '-')}: {message}"
        raise SettingsError(message) from None


def _with_settings_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add one keyword option per run setting to ``command``'s signature (typer reads it)."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    generated = [_option(name, field) for name, (_, field) in _fields().items()]
    command.__signature__ = signature.replace(parameters=own + generated)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in own + generated}
    return command


@app.command("run")
@_with_settings_options
def run(
    bundled_users: Annotated[
        int, typer.Option(min=1, help="Users the bundled server generates (--api-url bundled).")
    ] = 10,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only errors and where the output is.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Every log line of the flow and its tasks.")
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
    if bundled:
        options = {**options, "api_url": DEFAULT_API_URL}  # replaced by the server's URL
    try:
        settings = settings_from_options(options)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    verbosity = "quiet" if quiet else "verbose" if verbose else "normal"
    users = bundled_users if bundled else None
    code = run_etl(settings, bundled_users=users, verbosity=verbosity)
    # Everything is written, closed and sent (run_etl drains Prefect's logs and events, and
    # stops its servers and cluster): skip the interpreter's teardown of the modules Prefect
    # and Dask loaded, ~0.6 s of every run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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


@app.command("serve")
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


@app.command("verify")
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
        raise typer.Exit(1)
    rows = sum(info.rows for info in tables.values())
    print(f"ok: {len(tables)} tables, {rows:,} rows, as {verified.manifest_file} records")


@app.command("setup-alerts")
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
