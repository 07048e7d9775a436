"""What the pipeline's steps return: typed values, not dicts with keys added along the way.

- :class:`ChunkSpec` — a run of pages one task fetches (its input);
- :class:`ChunkResult` — what the task made of them: part files and counts, never records;
- :class:`TableInfo` — one written table;
- :class:`Manifest` — the record of a run, written as ``manifest_<stamp>.json`` and read back by
  the CLI, the report notebook and the benchmark (:meth:`Manifest.read`);
- :class:`RunResult` — what the flow returns: the manifest and where things are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from placeholder_etl.core.names import (
    TableFormat,
    final_name,
    manifest_name,
    stamp_of_manifest,
    stamp_order,
)
from placeholder_etl.core.settings import ClientSettings, Paging
from placeholder_etl.core.store import Store
from placeholder_etl.core.urls import is_remote, local_path

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "ChunkJob",
    "ChunkResult",
    "ChunkSpec",
    "ContractSummary",
    "FetchPolicy",
    "Manifest",
    "RunResult",
    "StagedTable",
    "TableInfo",
    "Timings",
]

#: Bumped whenever a field of :class:`Manifest` changes meaning or goes away.
MANIFEST_SCHEMA_VERSION = 2


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ChunkSpec(_Frozen):
    """A run of consecutive pages of one resource, fetched by one task.

    ``total`` is the resource's ``X-Total-Count`` when the run was planned; ``last_page`` is
    None when the server sent none: then pages are fetched until one comes back short or
    repeats the one before, at most ``max_pages`` (``--max-records``) of them.
    """

    api_url: str
    resource: str
    first_page: int = Field(ge=1)
    last_page: int | None = Field(default=None, ge=1)
    page_size: int = Field(ge=1)
    paging: Paging = "page"
    total: int | None = Field(default=None, ge=0)
    max_pages: int | None = Field(default=None, ge=1)

    @property
    def label(self) -> str:
        """A short human name: ``users p1-8``."""
        last = "…" if self.last_page is None else self.last_page
        return f"{self.resource} p{self.first_page}-{last}"


class ChunkJob(_Frozen):
    """What decides the rows a chunk task makes: its pages, where they are kept and whether
    formulas are kept. All of it is the task's cache key."""

    spec: ChunkSpec
    cache_url: str
    keep_formulas: bool = False


class FetchPolicy(_Frozen):
    """How a chunk task fetches its pages, which never changes its rows: out of its cache key.

    Attributes:
        client: timeouts, retries and connections of the API client.
        in_flight: most requests in flight.
        max_age: seconds a page checkpoint stays reusable (None: the cache is off).
        flow_host: the flow's host; a worker elsewhere ships its rows back ("" ships always).
    """

    client: ClientSettings
    in_flight: int = Field(ge=1)
    max_age: float | None = None
    flow_host: str = ""


class ChunkResult(_Frozen):
    """What one chunk task made: its pages' files per table, and counts.

    Attributes:
        parts: table name -> files holding its rows (no header), in page order: the page
            checkpoints, or one file per table when they were shipped from another machine.
        pages_reused: pages whose checkpoint an earlier attempt or run had made.
        pages_revalidated: of those, pages past their lifetime that the API answered
            ``304 Not Modified`` (a conditional request: headers only).
        pages_damaged: pages whose checkpoint was there but ``damaged`` (a file's size or
            checksum not the one its marker records) or ``missing`` a file: fetched again.
        first_id, last_id: ids of the first and last record (None: no records).
        ordered: ids were strictly increasing through the chunk.
        retries: request retries the chunk needed.
        worker: where it ran (a Dask worker address, or ``host:pid``).
        flow_run_id: the flow run that fetched it (another run's id: served from cache).
        packed: the part files, compressed, when the worker is on another machine than the
            flow (see :func:`placeholder_etl.core.transport.ship_parts`).
        note: what the run's log should say about the chunk (paging stopped at a repeated
            page).
    """

    spec: ChunkSpec
    pages: int
    pages_reused: int = 0
    pages_revalidated: int = 0
    pages_damaged: dict[int, Literal["damaged", "missing"]] = Field(default_factory=dict)
    rows: int
    parts: dict[str, list[str]]
    first_id: int | None
    last_id: int | None
    ordered: bool
    retries: int
    worker: str
    flow_run_id: str | None = None
    packed: dict[str, bytes] | None = None
    note: str | None = None


class TableInfo(_Frozen):
    """One table of a run: its file, rows, size and checksum."""

    file: str = ""
    rows: int
    bytes: int
    sha256: str


