"""A page of JSONPlaceholder records -> CSV rows of its output tables, in Arrow, without the GIL.

The fast path of ``RawPage.records`` (orjson + the pydantic contract) + ``rows.py`` for one
page (see :func:`placeholder_etl.core.extract.render_page`): Arrow's JSON reader parses the
body against the contract as an explicit schema (strict: ``"3"``, ``true`` or ``3.0`` for an int, a number for a string, a
missing field or a null all fail or show as nulls), and Arrow compute kernels build every
output table's CSV rows. The heavy steps run in C++ (or numpy) with the GIL released, so
two threads of one process use both cores.

The output is byte for byte what ``rows.py`` writes: ``csv.writer(lineterminator="\\n")``
with minimal quoting (a field is quoted when it holds ``,`` ``"`` or ``\\n``; Python 3.11
and 3.12 do NOT quote a lone ``\\r``, 3.13 does: the set is probed at import), floats as
``repr`` (``-37.3159``, ``0.0``, ``-0.0``), bools as ``True``/``False``, and text starting
with ``= + - @ \\t \\r`` prefixed with ``'`` unless ``keep_formulas``.

:func:`page_tables` returns ``None`` ("decline") for every page the pydantic path rejects (not
JSON, not a list, a contract breach) and for pages it cannot vouch for. The caller then runs
the pydantic path on the same body, which produces the rows or raises the usual
PermanentError/ContractError with its message: declining is always safe, only slower.
Ordinary pages, extra fields included, never decline. It declines, although the pydantic path
may accept them:

- ints outside signed 64 bits; a duplicated key in an object (orjson keeps the last);
- a latitude/longitude that is not ``-?(0|[1-9]digits).digits`` with at most 15 digits, or
  is below 1e-4 in magnitude (repr would write ``1e-05``): e.g. ``"5"``, ``"1e5"``,
  ``" 1.5"``, ``"nan"``, ``"+1.5"``, ``"007.5"``, ``"0.00001"`` (Python's float() takes them);
- text holding ``NaN``/``Inf``/``Infinity`` between JSON delimiters (``"x: NaN, y"``);
- bodies over 1 GiB, or whose text or rows exceed Arrow's 2 GiB per string array.

Dependencies: pyarrow (26.0.1), numpy (2.4.6) and orjson (3.13.0, only for pages with many
extra objects or lists, see ``_extra_containers``).
"""

from __future__ import annotations

import csv
import io
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from placeholder_etl.core.resources import TABLES
from placeholder_etl.core.rows import FLAT_PATHS
from placeholder_etl.core.schema import FIELDS, SEED, nested

__all__ = ["PageTables", "page_tables", "warm_up"]

_S = pa.string()
_I = pa.int64()
_ARROW = {"int": _I, "str": _S, "coordinate": _S, "bool": pa.bool_()}


def _struct(shape: dict[str, Any]) -> pa.StructType:
    """An Arrow struct of a record's shape (:func:`~placeholder_etl.core.schema.nested`)."""
    return pa.struct(
        [
            (name, _struct(kind) if isinstance(kind, dict) else _ARROW[kind])
            for name, kind in shape.items()
        ]
    )


#: The schema as Arrow record types, in the API's field order.
_RECORD: dict[str, pa.StructType] = {
    name: _struct(nested(fields)) for name, fields in FIELDS.items()
}

#: Coordinates: text in the API, written as it came (the tables' floats are parsed later).
_COORDINATES = frozenset(
    field.path for fields in FIELDS.values() for field in fields if field.kind == "coordinate"
)
#: The seed table's columns; "address" is street, suite, city.
_SEED_PATHS = tuple(path for _, path in SEED)

# The body goes inside a one-element list (see _PREFIX): the page is r[0][0].
_SCHEMAS = {
    name: pa.schema([("r", pa.list_(pa.list_(record)))]) for name, record in _RECORD.items()
}
_PARSE = {
    name: pj.ParseOptions(
        explicit_schema=schema,
        unexpected_field_behavior="ignore",  # extra fields: allowed and dropped
        newlines_in_values=True,  # one block holds the whole page anyway
    )
    for name, schema in _SCHEMAS.items()
}

# Arrow reads a stream of JSON objects; the page becomes the only element of a list in one
# object. Anything after the page's own list (``[...], "x": 1`` or ``[...]]} {...``), which
# orjson rejects, then shows up as a second element or a second row, or fails to parse.
_PREFIX = b'{"r":['
_SUFFIX = b"]}"
_MAX_BODY = 1 << 30
#: JSON objects per record (users: the record, address, geo, company).
_OBJECTS_PER_RECORD = {name: str(record).count("struct<") for name, record in _RECORD.items()}
_MAX_EXTRA_CONTAINERS = 1000

