"""The data contract: the documented shape of every JSONPlaceholder record.

The record types are built from :mod:`~placeholder_etl.core.schema` (its ``FIELDS``).
Records are validated with pydantic in strict mode (no coercion: an ``id`` of ``"3"`` is a
breach, not a 3). Integers must fit in 64 bits (the tables' int64 columns). Unknown extra
fields are allowed and dropped, so the output tables keep stable columns when the API adds
a field.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from placeholder_etl.core.errors import ContractError
from placeholder_etl.core.schema import FIELDS, nested

__all__ = ["RECORD_TYPES", "check_records"]

_STRICT = ConfigDict(strict=True, extra="ignore")
_INT64 = (-(2**63), 2**63 - 1)
#: An id or a reference: an integer the tables' int64 columns can hold.
Int64 = Annotated[int, Field(ge=_INT64[0], le=_INT64[1])]


#: The Python type each kind of field must have in the API's JSON.
_TYPES: dict[str, Any] = {"int": Int64, "str": str, "coordinate": str, "bool": bool}


def _record_type(name: str, shape: dict[str, Any]) -> type:
    """A strict TypedDict of a record's shape (:func:`~placeholder_etl.core.schema.nested`),
    nested objects as TypedDicts of their own (``User``, ``UserAddress``, ``UserAddressGeo``)."""
    fields = {
        key: _record_type(name + key[:1].upper() + key[1:], kind)
        if isinstance(kind, dict)
        else _TYPES[kind]
        for key, kind in shape.items()
    }
    return with_config(_STRICT)(TypedDict(name, fields))  # type: ignore[operator]


#: One record type per resource, from the schema: ``RECORD_TYPES["users"]`` is ``User``.
RECORD_TYPES: dict[str, type] = {
    resource: _record_type(resource.title().removesuffix("s"), nested(fields))
    for resource, fields in FIELDS.items()
}
_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    resource: TypeAdapter(list[record]) for resource, record in RECORD_TYPES.items()
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
    value = error.get("input")
    if error["type"] == "missing":
        problem = "missing"
    elif _outside_64_bits(error["type"], value):
        problem = f"a number outside 64 bits, got {value!r}"[:200]
    else:
        problem = f"{error['msg'].lower()}, got {error['input']!r}"[:200]
    return f"{where or resource}: record id={rid!r} field {name}: {problem}"


def _outside_64_bits(kind: str, value: Any) -> bool:
    """An integer beyond int64 (orjson reads one beyond 64 bits as a float, which then is
    at least 2**63 in magnitude: a float that size never comes from a JSON int in range)."""
    if kind in ("less_than_equal", "greater_than_equal") and isinstance(value, int):
        return True
    return isinstance(value, float) and value.is_integer() and abs(value) >= 2**63