class StagedTable(_Frozen):
    """A table written under a temporary name, waiting for the commit.

    What the assemble step returns (wherever it ran: a copy of the output sent to a
    Dask worker records nothing the flow can see), and what the commit takes: the commit
    renames or copies ``path`` to the table's final name and checks the result is
    ``bytes`` long before it writes the manifest.

    Attributes:
        path: where the staged file is, on the output's store (a local path or a key).
        suffix: the final name's extension (``.csv``, ``.parquet``).
    """

    path: str
    suffix: str
    rows: int
    bytes: int
    sha256: str

    @property
    def info(self) -> TableInfo:
        """The table as the manifest records it (its final name is filled in at commit)."""
        return TableInfo(rows=self.rows, bytes=self.bytes, sha256=self.sha256)


class ContractSummary(_Frozen):
    """Records checked against the contract per resource.

    A breach fails the run, so a committed run has none and no count is kept. Manifests written
    before carry ``breaches: 0``; reading them drops it.
    """

    records_checked: dict[str, int]

    @model_validator(mode="before")
    @classmethod
    def drop_breaches(cls, data: Any) -> Any:
        """Drop the always-zero ``breaches`` count older manifests carry."""
        if isinstance(data, dict) and data.get("breaches") == 0:
            return {key: value for key, value in data.items() if key != "breaches"}
        return data


class Timings(_Frozen):
    """Seconds spent counting, extracting, loading, and in all."""

    count_s: float
    extract_s: float
    load_s: float
    total_s: float


class Manifest(_Frozen):
    """The record of one committed run (``manifest_<created>.json``).

    Attributes:
        schema_version: :data:`MANIFEST_SCHEMA_VERSION` when written.
        created: the stamp every file of the run carries (``20261125T005503Z``).
        started: when the run started (UTC, ISO 8601).
        source: the API root, secrets redacted.
        tables: table name -> :class:`TableInfo`, in the order they were written.
        format: the tables' file format (``csv`` or ``parquet``).
        chunks: tasks the pages were split into; ``cached_chunks`` of them came from cache.
        pages: pages in the tables: ``pages_fetched`` fetched by this run, ``pages_reused``
            from checkpoints an earlier attempt or run made (``pages_revalidated`` of them
            past their lifetime, renewed by the API's ``304 Not Modified``); ``retries``:
            request retries.
        workers: where the tasks ran.
    """

    schema_version: Literal[2] = MANIFEST_SCHEMA_VERSION
    created: str = ""
    started: str
    source: str
    resources: list[str]
    flow_run_id: str | None
    format: TableFormat = "csv"
    tables: dict[str, TableInfo]
    chunks: int
    cached_chunks: int
    pages: int
    pages_fetched: int
    pages_reused: int
    pages_revalidated: int = 0
    retries: int
    workers: list[str]
    contract: ContractSummary
    timings: Timings

    def stamped(self, stamp: str, total_s: float | None = None) -> Manifest:
        """This manifest as committed with ``stamp``: file names filled in."""
        tables = {
            name: info.model_copy(update={"file": final_name(name, stamp, f".{self.format}")})
            for name, info in self.tables.items()
        }
        timings = self.timings
        if total_s is not None:
            timings = timings.model_copy(update={"total_s": round(total_s, 3)})
        return self.model_copy(update={"created": stamp, "tables": tables, "timings": timings})

    def to_json(self) -> bytes:
        """Indented JSON, as written to the manifest file."""
        return self.model_dump_json(indent=2).encode() + b"\n"

    @classmethod
    def latest(cls, folder: str) -> Manifest:
        """The newest committed run's manifest in ``folder`` (a path or fsspec URL).

        Its tables are ``<folder>/<manifest.tables[name].file>``: a reader that opens only
        the files the newest manifest names never sees a run that is still committing.

        Raises:
            FileNotFoundError: ``folder`` holds no manifest.
        """
        store = Store.open(folder)
        return cls.read(store.url_of(cls.newest_path(store)))

    @staticmethod
    def newest_path(store: Store) -> str:
        """The path of the newest ``manifest_<stamp>.json`` on ``store``.

        Raises:
            FileNotFoundError: there is none.
        """
        stamps = [s for name in store.listing(store.root) if (s := stamp_of_manifest(name))]
        if not stamps:
            raise FileNotFoundError(f"{store.url}: no manifest_<stamp>.json (no committed run)")
        return store.path(manifest_name(max(stamps, key=stamp_order)))

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Load a manifest file or URL (raises ``pydantic.ValidationError`` on another schema)."""
        if is_remote(str(path)):
            import fsspec

            with fsspec.open(str(path), "rb") as handle:
                return cls.model_validate_json(handle.read())
        return cls.model_validate_json(Path(local_path(str(path))).read_bytes())


class RunResult(_Frozen):
    """What a run returns: its manifest, where it is, and the report if one was asked for.

    ``output_dir`` and ``manifest_file`` are local paths, or URLs on an object store.
    """

    manifest: Manifest
    output_dir: str
    manifest_file: str
    report_file: str | None = None
    report_error: str | None = None
