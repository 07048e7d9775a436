"""Tables from the chunks' part files, staged until the commit; their totals checked."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.names import TableFormat
from placeholder_etl.core.output import Output
from placeholder_etl.core.plan import Totals
from placeholder_etl.core.resources import ACTIVITY_TABLE, RESOURCE_NAMES, TABLES, tables_of
from placeholder_etl.core.results import (
    ChunkResult,
    StagedTable,
    TableInfo,
)
from placeholder_etl.core.store import Store
from placeholder_etl.core.tables import SUFFIX, build_activity, write_table

__all__ = [
    "assemble_tables",
    "check_totals",
    "unordered_resources",
]


def _in_order(results: Sequence[ChunkResult]) -> bool:
    """True when a resource's chunks hold strictly increasing ids end to end."""
    last = None
    for result in results:
        if not result.ordered:
            return False
        if result.first_id is None:
            continue
        if last is not None and result.first_id <= last:
            return False
        last = result.last_id
    return True


def assemble_tables(
    resources: Sequence[str],
    results: Sequence[ChunkResult],
    cache: Store,
    staging: Output,
    fmt: TableFormat = "csv",
    on_table: Callable[[str, int, int], None] | None = None,
) -> dict[str, StagedTable]:
    """Write every table from its page files into ``staging``; add the activity summary when
    every resource is there.

    Args:
        resources: the resources of the run, in table order.
        results: every chunk's result, in plan order (page order within a resource).
        cache: where the page files are.
        staging: where the tables are staged until the commit.
        fmt: ``csv`` or ``parquet``.
        on_table: called as ``on_table(table, k, n)`` before the k-th of the n tables is
            written (1-based, in table order), for progress.

    Returns:
        What was staged, by table: the commit's argument (:func:`commit`), wherever this ran.

    A resource whose ids were not strictly increasing (duplicates across pages, unordered
    pages) is sorted and de-duplicated (see :func:`~placeholder_etl.core.tables.write_table`).
    """
    suffix = SUFFIX[fmt]
    staged: dict[str, StagedTable] = {}
    count = len(tables_of(list(resources)))

    def starting(table: str) -> None:
        if on_table is not None:
            on_table(table, len(staged) + 1, count)

    def stage(table: str, info: TableInfo) -> None:
        path = staging.staged_path(table, suffix)
        staged[table] = StagedTable(path=path, suffix=suffix, **info.model_dump(exclude={"file"}))

    for resource in resources:
        mine = [r for r in results if r.spec.resource == resource]
        ordered = _in_order(mine)
        rows = sum(r.rows for r in mine)
        for table in TABLES[resource]:
            parts = [path for r in mine for path in r.parts[table]]
            starting(table)
            with staging.open_table(table, suffix) as out:
                stage(table, write_table(table, cache, parts, out, rows, fmt, ordered))
    if set(resources) == set(RESOURCE_NAMES):
        flat = {t: staged[t].path for t in ("users_flat", *RESOURCE_NAMES[1:])}
        starting(ACTIVITY_TABLE)
        with staging.open_table(ACTIVITY_TABLE, suffix) as out:
            stage(ACTIVITY_TABLE, build_activity(staging.store, flat, out, fmt))
    return staged


def unordered_resources(results: Sequence[ChunkResult]) -> list[str]:
    """Resources whose ids were not strictly increasing (they get sorted and de-duplicated)."""
    resources = dict.fromkeys(r.spec.resource for r in results)
    return [
        name for name in resources if not _in_order([r for r in results if r.spec.resource == name])
    ]


def check_totals(totals: Totals, tables: Mapping[str, TableInfo | StagedTable]) -> None:
    """Every resource must hold as many distinct records as the API said it had.

    Raises:
        PermanentError: naming the resource and both counts.
    """
    for resource, total in totals.items():
        rows = tables[TABLES[resource][0]].rows
        if total is not None and rows != total:
            raise PermanentError(
                f"{resource}: the API reported {total} records (X-Total-Count) but its pages "
                f"held {rows} distinct records; the data changed during the run or the server "
                "pages inconsistently, so nothing was written — run again"
            )
