"""The transforms of :mod:`placeholder_etl.core.transform` as tuples and CSV bytes, no pandas.

The hot path (a chunk task) turns every page into CSV rows here, without a DataFrame per page
and without importing pandas. The tests hold these byte for byte to the pandas functions
(``transform_users``/``flatten_records`` followed by ``DataFrame.to_csv``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any

from placeholder_etl.core.errors import ContractError
from placeholder_etl.core.schema import FIELDS, SEED, coordinates, reader

__all__ = [
    "FLAT_COLUMNS",
    "FLAT_PATHS",
    "FORMULA_PREFIXES",
    "SEED_COLUMNS",
    "csv_header",
    "csv_rows",
    "flat_rows",
    "row_of",
    "seed_row",
]

#: The seed table's columns (:data:`~placeholder_etl.core.schema.SEED`).
SEED_COLUMNS: tuple[str, ...] = tuple(column for column, _ in SEED)

#: Leaves of each flat table, as paths into the API's records, in the API's field order.
FLAT_PATHS: dict[str, tuple[str, ...]] = {
    resource: tuple(field.path for field in fields) for resource, fields in FIELDS.items()
}

#: Columns of each flattened table (snake_case paths, joined with ``_``).
FLAT_COLUMNS: dict[str, tuple[str, ...]] = {
    resource: tuple(field.column for field in fields) for resource, fields in FIELDS.items()
}

#: Text starting with one of these runs as a formula in a spreadsheet (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def seed_row(user: Mapping[str, Any]) -> tuple[Any, ...]:
    """One user's row of the seed table, in :data:`SEED_COLUMNS` order."""
    address = user["address"]
    return (
        user["id"],
        user["name"],
        user["username"],
        user["email"],
        f"{address['street']}, {address['suite']}, {address['city']}",
        user["phone"],
        user["company"]["name"],
    )


def flat_rows(resource: str, records: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows of :func:`flatten_records` as tuples (coordinates as floats), without a DataFrame.

    Raises:
        ContractError: a coordinate is not a number.
    """
    row, floats = _ROW_OF[resource], _COORDINATES[resource]
    if not floats:
        return [row(record) for record in records]
    rows = []
    for record in records:
        values = list(row(record))
        for index in floats:
            try:
                values[index] = float(values[index])
            except ValueError:
                raise ContractError(
                    f"{resource}: record id={record['id']} field {FLAT_PATHS[resource][index]}: "
                    f"not a number, got {values[index]!r}"
                ) from None
        rows.append(tuple(values))
    return rows


def csv_rows(rows: Iterable[Sequence[Any]], keep_formulas: bool = False) -> bytes:
    """Rows as CSV without a header, byte for byte what ``DataFrame.to_csv`` writes for them.

    pandas writes through :mod:`csv` (minimal quoting, ``\n`` line ends); doing the same from
    tuples skips building a DataFrame per page. Formulas are guarded as in
    :func:`~placeholder_etl.core.transform.neutralise_formulas` unless ``keep_formulas``.
    """
    rows = rows if isinstance(rows, list) else list(rows)
    if not keep_formulas and _has_formula(rows):
        rows = [tuple(map(_guard, row)) for row in rows]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


def _has_formula(rows: list[Sequence[Any]]) -> bool:
    """Whether any text in ``rows`` may start with a formula character.

    Checked a column at a time with C-level ``map`` (a page rarely holds one, and this is
    half the cost of guarding every value); a column that is not all numbers or all ``str``
    counts as a hit, so the careful path decides.
    """
    for column in zip(*rows, strict=True):
        types = set(map(type, column))
        if types <= _NOT_TEXT:
            continue
        if types != {str} or any(map(str.startswith, column, repeat(FORMULA_PREFIXES))):
            return True
    return False


_NOT_TEXT = frozenset({int, float, bool, type(None)})


def _guard(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_header(columns: Iterable[str]) -> bytes:
    """The CSV header line ``DataFrame.to_csv`` writes for ``columns``."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(columns)
    return buffer.getvalue().encode()


def row_of(resource: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """The function that reads a ``resource`` record's leaves in :data:`FLAT_COLUMNS` order."""
    return _ROW_OF[resource]


# One function per resource that reads a record's leaves in FLAT_PATHS order: a direct
# lookup is ~30x faster than walking each record's keys and renaming them to snake_case
# (``itemgetter`` where every field is at the top, else a generated reader).
_ROW_OF: dict[str, Callable[[Mapping[str, Any]], tuple[Any, ...]]] = {
    resource: reader(resource) if any("." in p for p in paths) else itemgetter(*paths)
    for resource, paths in FLAT_PATHS.items()
}
#: Positions of the coordinates (text in the API, floats in the tables) in each flat row.
_COORDINATES = {resource: coordinates(resource) for resource in FIELDS}
