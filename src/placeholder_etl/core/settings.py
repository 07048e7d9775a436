"""Every setting of a run, defined once: its default, its bounds and its help.

The flow takes ``api_url``, ``output_dir`` and ``resources`` plus three groups
(:class:`FetchSettings`, :class:`OutputSettings`, :class:`ClusterSettings`); Prefect validates
a deployment's parameters against these models and renders them as forms in the UI. The
command line's options are generated from the same fields (``placeholder_etl.cli``), and
:class:`Environment` is the one place that reads environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from placeholder_etl.core.names import TableFormat
from placeholder_etl.core.resources import resolve_resources
from placeholder_etl.core.urls import check_api_url, is_remote

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_OUTPUT_DIR",
    "DEFAULT_RESOURCES",
    "ClientSettings",
    "ClusterSettings",
    "Environment",
    "FetchSettings",
    "OutputSettings",
    "Paging",
    "ResourceNames",
    "RunSettings",
    "environment",
    "local_slots",
]

DEFAULT_API_URL = "https://jsonplaceholder.typicode.com"
DEFAULT_OUTPUT_DIR = "output"
DEFAULT_RESOURCES = "users"
#: The most records of one resource a run fetches unless told otherwise (--max-records).
DEFAULT_MAX_RECORDS = 10_000_000

Paging = Literal["page", "start"]
Runner = Literal["dask", "local"]
ClusterKind = Literal["local", "saturn"]


def _resource_names(value: str | list[str]) -> str | list[str]:
    resolve_resources(value)  # raises ValueError naming the unknown resource
    return value


#: ``users``, a comma list such as ``users,posts``, a list, or ``all``; checked on validation.
ResourceNames = Annotated[str | list[str], AfterValidator(_resource_names)]

#: An http(s) URL with a host, checked before any work (its secrets hidden in the error).
ApiUrl = Annotated[str, AfterValidator(check_api_url)]


class _Group(BaseModel):
    """A group of settings: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ClientSettings(_Group):
    """How patient one API client is (what :class:`~placeholder_etl.core.client.ApiClient` needs).

    Derived from :class:`FetchSettings` by :attr:`FetchSettings.client`.
    """

    timeout: float = Field(10.0, gt=0, description="Seconds to wait for a response.")
    retries: int = Field(3, ge=0, description="Extra attempts per request on transient faults.")
    backoff: float = Field(0.25, ge=0, description="Base of the exponential backoff, seconds.")
    max_retry_after: float = Field(30.0, ge=0, description="Longest Retry-After honoured.")
    pool_size: int = Field(32, ge=1, description="Connections kept open per client.")


class FetchSettings(_Group):
    """How pages are requested, retried and cached."""

    page_size: int = Field(1000, ge=1, le=100_000, description="Records per request.")
    paging: Paging = Field(
        "page", description="How pages are asked for: 'page' (_page, _limit) or 'start' (_start)."
    )
    pages_per_task: int | None = Field(
        None,
        ge=1,
        description="Pages one task fetches (default: about two tasks per worker thread).",
    )
    in_flight: int = Field(
        32,
        ge=1,
        le=256,
        description="Most requests in flight per task (a real API's limit); fewer while pages "
        "are CPU-bound, so they do not contend for the cores.",
    )
    request_timeout: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds per request: connecting, the headers and the whole body.",
    )
    request_retries: int = Field(3, ge=0, le=20, description="Retries per request.")
    task_retries: int = Field(2, ge=0, le=20, description="Prefect retries per task.")
    retry_delay: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="Seconds before the first task retry; it doubles after each, jittered "
        "(0.63x to 1.5x).",
    )
    cache: bool = Field(True, description="Reuse pages fetched within the cache lifetime.")
    cache_dir: str | None = Field(
        None,
        description="Where fetched pages are kept: a folder or a URL such as s3://bucket/cache "
        "(default: $PLACEHOLDER_ETL_CACHE_DIR, else ~/.cache/placeholder-etl; for an "
        "object-store output, its _placeholder_etl/cache).",
    )
    cache_hours: float = Field(
        1.0,
        ge=0,
        le=24 * 365,
        description="Page cache lifetime, hours; after it a page is asked for again, "
        "conditionally where the API sent an ETag or Last-Modified (0: ask for every page).",
    )
    max_records: int = Field(
        DEFAULT_MAX_RECORDS,
        ge=1,
        le=10**12,
        description="Most records of one resource a run fetches: a larger X-Total-Count is "
        "refused before any page is fetched, and paging without a total stops with an error "
        "past it.",
    )

    @property
    def client(self) -> ClientSettings:
        """The API client's settings: one pooled connection per request in flight."""
        return ClientSettings(
            timeout=self.request_timeout, retries=self.request_retries, pool_size=self.in_flight
        )

    def cache_url(self, output_dir: str = "") -> str:
        """The page cache: ``cache_dir``; else, for an object-store ``output_dir``, a folder
        beside the output (so remote workers write their pages straight to the store); else
        :func:`default_cache_dir`."""
        if self.cache_dir:
            return self.cache_dir
        if is_remote(output_dir):
            return output_dir.rstrip("/") + "/_placeholder_etl/cache"
        return str(default_cache_dir())


class OutputSettings(_Group):
    """What is written, besides where (``output_dir``)."""

    format: TableFormat = Field(
        "csv", description="File format of the tables: csv, or parquet (typed columns)."
    )
    keep_formulas: bool = Field(
        False, description="Keep text starting with = + - @ as is (default: prefix it with ')."
    )
    report: bool = Field(
        False, description="Render an HTML run report (report_TIMESTAMP.html) beside the tables."
    )


