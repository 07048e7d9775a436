"""The ``run`` command's options, generated from the settings models: one option per field
(``--page-size`` is ``FetchSettings.page_size``, with its default, bounds and help), and the
settings read back from them. Imports neither Prefect nor Dask.
"""

from __future__ import annotations

import enum
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any, get_args, get_origin

import typer
from annotated_types import Ge, Le
from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic.fields import FieldInfo

from placeholder_etl.core.settings import Environment, RunSettings, environment

__all__ = [
    "ENV_DEFAULTS",
    "SettingsError",
    "run_option_names",
    "settings_from_options",
    "with_settings_options",
]


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
    is_flag = field.annotation in (bool, bool | None)
    option = typer.Option(
        *([f"{flag}/--no-{flag[2:]}"] if is_flag else [flag]),
        help=help_text,
        show_default=default is not None,
        **({"metavar": ""} if is_flag else {}),  # a flag takes no value: no "<bool>" in --help
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


def with_settings_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add one keyword option per run setting to ``command``'s signature (typer reads it)."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    generated = [_option(name, field) for name, (_, field) in _fields().items()]
    command.__signature__ = signature.replace(parameters=own + generated)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in own + generated}
    return command