_FORMULA = "^([=+\\-@\t\r])"  # rows.FORMULA_PREFIXES, as an RE2 pattern


def _quoted_characters() -> np.ndarray:
    """Which bytes make ``csv.writer(lineterminator="\\n")`` quote a field, on this Python.

    3.11 and 3.12: ``,`` ``"`` ``\\n`` (not a lone ``\\r``); 3.13 also ``\\r``. Probed, not
    assumed. Only ASCII can be told from a byte; a non-ASCII character that made the writer
    quote would make this module refuse to load rather than differ.
    """

    def quotes(char: str) -> bool:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([f"a{char}b", "c"])
        return buffer.getvalue().startswith('"')

    table = np.zeros(256, dtype=bool)
    for code in range(128):
        table[code] = quotes(chr(code))
    for char in "\x85\xa0\u2028\u2029\ufeff\U0001f600":
        if quotes(char):
            raise ImportError(f"csv.writer quotes {char!r}: the fast path cannot match it")
    return table


_NEEDS_QUOTES = _quoted_characters()
_IS_FORMULA = np.zeros(256, dtype=bool)
_IS_FORMULA[[ord(c) for c in "=+-@\t\r"]] = True
# A coordinate: decimal, no leading zeros, a fraction (what the API sends: "-37.3159").
_DECIMAL = "^-?(0|[1-9][0-9]*)\\.[0-9]+$"
# Its trailing zeros, keeping one after the point: "1.500" -> "1.5", "1.000" -> "1.0".
_TRAILING_ZEROS = "(\\.0)0*$|0+$"
# Literals Arrow's parser (RapidJSON with kParseNanAndInfFlag) accepts in a value position
# and orjson rejects: NaN, Inf, Infinity, with an optional minus, between delimiters. In a
# contract field they fail the parse anyway; in an extra (ignored) field only this check
# catches them. Text like "x: NaN, y" inside a string matches too (a harmless decline).
_NON_JSON = "[:,\\[][ \t\r\n]*-?(NaN|Inf|Infinity)[ \t\r\n]*[,}\\]]"


class Decline(Exception):
    """The fast path cannot vouch for this page: run the pydantic path instead."""


@dataclass(frozen=True, slots=True)
class PageTables:
    """One page's CSV rows (no header) per output table, and what extract_chunk counts."""

    tables: dict[str, bytes]
    rows: int
    first_id: int | None
    last_id: int | None
    ordered: bool  # ids strictly increasing within the page


def page_tables(resource: str, body: bytes, keep_formulas: bool = False) -> PageTables | None:
    """Decode, check and render one page; ``None`` means "use the pydantic path".

    Args:
        resource: one of the six JSONPlaceholder resources.
        body: the raw response body (a JSON list of records).
        keep_formulas: as ``extract_chunk``'s: keep text starting with ``= + - @ \\t \\r``.

    Returns:
        The tables' CSV rows, byte for byte what :mod:`placeholder_etl.core.rows` writes, or
        ``None`` when the page breaks the contract, is not JSON, or is unusual enough that
        the fast path declines it.
    """
    try:
        return _page_tables(resource, body, keep_formulas)
    except Exception:  # noqa: BLE001 - Decline, ArrowInvalid (parse or type error), anything
        return None  # declining is always safe: the caller runs the pydantic path


