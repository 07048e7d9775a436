"""The run's manifest, and the commit that puts the tables under their final names with the
manifest last.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from placeholder_etl.core.names import TableFormat
from placeholder_etl.core.output import Output
from placeholder_etl.core.redact import redact_url
from placeholder_etl.core.results import (
    ChunkResult,
    ContractSummary,
    Manifest,
    StagedTable,
    TableInfo,
    Timings,
)

__all__ = [
    "build_manifest",
    "commit",
]


def build_manifest(
    *,
    api_url: str,
    resources: Sequence[str],
    results: Sequence[ChunkResult],
    tables: Mapping[str, TableInfo | StagedTable],
    started: datetime,
    timings: Timings,
    flow_run_id: str | None = None,
    fmt: TableFormat = "csv",
) -> Manifest:
    """The run's manifest before its commit (:meth:`Manifest.stamped` names the files).

    A chunk counts as cached when another flow run fetched it (``flow_run_id`` differs): all
    its pages count as reused.
    """

    def cached(result: ChunkResult) -> bool:
        return result.flow_run_id is not None and result.flow_run_id != flow_run_id

    pages_total = sum(r.pages for r in results)
    reused = sum(r.pages if cached(r) else r.pages_reused for r in results)
    return Manifest(
        started=started.astimezone(UTC).isoformat(timespec="seconds"),
        source=redact_url(api_url),
        resources=list(resources),
        flow_run_id=flow_run_id,
        format=fmt,
        tables={
            name: table.info if isinstance(table, StagedTable) else table
            for name, table in tables.items()
        },
        chunks=len(results),
        cached_chunks=sum(map(cached, results)),
        pages=pages_total,
        pages_fetched=pages_total - reused,
        pages_reused=reused,
        pages_revalidated=sum(0 if cached(r) else r.pages_revalidated for r in results),
        retries=sum(r.retries for r in results),
        workers=sorted({r.worker for r in results}),
        contract=ContractSummary(
            records_checked={
                name: sum(r.rows for r in results if r.spec.resource == name) for name in resources
            }
        ),
        timings=timings,
    )


def commit(
    staging: Output,
    staged: Mapping[str, StagedTable],
    manifest: Manifest,
    started: float,
) -> Manifest:
    """Put the staged tables under their final names, check them, write the manifest last;
    return it stamped.

    Args:
        staging: where the run's tables were staged.
        staged: what :func:`assemble_tables` returned.
        manifest: from :func:`build_manifest`.
        started: ``time.perf_counter()`` when the run started (for ``timings.total_s``).

    Raises:
        CommitError: a table is missing or short under its final name (nothing committed).
    """
    committed: list[Manifest] = []

    def finish(stamp: str) -> bytes:
        """Called (under the output dir's lock, locally) with the stamp the files get."""
        committed.append(manifest.stamped(stamp, time.perf_counter() - started))
        return committed[0].to_json()

    staging.commit(staged, finish)
    return committed[0]
