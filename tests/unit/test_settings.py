"""Settings are defined once: the flow, the command line and the environment agree with them."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from placeholder_etl.core.settings import (
    ClusterSettings,
    Environment,
    FetchSettings,
    OutputSettings,
    RunSettings,
    environment,
)
from placeholder_etl.options import (
    ENV_DEFAULTS,
    SettingsError,
    run_option_names,
    settings_from_options,
)


def _flow():
    from placeholder_etl.flow import etl

    return etl


def test_the_flow_takes_the_run_settings_and_no_more() -> None:
    parameters = inspect.signature(_flow().fn).parameters
    assert len(parameters) <= 6
    assert list(parameters) == list(RunSettings.model_fields)
    assert {"api_url", "output_dir", "resources"} <= set(parameters)
    for name, parameter in parameters.items():  # one default, written once
        assert parameter.default == RunSettings.model_fields[name].get_default(), name


def test_a_pickled_copy_of_the_flow_validates_its_parameters(tmp_path) -> None:
    """What `placeholder-etl serve` does with each run: the flow, cloudpickled into a fresh
    interpreter (the function by value, with only the globals its body uses), validates the
    parameters against its annotations."""
    import cloudpickle

    pickled = tmp_path / "flow.pickle"
    pickled.write_bytes(cloudpickle.dumps(_flow()))
    probe = (
        "import pickle, sys; flow = pickle.loads(open(sys.argv[1], 'rb').read()); "
        "p = flow.validate_parameters({'resources': 'users,posts', 'fetch': {'page_size': 5}}); "
        "print(p['resources'], p['fetch'].page_size)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, pickled],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "users,posts 5"


def _numbers(schema: dict, definitions: dict, path: str = "") -> list[tuple[str, dict]]:
    """Every numeric leaf of a JSON schema: (path, the schema that types it)."""
    if "$ref" in schema:
        return _numbers(definitions[schema["$ref"].rsplit("/", 1)[-1]], definitions, path)
    found = []
    for option in schema.get("anyOf", []) + schema.get("allOf", []):
        found += _numbers(option, definitions, path)
    if schema.get("type") in ("integer", "number"):
        found.append((path, schema))
    for name, sub in schema.get("properties", {}).items():
        found += _numbers(sub, definitions, f"{path}.{name}".lstrip("."))
    return found


def test_every_numeric_flow_parameter_has_a_lower_bound() -> None:
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(_flow().fn).model_dump_for_openapi()
    numbers = _numbers(schema, schema.get("definitions", {}))
    assert len(numbers) >= 10  # page_size, in_flight, retries, workers, ...
    unbounded = [path for path, s in numbers if "minimum" not in s and "exclusiveMinimum" not in s]
    assert unbounded == []


def test_the_form_help_has_no_command_line_flags_or_raw_markup() -> None:
    """The Prefect UI renders these descriptions as the run form's help (as HTML): a flag
    such as ``--cache-hours`` names nothing on the form, and ``<...>`` is eaten."""
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(_flow().fn).model_dump_for_openapi()
    texts = [(path, s["description"]) for path, s in _walk(schema) if "description" in s]
    assert len(texts) >= 25
    assert [(path, text) for path, text in texts if re.search(r"--\w|[<>]", text)] == []
    assert [(path, text) for path, text in texts if not text[0].isupper()] == []


def _walk(node: object, path: str = "") -> list[tuple[str, dict]]:
    """Every JSON-schema object under ``node`` with its path."""
    found = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _walk(value, f"{path}[{i}]")
    return found


def test_cli_options_are_the_settings_fields() -> None:
    """A field added to a model is an option; an option renamed away from its field fails."""
    from typer.main import get_command

    from placeholder_etl.cli import app

    run = get_command(app).commands["run"]  # type: ignore[attr-defined]
    options = {opt for param in run.params for opt in param.opts}
    fields = {
        name
        for model in (RunSettings, FetchSettings, OutputSettings, ClusterSettings)
        for name, field in model.model_fields.items()
        if name not in ("fetch", "output", "cluster")
    }
    assert {"--" + name.replace("_", "-") for name in fields} == set(run_option_names())
    assert set(run_option_names()) <= options
    cli_only = options - set(run_option_names())
    assert {o for o in cli_only if not o.startswith("--no-")} == {
        "--bundled-users",
        "--notify-webhook",
        "--quiet",
        "--verbose",
        "-q",
        "-v",
    }


@pytest.mark.parametrize(
    ("group", "field", "bad"),
    [
        ("fetch", "task_retries", -1),
        ("fetch", "page_size", 0),
        ("fetch", "in_flight", 0),
        ("fetch", "request_timeout", 0),
        ("fetch", "paging", "cursor"),
        ("cluster", "dask_workers", 0),
        ("cluster", "runner", "ray"),
        ("output", "format", "xlsx"),
    ],
)
def test_bad_values_are_refused_naming_the_field(group, field, bad) -> None:
    with pytest.raises(ValidationError, match=field):
        RunSettings.model_validate({group: {field: bad}})
    with pytest.raises(SettingsError, match=f"--{field.replace('_', '-')}: "):
        settings_from_options({field: bad})


def test_unknown_settings_and_resources_are_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        FetchSettings.model_validate({"page_sise": 10})
    with pytest.raises(ValidationError, match="unknown resource 'secrets'"):
        RunSettings(resources="users,secrets")
    with pytest.raises(ValidationError, match=r"dask_adapt_min \(3\) is above"):
        ClusterSettings(dask_adapt_min=3, dask_adapt_max=2)


def test_in_flight_sizes_the_connection_pool() -> None:
    """Every request in flight has a pooled connection (urllib3 discards the extra ones)."""
    assert FetchSettings(in_flight=32).client.pool_size == 32
    assert FetchSettings().client.pool_size == FetchSettings().in_flight


def test_options_not_given_come_from_the_environment_then_the_model(monkeypatch) -> None:
    monkeypatch.setenv("PLACEHOLDER_ETL_OUTPUT_DIR", "/data/out")
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.0.0.1:8786")
    monkeypatch.delenv("PLACEHOLDER_ETL_API_URL", raising=False)
    settings = settings_from_options({})
    assert settings.output_dir == "/data/out"
    assert settings.cluster.dask_address == "tcp://10.0.0.1:8786"
    assert settings.api_url == RunSettings().api_url
    given = settings_from_options({"output_dir": "here", "page_size": 7})
    assert given.output_dir == "here"
    assert given.fetch.page_size == 7
    assert ENV_DEFAULTS == {  # what --help and the README name
        "api_url": "PLACEHOLDER_ETL_API_URL",
        "output_dir": "PLACEHOLDER_ETL_OUTPUT_DIR",
        "cache_dir": "PLACEHOLDER_ETL_CACHE_DIR",
        "dask_address": "DASK_SCHEDULER_ADDRESS",
    }


def test_the_environment_is_read_in_one_place(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PLACEHOLDER_ETL_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("PLACEHOLDER_ETL_NOTIFY_WEBHOOK", "https://hooks.example/T/B/secret")
    monkeypatch.setenv("SATURN_BASE_URL", "https://app.example")
    env = environment()
    assert isinstance(env, Environment)
    assert env.cache_dir == str(tmp_path / "c")
    assert FetchSettings().cache_url() == str(tmp_path / "c")
    assert FetchSettings().cache_url("s3://b/run") == "s3://b/run/_placeholder_etl/cache"
    assert env.notify_webhook is not None
    assert "secret" not in repr(env)  # a SecretStr
    assert env.saturn_base_url == "https://app.example"


@pytest.mark.parametrize(
    "options", [{"output_dir": "s3://b/run"}, {"format": "parquet"}], ids=["store", "parquet"]
)
def test_the_report_is_refused_where_it_cannot_read_the_output(options) -> None:
    with pytest.raises(SettingsError, match="the run report reads a local CSV output"):
        settings_from_options({"report": True, **options})
