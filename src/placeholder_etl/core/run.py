"""One run's decisions, made once from its settings: where it writes, where its pages go, how
its chunks are planned and fetched, how long each step took. No Prefect: the flow and the
notebooks share them.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.manifest import build_manifest
from placeholder_etl.core.names import manifest_name
from placeholder_etl.core.output import Output
from placeholder_etl.core.outputs import open_output
from placeholder_etl.core.plan import Totals, auto_pages_per_chunk, plan_chunks
from placeholder_etl.core.prepare import cache_store, remove_leftovers, run_cache
from placeholder_etl.core.resources import resolve_resources
from placeholder_etl.core.results import (
    ChunkJob,
    ChunkResult,
    ChunkSpec,
    FetchPolicy,
    Manifest,
    RunResult,
    StagedTable,
    Timings,
)
from placeholder_etl.core.settings import FetchSettings, OutputSettings, environment
from placeholder_etl.core.store import Store
from placeholder_etl.core.urls import check_api_url

__all__ = ["Run", "start_run"]


@dataclass(frozen=True)
class Run:
    """A run, as decided when it starts (:func:`start_run`).

    Attributes:
        api_url: the API root, checked.
        resources: the resources to fetch, in table order.
        output: where the tables are staged and committed.
        cache: the page cache.
        fetch, out: the run's fetch and output settings.
        started: when it started (UTC); ``clock`` the same as ``time.perf_counter()``.
        id: a name for what belongs to this run only (its own page folder without a cache).
        marks: ``time.perf_counter()`` at each step's end (:meth:`mark`).
    """

    api_url: str
    resources: list[str]
    output: Output
    cache: Store
    fetch: FetchSettings
    out: OutputSettings
    started: datetime
    clock: float
    id: str
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def keep_formulas(self) -> bool:
        """Whether text is kept as it is: asked for, or Parquet (formula guarding is for
        spreadsheets opening CSV)."""
        return self.out.keep_formulas or self.out.format == "parquet"

    @property
    def max_age(self) -> float:
        """Seconds a page checkpoint stays reusable."""
        return self.fetch.cache_hours * 3600

    def remove_leftovers(self) -> list[str]:
        """Remove what killed runs left in the output and the cache, and expired pages."""
        return remove_leftovers(self.output, self.cache, self.max_age)

    @contextmanager
    def page_cache(self) -> Iterator[Store]:
        """Where this run keeps its pages: the shared cache, or without one a folder of its
        own, removed when the block ends."""
        with run_cache(self.cache, self.fetch.cache, self.id) as pages:
            yield pages

    def plan(self, totals: Totals, slots: int) -> list[ChunkSpec]:
        """The chunks of ``totals``: ``pages_per_task`` pages each, or about two per task slot."""
        fetch = self.fetch
        per_task = fetch.pages_per_task or auto_pages_per_chunk(totals, fetch.page_size, slots)
        return plan_chunks(
            self.api_url, totals, fetch.page_size, per_task, fetch.paging, fetch.max_records
        )

    def jobs(self, chunks: Sequence[ChunkSpec], pages: Store) -> list[ChunkJob]:
        """A chunk task's cache key for each chunk (what decides its rows)."""
        return [
            ChunkJob(spec=c, cache_url=pages.url, keep_formulas=self.keep_formulas) for c in chunks
        ]

    def fetch_policy(self) -> FetchPolicy:
        """How the chunk tasks fetch (not in their cache key)."""
        return FetchPolicy(
            client=self.fetch.client,
            in_flight=self.fetch.in_flight,
            max_age=self.max_age if self.fetch.cache else None,
            # environment().ship_parts ships parts as if every worker were on another machine
            flow_host="" if environment().ship_parts else socket.gethostname(),
        )

    def mark(self, step: str) -> None:
        """Note that ``step`` (``counted``, ``extracted``) ended now."""
        self.marks[step] = time.perf_counter()

    def timings(self) -> Timings:
        """Seconds counting, extracting, loading (assembling and checking) and in all."""
        now = time.perf_counter()
        counted = self.marks.get("counted", self.clock)
        extracted = self.marks.get("extracted", counted)
        return Timings(
            count_s=round(counted - self.clock, 3),
            extract_s=round(extracted - counted, 3),
            load_s=round(now - extracted, 3),
            total_s=round(now - self.clock, 3),
        )

    def result(self, manifest: Manifest) -> RunResult:
        """What the run wrote, where: after :func:`~placeholder_etl.core.manifest.commit`."""
        out = self.output.store
        return RunResult(
            manifest=manifest,
            output_dir=out.url,
            manifest_file=out.url_of(out.path(manifest_name(manifest.created))),
        )

    def manifest(
        self,
        results: Sequence[ChunkResult],
        staged: Mapping[str, StagedTable],
        flow_run_id: str | None,
    ) -> Manifest:
        """The run's manifest, before its commit stamps it."""
        return build_manifest(
            api_url=self.api_url,
            resources=self.resources,
            results=results,
            tables=staged,
            started=self.started,
            timings=self.timings(),
            flow_run_id=flow_run_id,
            fmt=self.out.format,
        )


def start_run(
    api_url: str,
    output_dir: str,
    resources: str | list[str] | tuple[str, ...],
    fetch: FetchSettings,
    out: OutputSettings,
) -> Run:
    """Check the API URL and open the output and the page cache, before any work.

    Raises:
        PermanentError: not an http(s) URL with a host (its secrets hidden).
        NotADirectoryError, StoreError: an output that cannot be used (see
            :func:`~placeholder_etl.core.outputs.open_output`).
    """
    try:
        root = check_api_url(api_url)
    except ValueError as exc:
        raise PermanentError(f"api_url: {exc}") from None
    started = datetime.now(UTC)
    return Run(
        api_url=root,
        resources=list(resolve_resources(resources)),
        output=open_output(output_dir),
        cache=cache_store(fetch.cache_url(output_dir)),
        fetch=fetch,
        out=out,
        started=started,
        clock=time.perf_counter(),
        id=f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
    )
