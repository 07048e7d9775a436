"""Pure pandas transforms: records in, DataFrames out.

- :func:`transform_users` is the seed tutorial's users table, exactly.
- :func:`flatten_records` flattens any resource (``address.geo.lat`` → ``address_geo_lat``).
- :func:`summarize_activity` joins every resource into one row of activity per user.

No I/O here. The flow writes the same rows without pandas (:mod:`placeholder_etl.core.rows`,
held byte for byte to these by the tests); the notebooks call these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from placeholder_etl.core.errors import ContractError
from placeholder_etl.core.rows import FLAT_COLUMNS, FORMULA_PREFIXES, SEED_COLUMNS, row_of, seed_row
from placeholder_etl.core.schema import FIELDS

__all__ = [
    "ACTIVITY_COLUMNS",
    "flatten_records",
    "neutralise_formulas",
    "summarize_activity",
    "transform_users",
]

#: Coordinates: text in the API, floats in the tables (from the schema).
_FLOAT_COLUMNS = tuple(
    field.column for fields in FIELDS.values() for field in fields if field.kind == "coordinate"
)

ACTIVITY_COLUMNS: tuple[str, ...] = (
    "user_id",
    "name",
    "posts_written",
    "comments_received",
    "todos",
    "todos_done",
    "todos_done_ratio",
    "albums",
    "photos",
)


def transform_users(users: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The seed tutorial's users table: one row per user, in id order.

    Address is ``street, suite, city`` and Company is ``company.name``.

    Args:
        users: user records as the API returns them.

    Returns:
        A DataFrame with columns ``ID,Name,Username,Email,Address,PhoneNumber,Company``.
    """
    frame = pd.DataFrame.from_records(
        [seed_row(user) for user in users], columns=list(SEED_COLUMNS)
    )
    return frame.sort_values("ID", kind="stable", ignore_index=True)


def flatten_records(resource: str, records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Flatten nested records into one column per leaf, snake_case, joined with ``_``.

    ``address.geo.lat`` becomes ``address_geo_lat`` (a float); ``userId`` becomes ``user_id``.

    Args:
        resource: the resource the records belong to (decides the columns).
        records: records as the API returns them (unknown extra fields are dropped).

    Raises:
        ContractError: a coordinate is not a number.
    """
    columns = FLAT_COLUMNS[resource]
    row = row_of(resource)
    frame = pd.DataFrame.from_records([row(record) for record in records], columns=list(columns))
    for column in _FLOAT_COLUMNS:
        if column in frame.columns:
            frame[column] = _to_float(frame, column, resource)
    return frame


def summarize_activity(
    users: pd.DataFrame,
    posts: pd.DataFrame,
    comments: pd.DataFrame,
    todos: pd.DataFrame,
    albums: pd.DataFrame,
    photos: pd.DataFrame,
) -> pd.DataFrame:
    """One row per user: posts written, comments received, todos done, albums and photos.

    Takes the flattened tables (only the id and parent-id columns are used, plus the user's
    name and the todos' ``completed``).

    Returns:
        A DataFrame with :data:`ACTIVITY_COLUMNS`, one row per user in id order; users with
        no activity get zeros (and a ratio of 0.0 when they have no todos).
    """
    post_owner = posts.set_index("id")["user_id"]
    album_owner = albums.set_index("id")["user_id"]
    comments_received = comments["post_id"].map(post_owner).value_counts()
    photos_owned = photos["album_id"].map(album_owner).value_counts()
    todo_counts = todos.groupby("user_id")["completed"].agg(["size", "sum"])

    summary = pd.DataFrame({"user_id": users["id"], "name": users["name"]}).set_index(
        "user_id", drop=False
    )
    summary["posts_written"] = posts["user_id"].value_counts()
    summary["comments_received"] = comments_received
    summary["todos"] = todo_counts["size"]
    summary["todos_done"] = todo_counts["sum"]
    summary["albums"] = albums["user_id"].value_counts()
    summary["photos"] = photos_owned
    counts = ["posts_written", "comments_received", "todos", "todos_done", "albums", "photos"]
    summary[counts] = summary[counts].fillna(0).astype("int64")
    ratio = summary["todos_done"] / summary["todos"].where(summary["todos"] > 0)
    summary["todos_done_ratio"] = ratio.fillna(0.0).round(4)
    return summary.sort_index().reset_index(drop=True)[list(ACTIVITY_COLUMNS)]


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """Prefix text that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``) with ``'``.

    CSV formula injection: a cell such as ``=HYPERLINK(...)`` opened in Excel or LibreOffice
    runs. Only text columns change; numbers (a negative latitude) stay numbers.
    """
    text = [
        c
        for c in frame.columns
        if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])
    ]
    if not text:
        return frame
    out = frame.copy()
    for column in text:
        values = out[column]
        risky = values.str.startswith(FORMULA_PREFIXES, na=False)
        if risky.any():
            out[column] = values.where(~risky, "'" + values)
    return out


def _to_float(frame: pd.DataFrame, column: str, resource: str) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = frame.loc[bad].iloc[0]
        raise ContractError(
            f"{resource}: record id={int(row['id'])} field {column.replace('_', '.')}: "
            f"not a number, got {row[column]!r}"
        )
    return values.astype("float64")
