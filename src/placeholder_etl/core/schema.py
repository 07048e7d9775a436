"""Each resource's fields, declared once.

A field is a path into the API's records and a kind. Everything else is derived from
:data:`FIELDS`: the contract's record types (:mod:`~placeholder_etl.core.contract`), the Arrow
record types of the compiled page path (:mod:`~placeholder_etl.core.fastpath`), the flattened
tables' columns and their readers (:mod:`~placeholder_etl.core.rows`), the Parquet types
(:mod:`~placeholder_etl.core.tables`) and the pandas transform's floats
(:mod:`~placeholder_etl.core.transform`). Adding a field is one line here.

The seed table (``users``) is the tutorial's: :data:`SEED` names its columns and the paths
they come from (``address`` is the street, suite and city, joined).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "FIELDS",
    "SEED",
    "Field",
    "column_kinds",
    "coordinates",
    "nested",
    "reader",
]

#: ``int``: an integer the tables hold as int64; ``str``: text; ``bool``: true or false;
#: ``coordinate``: a latitude or longitude the API sends as text, a float in the tables.
Kind = Literal["int", "str", "bool", "coordinate"]


@dataclass(frozen=True, slots=True)
class Field:
    """One leaf of a record: its path in the API's JSON (``address.geo.lat``) and kind."""

    path: str
    kind: Kind = "str"

    @property
    def column(self) -> str:
        """Its column in the flattened table: ``company.catchPhrase`` → ``company_catch_phrase``."""
        return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", self.path).replace(".", "_").lower()


def _fields(*specs: str) -> tuple[Field, ...]:
    """``"id:int"``, ``"name"`` … as fields (the kind after a colon; text when none)."""
    return tuple(Field(*spec.split(":")) for spec in specs)  # type: ignore[arg-type]


#: Every resource's fields, in the API's order (the order of the flattened tables' columns).
FIELDS: dict[str, tuple[Field, ...]] = {
    "users": _fields(
        "id:int",
        "name",
        "username",
        "email",
        "address.street",
        "address.suite",
        "address.city",
        "address.zipcode",
        "address.geo.lat:coordinate",
        "address.geo.lng:coordinate",
        "phone",
        "website",
        "company.name",
        "company.catchPhrase",
        "company.bs",
    ),
    "posts": _fields("userId:int", "id:int", "title", "body"),
    "comments": _fields("postId:int", "id:int", "name", "email", "body"),
    "albums": _fields("userId:int", "id:int", "title"),
    "photos": _fields("albumId:int", "id:int", "title", "url", "thumbnailUrl"),
    "todos": _fields("userId:int", "id:int", "title", "completed:bool"),
}

#: The seed table: (column, path). ``address`` is ``street, suite, city``.
SEED: tuple[tuple[str, str], ...] = (
    ("ID", "id"),
    ("Name", "name"),
    ("Username", "username"),
    ("Email", "email"),
    ("Address", "address"),
    ("PhoneNumber", "phone"),
    ("Company", "company.name"),
)


def nested(fields: tuple[Field, ...]) -> dict[str, Kind | dict[str, Any]]:
    """The record's shape: ``{"id": "int", "address": {"geo": {"lat": "coordinate", …}, …}}``,
    keys in the API's order."""
    shape: dict[str, Any] = {}
    for field in fields:
        *parents, leaf = field.path.split(".")
        node = shape
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = field.kind
    return shape


def coordinates(resource: str) -> tuple[int, ...]:
    """Positions of the coordinate fields in a resource's flattened rows."""
    return tuple(i for i, field in enumerate(FIELDS[resource]) if field.kind == "coordinate")


def column_kinds() -> dict[str, Kind]:
    """Every flattened (and seed) column that is not text, with its kind."""
    kinds: dict[str, Kind] = {
        field.column: field.kind
        for fields in FIELDS.values()
        for field in fields
        if field.kind != "str"
    }
    seed_paths = {field.path: field.kind for field in FIELDS["users"]}
    kinds |= {
        column: seed_paths[path] for column, path in SEED if seed_paths.get(path, "str") != "str"
    }
    return kinds


def reader(resource: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A function that reads a record's fields, in order, as a tuple.

    Generated as one expression (``lambda r: (r["id"], r["address"]["geo"]["lat"], …)``):
    about 30 times faster than walking each field's path.
    """
    items = ", ".join(
        "r" + "".join(f"[{part!r}]" for part in field.path.split(".")) for field in FIELDS[resource]
    )
    return eval(f"lambda r: ({items},)")
