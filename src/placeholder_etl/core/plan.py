"""Count each resource's records and split its pages into chunks, one task each."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from placeholder_etl.core.client import ApiClient, pages_for
from placeholder_etl.core.concurrency import ordered_map
from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.results import (
    ChunkSpec,
)
from placeholder_etl.core.settings import ClientSettings, Paging

__all__ = [
    "Totals",
    "auto_pages_per_chunk",
    "check_plan",
    "count_records",
    "plan_chunks",
    "planned_pages",
    "total_pages",
]


Totals = Mapping[str, int | None]


def count_records(
    api_url: str, resources: Sequence[str], client: ClientSettings, paging: Paging = "page"
) -> dict[str, int | None]:
    """How many records each resource has (None when the server does not say), asked at once.

    Raises:
        PermanentError: ``users`` is empty; TransientError: the API cannot be reached.
    """
    with ApiClient(api_url, client) as api:
        counts = ordered_map(lambda name: api.count(name, 1, paging), resources, len(resources))
        return dict(zip(resources, counts, strict=True))


def check_plan(totals: Totals, max_records: int) -> None:
    """Refuse a plan beyond ``max_records`` records per resource, before any page is fetched.

    Raises:
        PermanentError: naming the resource, its ``X-Total-Count`` and the limit.
    """
    for resource, total in totals.items():
        if total is not None and total > max_records:
            raise PermanentError(
                f"{resource}: the API reports {total:,} records (X-Total-Count), more than "
                f"--max-records {max_records:,}; nothing was fetched (raise --max-records to "
                "fetch them all)"
            )


def total_pages(totals: Totals, page_size: int) -> int:
    """Pages needed for every resource whose total is known."""
    return sum(pages_for(t or 0, page_size) for t in totals.values())


def planned_pages(chunks: Sequence[ChunkSpec]) -> int | None:
    """Pages the chunks will fetch (None when a resource's total is unknown)."""
    if any(chunk.last_page is None for chunk in chunks):
        return None
    return sum(chunk.last_page - chunk.first_page + 1 for chunk in chunks)  # type: ignore[operator]


def auto_pages_per_chunk(totals: Totals, page_size: int, slots: int) -> int:
    """Pages per task so that each of ``slots`` workers gets about two fat tasks."""
    return max(1, math.ceil(total_pages(totals, page_size) / max(1, 2 * slots)))


def plan_chunks(
    api_url: str,
    totals: Totals,
    page_size: int,
    pages_per_chunk: int,
    paging: Paging = "page",
    max_records: int | None = None,
) -> list[ChunkSpec]:
    """Split every resource's pages into chunks of ``pages_per_chunk`` pages.

    Args:
        api_url: the API root.
        totals: records per resource (None: unknown, one open-ended chunk).
        page_size: records per page.
        pages_per_chunk: pages fetched by one task.
        paging: ``page`` (``_page``/``_limit``) or ``start`` (``_start``/``_limit``).
        max_records: most records of one resource (:func:`check_plan`); an open-ended
            chunk fetches at most that many records' pages.
    """
    if page_size < 1 or pages_per_chunk < 1:
        raise ValueError("page_size and pages_per_chunk must be at least 1")
    chunks = []
    for resource, total in totals.items():
        if total is None:
            ranges: list[tuple[int, int | None]] = [(1, None)]
        else:
            pages = pages_for(total, page_size)
            ranges = [
                (first, min(first + pages_per_chunk - 1, pages))
                for first in range(1, pages + 1, pages_per_chunk)
            ]
        chunks += [
            ChunkSpec(
                api_url=api_url,
                resource=resource,
                first_page=first,
                last_page=last,
                page_size=page_size,
                paging=paging,
                total=total,
                max_pages=(
                    pages_for(max_records, page_size) if last is None and max_records else None
                ),
            )
            for first, last in ranges
        ]
    return chunks