def _page_tables(resource: str, body: bytes, keep_formulas: bool) -> PageTables:
    if resource not in _RECORD or len(body) > _MAX_BODY:
        raise Decline
    raw = pa.Array.from_buffers(pa.binary(), 1, [None, _offsets(len(body)), pa.py_buffer(body)])
    # orjson accepts only valid UTF-8; Arrow's parser checks it only in the values it reads.
    raw.cast(_S)  # raises ArrowInvalid on invalid UTF-8 (a kernel: runs without the GIL)
    if _has_nan_or_inf(raw):
        raise Decline
    buffer = pa.py_buffer(_PREFIX + body + _SUFFIX)
    table = pj.read_json(
        pa.BufferReader(buffer),
        read_options=pj.ReadOptions(use_threads=False, block_size=max(len(buffer) + 64, 1 << 16)),
        parse_options=_PARSE[resource],
    )
    if table.num_rows != 1:
        raise Decline  # text after the page: several JSON documents
    outer = table.column("r").combine_chunks()
    if outer.null_count or pc.list_value_length(outer)[0].as_py() != 1:
        raise Decline  # text after the page's list: not one JSON value
    lists = pc.list_flatten(outer)
    if lists.null_count:
        raise Decline  # the body is `null`, not a list
    records = pc.list_flatten(lists)
    if isinstance(records, pa.ChunkedArray):
        records = records.combine_chunks()
    if _extra_containers(body, len(records), resource) > _MAX_EXTRA_CONTAINERS:
        # Maybe nested deeper than orjson's 1,024 levels (Arrow's parser has no limit, and
        # skips extra fields unseen): let orjson itself judge. Rare: only extra fields
        # holding objects or lists, or text full of braces, get here.
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Decline from None
    leaves = _leaves(records, _RECORD[resource])
    for array in leaves.values():
        if array.null_count:
            raise Decline  # a missing field, a null, a null record or nested object

    n = len(records)
    if n == 0:
        return PageTables({name: b"" for name in TABLES[resource]}, 0, None, None, True)
    ids = leaves["id"]
    users = resource == "users"
    paths = FLAT_PATHS[resource]

    # All text of the page is rendered in one go (one array, a handful of kernel calls),
    # then cut back into columns: per-column calls cost more in Python than in C++.
    text_paths = [p for p in paths if leaves[p].type == _S and p not in _COORDINATES]
    texts = [leaves[p] for p in text_paths]
    if users:
        texts.append(
            pc.binary_join_element_wise(
                leaves["address.street"], leaves["address.suite"], leaves["address.city"], ", "
            )
        )
    names = [*text_paths, "address"] if users else text_paths
    rendered = dict(zip(names, _render_text(texts, not keep_formulas), strict=True))
    for path in paths:
        array = leaves[path]
        if array.type == _I:
            rendered[path] = pc.cast(array, _S)
        elif array.type == pa.bool_():
            rendered[path] = pc.if_else(array, "True", "False")
    if users:
        lat, lng = _coordinates(leaves["address.geo.lat"], leaves["address.geo.lng"])
        rendered["address.geo.lat"], rendered["address.geo.lng"] = lat, lng

    tables = {}
    if users:
        seed = _lines([rendered[p] for p in _SEED_PATHS])
        tables["users"] = _bytes(pc.take(seed, pc.sort_indices(ids)))  # a stable sort
    tables["users_flat" if users else resource] = _bytes(_lines([rendered[p] for p in paths]))
    ordered = n < 2 or pc.all(pc.greater(ids[1:], ids[:-1])).as_py()
    return PageTables(tables, n, ids[0].as_py(), ids[-1].as_py(), bool(ordered))


def _extra_containers(body: bytes, records: int, resource: str) -> int:
    """An upper bound of the objects and lists in ``body`` beyond the contract's own.

    Counts every ``{`` and ``[`` byte, also inside strings (only ever too many), minus the
    page's list and each record's contract objects. Nesting can go no deeper than this plus
    the contract's four levels, so at most 1,000 means within orjson's limit of 1,024.
    """
    openers = int(np.count_nonzero((np.frombuffer(body, np.uint8) | 0x20) == 0x7B))  # { [
    return openers - 1 - records * _OBJECTS_PER_RECORD[resource]


def _has_nan_or_inf(raw: pa.Array) -> bool:
    """Whether the body may hold a NaN/Inf literal (Arrow's parser takes them, orjson not).

    Two literal searches (RE2 skips to the first byte with memchr: ~15 us a page) and, only
    if one hits (e.g. "Information" in a text), the exact check of a value position.
    """
    if not (
        pc.any(pc.match_substring_regex(raw, "NaN")).as_py()
        or pc.any(pc.match_substring_regex(raw, "Inf")).as_py()
    ):
        return False
    return pc.any(pc.match_substring_regex(raw, _NON_JSON)).as_py()


def _leaves(array: pa.StructArray, record: pa.StructType, prefix: str = "") -> dict:
    """The contract's leaves of ``array`` by dotted path, parent nulls merged in."""
    children = array.flatten()  # each child carries its parents' nulls
    names = [array.type.field(i).name for i in range(array.type.num_fields)]
    out = {}
    for field in record:
        child = children[names.index(field.name)]
        path = prefix + field.name
        if pa.types.is_struct(field.type):
            if child.null_count:
                raise Decline
            out.update(_leaves(child, field.type, path + "."))
        else:
            out[path] = child
    return out