class ClusterSettings(_Group):
    """Where the tasks run: threads, or Dask (a LocalCluster, a scheduler, Saturn Cloud)."""

    runner: Runner = Field(
        "dask", description="How tasks run: 'dask' (on a Dask cluster) or 'local' (threads here)."
    )
    dask_address: str | None = Field(
        None, description="An existing Dask scheduler (tcp://host:8786) to run the tasks on."
    )
    dask_cluster: ClusterKind | None = Field(
        None,
        description="Which Dask cluster: 'local' or 'saturn' (default: saturn inside Saturn "
        "Cloud, else local).",
    )
    dask_workers: int | None = Field(
        None, ge=1, le=10_000, description="LocalCluster worker processes, or Saturn workers."
    )
    dask_threads: int | None = Field(None, ge=1, le=1024, description="Threads per worker.")
    dask_processes: bool | None = Field(
        None,
        description="LocalCluster workers as processes, or one worker in this process "
        "(default: processes from 200,000 records on, or when a worker count is given).",
    )
    dask_worker_size: str | None = Field(None, description="Saturn worker size (e.g. large).")
    dask_scheduler_size: str | None = Field(None, description="Saturn scheduler size.")
    dask_adapt_min: int | None = Field(
        None, ge=0, le=10_000, description="Adaptive scaling: fewest workers."
    )
    dask_adapt_max: int | None = Field(
        None, ge=1, le=10_000, description="Adaptive scaling: most workers."
    )

    @model_validator(mode="after")
    def _adapt_bounds_in_order(self) -> Self:
        low, high = self.dask_adapt_min, self.dask_adapt_max
        if low is not None and high is not None and low > high:
            raise ValueError(f"dask_adapt_min ({low}) is above dask_adapt_max ({high})")
        return self

    @property
    def processes(self) -> bool | None:
        """Worker processes asked for: ``dask_processes``, or True when workers are counted."""
        if self.dask_processes is None and self.dask_workers:
            return True
        return self.dask_processes

    @property
    def slots(self) -> int:
        """Task slots before a cluster says otherwise: workers x threads."""
        return (self.dask_workers or local_slots()) * (self.dask_threads or 1)


class RunSettings(_Group):
    """A whole run: the flow's parameters as one model (the CLI and notebooks build this)."""

    api_url: ApiUrl = Field(
        DEFAULT_API_URL,
        description="Root of a json-server-style API (http or https; a query such as "
        "?api_key=K is kept on every request).",
    )
    output_dir: str = Field(
        DEFAULT_OUTPUT_DIR,
        description="Where the tables and manifest go: a folder or an fsspec URL "
        "(s3://bucket/prefix, gs://, az://, file://).",
    )
    resources: ResourceNames = Field(
        DEFAULT_RESOURCES, description="'users', a comma list such as 'users,posts', or 'all'."
    )
    fetch: FetchSettings = FetchSettings()
    output: OutputSettings = OutputSettings()
    cluster: ClusterSettings = ClusterSettings()

    @model_validator(mode="after")
    def _report_reads_a_local_csv_output(self) -> Self:
        if self.output.report and (is_remote(self.output_dir) or self.output.format != "csv"):
            raise ValueError(
                "report: the run report reads a local CSV output; run without --report for "
                "an object store or Parquet"
            )
        return self

    def flow_parameters(self) -> dict[str, Any]:
        """Keyword arguments of :func:`placeholder_etl.flow.etl`."""
        return {name: getattr(self, name) for name in type(self).model_fields}


class Environment(BaseSettings):
    """The environment variables this project reads (the only place that reads them).

    ``PLACEHOLDER_ETL_<NAME>`` for the project's own; the standard names for Dask and Saturn.
    """

    model_config = SettingsConfigDict(env_prefix="PLACEHOLDER_ETL_", extra="ignore")

    api_url: str | None = Field(None, description="Default of --api-url.")
    output_dir: str | None = Field(None, description="Default of --output-dir.")
    cache_dir: str | None = Field(None, description="Default of --cache-dir.")
    notify_webhook: SecretStr | None = Field(
        None, description="Slack-compatible webhook told when a run fails (a secret)."
    )
    notebooks: str | None = Field(None, description="Folder holding the report notebook.")
    ship_parts: bool = Field(
        False, description="Ship part files as if every Dask worker were on another machine."
    )
    console: Literal["quiet", "normal", "verbose"] | None = Field(
        None,
        description="What the command line shows (set by it for the Dask worker processes "
        "it starts: no tracebacks unless verbose).",
    )
    dask_address: str | None = Field(
        None,
        validation_alias=AliasChoices("DASK_SCHEDULER_ADDRESS"),
        description="Default of --dask-address.",
    )
    saturn_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("SATURN_BASE_URL"),
        description="Set inside Saturn Cloud: the default Dask cluster is Saturn's.",
    )


def environment() -> Environment:
    """The environment variables, read now."""
    return Environment()


def default_cache_dir() -> Path:
    """``$PLACEHOLDER_ETL_CACHE_DIR``, else ``$XDG_CACHE_HOME/placeholder-etl``."""
    if explicit := environment().cache_dir:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "placeholder-etl"


def local_slots() -> int:
    """Cores this process may use (at least 1)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
