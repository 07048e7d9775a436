"""The data contract: the documented shape of every JSONPlaceholder record.

Records are validated with pydantic in strict mode (no coercion: an ``id`` of ``"3"`` is a
breach, not a 3). Unknown extra fields are allowed and dropped, so the output tables keep
stable columns when the API adds a field.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from placeholder_etl.core.errors import ContractError

__all__ = ["check_records"]

_STRICT = ConfigDict(strict=True, extra="ignore")


@with_config(_STRICT)
class Geo(TypedDict):
    lat: str
    lng: str


@with_config(_STRICT)
class Address(TypedDict):
    street: str
    suite: str
    city: str
    zipcode: str
    geo: Geo


@with_config(_STRICT)
class Company(TypedDict):
    name: str
    catchPhrase: str
    bs: str


@with_config(_STRICT)
class User(TypedDict):
    id: int
    name: str
    username: str
    email: str
    address: Address
    phone: str
    website: str
    company: Company


@with_config(_STRICT)
class Post(TypedDict):
    userId: int
    id: int
    title: str
    body: str


@with_config(_STRICT)
class Comment(TypedDict):
    postId: int
    id: int
    name: str
    email: str
    body: str


@with_config(_STRICT)
class Album(TypedDict):
    userId: int
    id: int
    title: str


@with_config(_STRICT)
class Photo(TypedDict):
    albumId: int
    id: int
    title: str
    url: str
    thumbnailUrl: str


@with_config(_STRICT)
class Todo(TypedDict):
    userId: int
    id: int
    title: str
    completed: bool


_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(list[model])
    for name, model in {
        "users": User,
        "posts": Post,
        "comments": Comment,
        "albums": Album,
        "photos": Photo,
        "todos": Todo,
    }.items()
}


def check_records(resource: str, records: list[Any], where: str = "") -> list[dict[str, Any]]:
    """Validate ``records`` of ``resource`` against the contract.

    Args:
        resource: a JSONPlaceholder resource name.
        records: the decoded JSON list of one response.
        where: the start of the error message, saying where the records came from
            (e.g. ``"users page 3 from http://…"``); defaults to the resource name.

    Returns:
        The records with unknown extra fields removed.

    Raises:
        ContractError: naming the resource, the record id and the field of the first breach.
    """
    try:
        return _ADAPTERS[resource].validate_python(records)
    except ValidationError as exc:
        raise ContractError(_describe(resource, records, exc, where)) from None


def _describe(resource: str, records: list[Any], exc: ValidationError, where: str) -> str:
    error = exc.errors(include_url=False)[0]
    index, *field = error["loc"] if error["loc"] else (0,)
    record = records[index] if isinstance(index, int) and index < len(records) else None
    rid = record.get("id", "?") if isinstance(record, dict) else "?"
    name = ".".join(str(part) for part in field) or "(record)"
    if error["type"] == "missing":
        problem = "missing"
    else:
        problem = f"{error['msg'].lower()}, got {error['input']!r}"[:200]
    return f"{where or resource}: record id={rid!r} field {name}: {problem}"