def _render_text(arrays: list[pa.Array], guard: bool) -> list[pa.Array]:
    """Text columns as csv.writer writes them: formula-guarded if ``guard``, quoted if needed.

    The columns are concatenated; which values start with a formula character and which
    hold a ``,``, ``"`` or ``\\n`` is found with numpy over the character buffer (all of them
    ASCII, so a byte is a character), and only those values are rewritten.
    """
    lengths = [len(a) for a in arrays]
    text = pa.concat_arrays(arrays)
    _, offsets, data = text.buffers()
    if data is None or data.size == 0:
        return arrays  # all empty strings
    offsets = np.frombuffer(offsets, np.int32, len(text) + 1, text.offset * 4)
    chars = np.frombuffer(data, np.uint8, offsets[-1] - offsets[0], offsets[0])
    offsets = offsets - offsets[0]
    if guard:
        first = chars[np.minimum(offsets[:-1], len(chars) - 1)]
        formula = _IS_FORMULA[first] & (offsets[1:] > offsets[:-1])  # empty: no formula
        if formula.any():
            text = pc.replace_substring_regex(text, _FORMULA, "'\\1")
    special = np.flatnonzero(_NEEDS_QUOTES[chars])
    if special.size:
        quote = np.zeros(len(text), dtype=bool)
        quote[np.searchsorted(offsets, special, side="right") - 1] = True
        mask = pa.array(quote)
        values = pc.filter(text, mask)
        values = pc.binary_join_element_wise('"', pc.replace_substring(values, '"', '""'), '"', "")
        text = pc.replace_with_mask(text, mask, values)
    out, start = [], 0
    for length in lengths:
        out.append(text.slice(start, length))
        start += length
    return out


def _coordinates(lat: pa.Array, lng: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``repr(float(text))`` for decimals like ``-37.3159`` (at most 15 digits).

    With at most 15 significant digits (DBL_DIG) the shortest repr of the nearest double
    has the same digits as the text, so formatting is a rewrite of the text: trailing zeros
    of the fraction dropped, at least ``.0`` kept (``"-37.3150"`` -> ``-37.315``,
    ``"-0.000"`` -> ``-0.0``). Anything else declines (Python's float() takes more, e.g.
    ``" 1.5"``, ``"1e5"``, ``"nan"``, ``"+1"``, ``"007.5"``, ``"5"``; the contract path handles
    those exactly), and so does 0 < |x| < 1e-4, where repr switches to ``1e-05`` notation.
    """
    text = pa.concat_arrays([lat, lng])
    if not pc.all(pc.match_substring_regex(text, _DECIMAL)).as_py():
        raise Decline
    # digits = length - the point - the sign
    minus = pc.cast(pc.starts_with(text, "-"), pa.int32())
    if pc.max(pc.subtract(pc.binary_length(text), minus)).as_py() > 16:
        raise Decline
    text = pc.replace_substring_regex(text, _TRAILING_ZEROS, "\\1")
    if pc.any(pc.or_(pc.starts_with(text, "0.0000"), pc.starts_with(text, "-0.0000"))).as_py():
        raise Decline
    return text.slice(0, len(lat)), text.slice(len(lat))


def _lines(columns: list[pa.Array]) -> pa.Array:
    """Rows of rendered fields: joined with ``,``, each ended with ``\\n``."""
    *first, last = columns
    return pc.binary_join_element_wise(*first, pc.binary_join_element_wise(last, "\n", ""), ",")


def _bytes(lines: pa.Array) -> bytes:
    """The characters of a string array, end to end (the lines are their own separators)."""
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    _, offsets, data = lines.buffers()
    offsets = memoryview(offsets).cast("i")  # int32 offsets (a page is far below 2 GiB)
    start, end = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return data[start:end].to_pybytes()


def _offsets(size: int) -> pa.Buffer:
    return pa.py_buffer(struct.pack("=ii", 0, size))


_WARM_PAGE = (
    b'[{"id":1,"name":"A, B","username":"a","email":"a@b.c","address":{"street":"s",'
    b'"suite":"=x","city":"c","zipcode":"1","geo":{"lat":"-1.5","lng":"2.0"}},"phone":"1",'
    b'"website":"w","company":{"name":"n","catchPhrase":"p\\n","bs":"b"}}]'
)


def warm_up() -> None:
    """Render one tiny page: Arrow builds its JSON reader, kernels and regexes on first use
    (~0.2 s), which a run can pay in the background while it counts records."""
    page_tables("users", _WARM_PAGE)
