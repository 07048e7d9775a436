"""The compiled page path (``fastpath.page_tables``) against the pydantic one, byte for byte.

The one rule, checked by :func:`check` on every page here:
- the pydantic path (orjson, the contract's models, ``rows.py``) rejects the page (not JSON,
  not a list, a contract breach)  =>  the fast path returns None;
- it accepts the page  =>  the fast path returns None (declines) or exactly the same tables,
  record count, first/last id and "ordered" flag.
Where a page is ordinary, the tests also demand that the fast path did NOT decline. The
pydantic path is itself held to the pandas transforms by ``test_transform.py``.
"""

from __future__ import annotations

import copy
import json
import random
import threading

import orjson
import pytest

from placeholder_api.fakedata import make_records
from placeholder_etl.core.client import RawPage
from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.extract import _checked_page
from placeholder_etl.core.fastpath import PageTables, page_tables
from placeholder_etl.core.rows import FORMULA_PREFIXES


def old_page(resource: str, body: bytes, keep_formulas: bool = False):
    """The pydantic path's (tables, rows, first_id, last_id, ordered); raises when it rejects."""
    raw = RawPage(resource, 1, "", resource, body, "application/json", None, 0)
    page = _checked_page(raw, keep_formulas)
    return page.tables, page.rows, page.first_id, page.last_id, page.ordered


RESOURCES = ("users", "posts", "comments", "albums", "photos", "todos")

#: Every leaf of each record, as a path, with its contract type.
LEAVES: dict[str, dict[tuple[str, ...], type]] = {
    "users": {
        ("id",): int,
        ("name",): str,
        ("username",): str,
        ("email",): str,
        ("address", "street"): str,
        ("address", "suite"): str,
        ("address", "city"): str,
        ("address", "zipcode"): str,
        ("address", "geo", "lat"): str,
        ("address", "geo", "lng"): str,
        ("phone",): str,
        ("website",): str,
        ("company", "name"): str,
        ("company", "catchPhrase"): str,
        ("company", "bs"): str,
    },
    "posts": {("userId",): int, ("id",): int, ("title",): str, ("body",): str},
    "comments": {
        ("postId",): int,
        ("id",): int,
        ("name",): str,
        ("email",): str,
        ("body",): str,
    },
    "albums": {("userId",): int, ("id",): int, ("title",): str},
    "photos": {
        ("albumId",): int,
        ("id",): int,
        ("title",): str,
        ("url",): str,
        ("thumbnailUrl",): str,
    },
    "todos": {("userId",): int, ("id",): int, ("title",): str, ("completed",): bool},
}
COORDINATES = {("address", "geo", "lat"), ("address", "geo", "lng")}
TEXT = {
    r: [p for p, t in leaves.items() if t is str and p not in COORDINATES]
    for r, leaves in LEAVES.items()
}
NESTED = {"users": [("address",), ("address", "geo"), ("company",)]}


# --------------------------------------------------------------------------- helpers


def old_outcome(resource: str, body: bytes, keep: bool):
    try:
        return old_page(resource, body, keep)
    except (PermanentError, TypeError):  # not JSON, not a list, a contract breach: rejected
        return None


def check(resource: str, body: bytes, keep: bool = False, fast: bool | None = None):
    """Apply the rule; ``fast=True`` also demands acceptance, ``False`` a decline."""
    old = old_outcome(resource, body, keep)
    new = page_tables(resource, body, keep)
    if old is None:
        assert new is None, f"fast path accepted a page today's path rejects: {body[:300]!r}"
    elif new is not None:
        assert isinstance(new, PageTables)
        tables, rows, first, last, ordered = old
        assert list(new.tables) == list(tables)
        for name in tables:
            assert new.tables[name] == tables[name], _first_difference(
                tables[name], new.tables[name]
            )
        assert (new.rows, new.first_id, new.last_id, new.ordered) == (rows, first, last, ordered)
    if fast is True:
        assert old is not None, "test bug: today's path rejects this page"
        assert new is not None, f"fast path declined an ordinary page: {body[:300]!r}"
    if fast is False:
        assert new is None
    return old, new


def _first_difference(a: bytes, b: bytes) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"bytes differ at {i}: old {a[max(0, i - 60) : i + 40]!r} new {b[max(0, i - 60) : i + 40]!r}"


def records(resource: str, n: int, start: int = 1, seed: int = 0) -> list[dict]:
    return make_records(resource, start, start + n, seed)


def body_of(recs) -> bytes:
    try:
        return orjson.dumps(recs)
    except TypeError:  # ints beyond 64 bits
        return json.dumps(recs, ensure_ascii=False).encode()


def set_path(record: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        record = record[key]
    record[path[-1]] = value


def del_path(record: dict, path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        record = record[key]
    del record[path[-1]]


def with_value(resource, n, index, path, value):
    recs = records(resource, n)
    set_path(recs[index], path, value)
    return recs


# --------------------------------------------------------------------------- ordinary pages


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("size", [1, 2, 10, 999, 1000])
@pytest.mark.parametrize("resource", RESOURCES)
def test_generated_pages_are_identical(resource, size, keep):
    for start, seed in ((1, 0), (123_457, 7)):
        check(resource, body_of(records(resource, size, start, seed)), keep, fast=True)


@pytest.mark.parametrize("resource", RESOURCES)
def test_an_empty_page(resource):
    _, new = check(resource, b"[]", fast=True)
    assert all(v == b"" for v in new.tables.values())
    assert (new.rows, new.first_id, new.last_id, new.ordered) == (0, None, None, True)
    check(resource, b" [ ] \n", fast=True)


# --------------------------------------------------------------------------- formulas


FORMULA_VALUES = [
    *(p + "x" for p in FORMULA_PREFIXES),
    *FORMULA_PREFIXES,  # the prefix alone
    *(p + ',"q"\nz' for p in FORMULA_PREFIXES),  # guarded and quoted
    *(p + p for p in FORMULA_PREFIXES),
    '=HYPERLINK("http://evil.example")',
    "+1+1",
    "-2+3",
    "@SUM(A1:A2)",
    "'=already guarded",
    "a=b",  # not at the start: left alone
    " =x",
    "\n=x",
    "\r\n",
    "\t",
    "-",
    "-37.3159",  # text that looks like a negative number is still text: guarded
]


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("resource", RESOURCES)
def test_formulas_in_every_text_column_at_either_end(resource, keep):
    for path in TEXT[resource]:
        for value in FORMULA_VALUES:
            for index in (0, -1):
                recs = with_value(resource, 4, index, path, value)
                check(resource, body_of(recs), keep, fast=True)
        # one formula per column, everywhere in a full page
        recs = records(resource, 1000)
        for i, rec in enumerate(recs):
            set_path(rec, path, FORMULA_VALUES[i % len(FORMULA_VALUES)] + str(i))
        check(resource, body_of(recs), keep, fast=True)


# --------------------------------------------------------------------------- coordinates

PLAIN_COORDINATES = [
    "-37.3159",
    "81.1496",
    "0.0",
    "-0.0",
    "0.0000",
    "-0.0000",
    "1.50",
    "1.000",
    "180.0000",
    "-179.9999",
    "90.0",
    "0.0001",
    "-0.0001",
    "0.000100",
    "0.1",
    "10.0",
    "100.5000",
    "123456789.12345",
    "12345678901234.5",
    "0.12345678901234",
    "-1.5",
    "7.0010",
]
# Python's float() takes these; the fast path declines them (the contract path decides).
ODD_COORDINATES = [
    "0.00001",
    "-0.00009",
    "0.0000123",
    "5",
    "-0",
    "007.5",
    "00.5",
    "1.",
    ".5",
    "+1.5",
    "1e5",
    "1E-7",
    " 1.5",
    "1.5 ",
    "\t1.5\n",
    "1_000.5",
    "nan",
    "NaN",
    "-inf",
    "Infinity",
    "1234567890123456.0",
    "0.1234567890123456",
    "\u0661.\u0665",
    "1.5e+300",
    # 16 significant digits: repr may differ from the text
    "645.4158683449786",
    "-882.1840110704341",
    "9719817.665991734",
]
BAD_COORDINATES = ["", "abc", "1,5", "1.2.3", "--1", "1.5x", "0x10", "∞", "1 5"]


@pytest.mark.parametrize("value", PLAIN_COORDINATES)
def test_plain_coordinates_are_formatted_as_python_floats(value):
    for path in COORDINATES:
        for index in (0, -1):
            check("users", body_of(with_value("users", 3, index, path, value)), fast=True)


@pytest.mark.parametrize("value", ODD_COORDINATES + BAD_COORDINATES)
def test_odd_and_bad_coordinates_fall_back(value):
    for path in COORDINATES:
        old, new = check("users", body_of(with_value("users", 3, 1, path, value)))
        assert new is None
        assert (old is None) == (value in BAD_COORDINATES)


def test_random_decimal_coordinates():
    rng = random.Random(5)
    recs = records("users", 1000)
    for rec in recs:
        for key in ("lat", "lng"):
            int_digits = rng.randint(1, 8)
            frac_digits = rng.randint(1, 14 - int_digits)
            integer = "0" if rng.random() < 0.2 else str(rng.randrange(1, 10**int_digits))
            fraction = "".join(rng.choice("0000123456789") for _ in range(frac_digits))
            if integer == "0" and fraction.startswith("0000") and fraction.strip("0"):
                fraction = "1" + fraction[1:]
            sign = "-" if rng.random() < 0.5 else ""
            rec["address"]["geo"][key] = f"{sign}{integer}.{fraction}"
    check("users", body_of(recs), fast=True)


@pytest.mark.parametrize("value", [1.5, -37, None, True, [], {}])
def test_coordinates_that_are_not_text_are_breaches(value):
    for path in COORDINATES:
        old, _ = check("users", body_of(with_value("users", 3, 1, path, value)), fast=False)
        assert old is None


# --------------------------------------------------------------------------- text


NASTY_TEXT = [
    "",
    " ",
    "a,b",
    '"',
    '""',
    'say "hi"',
    "line\nbreak",
    "\n",
    "cr\ronly",
    "crlf\r\n",
    "tab\tin",
    "trailing ",
    " leading",
    ",",
    '",\n',
    "Zoë Ægir Łukasz",
    "日本語テキスト",
    "emoji 😀👍🏽",
    "\u2028sep\u2029",
    "rtl \u202e text",
    "nul\u0000byte",
    "\x85nel",
    "\x0bvt\x0cff",
    "back\\slash",
    "\\",
    "/",
    "</script>",
    "'single'",
    "a'",
    "{}[]",
    '[{"id": 1}]',
    "NaN",
    "Infinity",
    "-Infinity",
    "null",
    "true",
    "1e400",
    "\ufeffbom",
    "é" * 3,
    "x" * 1000,
]


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("resource", RESOURCES)
def test_quotes_commas_newlines_and_unicode_in_every_text_column(resource, keep):
    for path in TEXT[resource]:
        for index in (0, 2, -1):
            recs = records(resource, 5)
            for j, rec in enumerate(recs):
                set_path(rec, path, NASTY_TEXT[(j * 7 + index) % len(NASTY_TEXT)])
            check(resource, body_of(recs), keep, fast=True)
        recs = records(resource, len(NASTY_TEXT))
        for rec, value in zip(recs, NASTY_TEXT, strict=True):
            set_path(rec, path, value)
        check(resource, body_of(recs), keep, fast=True)


@pytest.mark.parametrize("resource", RESOURCES)
def test_escaped_json_text(resource):
    # \u escapes, escaped slashes and surrogate pairs, as other servers write them
    recs = records(resource, 20)
    for path in TEXT[resource]:
        set_path(recs[3], path, 'é/😀"\\\n')
    body = json.dumps(recs, ensure_ascii=True).replace("/", "\\/").encode()
    assert b"\\ud83d\\ude00" in body
    assert b"\\/" in body
    check(resource, body, fast=True)


@pytest.mark.parametrize("size", [1_000_000, 5_000_000])
def test_huge_fields_arrive_whole(size):
    for resource in ("users", "comments", "photos"):
        for path in TEXT[resource][:2]:
            recs = records(resource, 50)
            set_path(recs[0], path, "x" * size)
            set_path(recs[-1], path, ('=a,"b"\n' * (size // 7)))
            _, new = check(resource, body_of(recs), fast=True)
            assert len(next(iter(new.tables.values()))) > 2 * size - 100


# --------------------------------------------------------------------------- ids and order


@pytest.mark.parametrize("resource", RESOURCES)
def test_id_order_within_a_page(resource):
    base = records(resource, 30)
    shuffled = copy.deepcopy(base)
    random.Random(3).shuffle(shuffled)
    dup = copy.deepcopy(base)
    dup[5]["id"] = dup[4]["id"]
    dup[20]["id"] = dup[0]["id"]
    odd = copy.deepcopy(base)
    for rec, rid in zip(odd, [0, -5, 2**63 - 1, -(2**63), *range(100, 126)], strict=True):
        rec["id"] = rid
    for recs, ordered in ((base, True), (shuffled, False), (dup, False), (odd, False)):
        _, new = check(resource, body_of(recs), fast=True)
        assert new.ordered is ordered
        assert (new.first_id, new.last_id) == (recs[0]["id"], recs[-1]["id"])


def test_seed_table_sorts_equal_ids_stably():
    recs = records("users", 10)
    for i, rec in enumerate(recs):
        rec["id"] = 10 - i // 3
    check("users", body_of(recs), fast=True)


# --------------------------------------------------------------------------- extra fields

EXTRA_VALUES = [
    {"unexpected": True},
    [1, "a", None, {"b": [2]}],
    None,
    3,
    -2.5e-300,
    1e300,
    "text",
    True,
    {"deep": {"er": {"est": [[[["x"]]]]}}},
    "",
    [],
    {},
    18446744073709551616,
]


@pytest.mark.parametrize("resource", RESOURCES)
def test_extra_fields_are_dropped(resource):
    places = [(), *NESTED.get(resource, [])]
    for place in places:
        for value in EXTRA_VALUES:
            recs = records(resource, 6)
            for rec in recs:  # the same key with a different type in every record
                set_path(rec, (*place, "zz_extra"), value)
                set_path(rec, (*place, "nickname"), {"unexpected": True})
            check(resource, body_of(recs), fast=True)
    # keys that look like the contract's but are not
    recs = records(resource, 3)
    for rec in recs:
        rec["ID"] = "x"
        rec["id "] = "x"
        rec["Id"] = None
    check(resource, body_of(recs), fast=True)


@pytest.mark.parametrize("resource", RESOURCES)
def test_many_extra_objects_per_record(resource):
    # over the cheap nesting bound: the page is validated by orjson, and still accepted
    recs = records(resource, 1000)
    for rec in recs:
        rec["nickname"] = {"unexpected": True}
        rec["tags"] = [[1], {"a": [2]}]
    check(resource, body_of(recs), fast=True)


# --------------------------------------------------------------------------- breaches

WRONG = {
    int: [
        "3",
        "",
        True,
        False,
        3.0,
        3.5,
        -0.0,
        1e3,
        None,
        [],
        [3],
        {},
        {"id": 3},
        18446744073709551616,
        2**64 - 1,
    ],
    str: [3, 0, -1.5, True, False, None, [], ["x"], {}, {"a": "b"}],
    bool: [1, 0, "true", "True", "", None, [], {}, 1.0],
}


@pytest.mark.parametrize("index", [0, 2, -1])
@pytest.mark.parametrize("resource", RESOURCES)
def test_every_wrong_type_in_every_field_is_rejected(resource, index):
    for path, kind in LEAVES[resource].items():
        for value in WRONG[kind]:
            recs = with_value(resource, 5, index, path, value)
            old, _ = check(resource, body_of(recs), fast=False)
            if not (kind is int and value == 2**64 - 1):
                assert old is None, (path, value)  # pydantic strict rejects it too


@pytest.mark.parametrize("index", [0, 2, -1])
@pytest.mark.parametrize("resource", RESOURCES)
def test_every_missing_field_is_rejected(resource, index):
    for path in [*LEAVES[resource], *NESTED.get(resource, [])]:
        recs = records(resource, 5)
        del_path(recs[index], path)
        old, _ = check(resource, body_of(recs), fast=False)
        assert old is None, path


@pytest.mark.parametrize("resource", ["users"])
def test_nested_objects_of_the_wrong_kind_are_rejected(resource):
    for path in NESTED[resource]:
        for value in (None, "x", [], [{}], 3, True, {}):
            recs = with_value(resource, 4, 1, path, value)
            old, _ = check(resource, body_of(recs), fast=False)
            assert old is None, (path, value)


@pytest.mark.parametrize("resource", RESOURCES)
def test_records_that_are_not_objects_are_rejected(resource):
    for value in (None, 5, "x", [], [records(resource, 1)[0]], True, {}):
        for index in (0, 1, 3):
            recs = records(resource, 3)
            recs.insert(index, value)
            old, _ = check(resource, body_of(recs), fast=False)
            assert old is None


@pytest.mark.parametrize("resource", RESOURCES)
def test_bodies_that_are_not_a_list_are_rejected(resource):
    one = body_of(records(resource, 1)[0])
    for body in (
        b"{}",
        one,
        b"null",
        b"5",
        b'"x"',
        b"true",
        b"",
        b"   ",
        b"[]]",
        b"[[]]",
        b'{"r": []}',
        b"<html>502</html>",
    ):
        old, _ = check(resource, body, fast=False)
        assert old is None


# --------------------------------------------------------------------------- not JSON


def _variants(resource: str) -> dict[str, bytes]:
    good = body_of(records(resource, 3))
    rec = body_of(records(resource, 1)[0])
    inner = rec[:-1]  # the record without its closing brace
    last_text = TEXT[resource][-1][-1]
    return {
        "truncated": good[: len(good) // 2],
        "trailing garbage": good + b" x",
        "two lists": good + good,
        "list then key": good + b', "x": [1]',
        "list then object": good + b" {}",
        "closing our wrapper": good + b']} {"r":[' + good,
        "extra bracket": good + b"]",
        "extra brace": good + b"}",
        "trailing comma": good[:-1] + b",]",
        "trailing comma in object": b"[" + inner + b",}]",
        "comment": b"[" + inner + b"/* c */}]",
        "line comment": b"[" + inner + b"// c\n}]",
        "single quotes": b"[" + inner + b",'x':1}]",
        "unquoted key": b"[" + inner + b",x:1}]",
        "bom": b"\xef\xbb\xbf" + good,
        "nan": b"[" + inner + b',"x":NaN}]',
        "inf": b"[" + inner + b',"x":Inf}]',
        "infinity": b"[" + inner + b',"x":Infinity}]',
        "-infinity": b"[" + inner + b',"x":-Infinity}]',
        "-inf spaced": b"[" + inner + b',"x": [ -Inf ]}]',
        "nan nested": b"[" + inner + b',"x":{"y":[1,NaN]}}]',
        "1e400": b"[" + inner + b',"x":1e400}]',
        "leading zero": b"[" + inner + b',"x":01}]',
        "plus sign": b"[" + inner + b',"x":+1}]',
        "hex": b"[" + inner + b',"x":0x10}]',
        "bad utf8 in extra value": b"[" + inner + b',"x":"a\xffb"}]',
        "bad utf8 in extra key": b"[" + inner + b',"x\xff":1}]',
        "bad utf8 in a contract value": good.replace(
            b'"' + last_text.encode() + b'":"', b'"' + last_text.encode() + b'":"\xc3'
        ),
        "overlong utf8": b"[" + inner + b',"x":"\xc0\xaf"}]',
        "lone surrogate": b"[" + inner + b',"x":"\\ud800"}]',
        "lone low surrogate": b"[" + inner + b',"x":"\\udc00x"}]',
        "bad escape": b"[" + inner + b',"x":"\\q"}]',
        "raw control char": b"[" + inner + b',"x":"a\x01b"}]',
        "raw newline in string": b"[" + inner + b',"x":"a\nb"}]',
        "raw tab in string": b"[" + inner + b',"x":"a\tb"}]',
        "True literal": b"[" + inner + b',"x":True}]',
        "undefined": b"[" + inner + b',"x":undefined}]',
        "form feed whitespace": b"[\x0c" + rec + b"]",
        "nbsp whitespace": b"[\xc2\xa0" + rec + b"]",
        "deep list 1023": b"[" + inner + b',"x":' + b"[" * 1023 + b"]" * 1023 + b"}]",
        "deep object 1025": b"[" + inner + b',"x":' + b'{"a":' * 1025 + b"1" + b"}" * 1025 + b"}]",
        "deep list 100000": b"[" + inner + b',"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}]",
        "duplicate key, invalid last": b"[" + inner + b',"id":"3"}]',
        "duplicate key, escaped": b"[" + inner + b',"i\\u0064":"3"}]',
    }


@pytest.mark.parametrize("resource", RESOURCES)
def test_bodies_orjson_rejects_are_rejected(resource):
    for name, body in _variants(resource).items():
        old, _ = check(resource, body, fast=False)
        assert old is None, name


@pytest.mark.parametrize("resource", RESOURCES)
def test_odd_but_valid_json_never_differs(resource):
    rec = body_of(records(resource, 1)[0])
    inner = rec[:-1]
    bodies = {
        "duplicate key, valid last": b"[" + inner + b',"id":7}]',
        "deep list 1000": b"[" + inner + b',"x":' + b"[" * 1000 + b"]" * 1000 + b"}]",
        "tiny float": b"[" + inner + b',"x":1e-400}]',
        "big int": b"[" + inner + b',"x":100000000000000000000000000}]',
        "whitespace everywhere": b" \n\t[ \r\n" + rec.replace(b",", b" ,\n ") + b" ]\n",
        "braces in text": body_of([{**records(resource, 1)[0], "x": "{[" * 2000}]),
        "NaN in text": body_of([{**records(resource, 1)[0], "x": "NaN, Infinity: -Inf"}]),
    }
    for body in bodies.values():
        check(resource, body)


# --------------------------------------------------------------------------- fuzz, threads


ALPHABET = [*",\"\n\r\t =+-@'aé😀\\/{}[]:0. ", "\u2028", "\x00", "e5", "Na", "In"]


def _random_text(rng: random.Random, alphabet) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


@pytest.mark.parametrize("nan", [False, True])
@pytest.mark.parametrize("resource", RESOURCES)
def test_fuzzed_pages(resource, nan):
    # with nan: text may hold "NaN"/"Inf" after a delimiter, which may decline (harmless)
    alphabet = [*ALPHABET, "NaN", "Inf", "Infinity"] if nan else ALPHABET
    rng = random.Random(RESOURCES.index(resource) * 2 + nan)
    for _ in range(60):
        recs = records(resource, rng.randint(1, 40), start=rng.randint(1, 10**6))
        for rec in recs:
            for path in TEXT[resource]:
                if rng.random() < 0.5:
                    set_path(rec, path, _random_text(rng, alphabet))
            if rng.random() < 0.2:
                rec["extra"] = _random_text(rng, alphabet)
        if rng.random() < 0.3:
            rng.shuffle(recs)
        keep = rng.random() < 0.5
        check(resource, body_of(recs), keep, fast=None if nan else True)


def test_two_threads_give_the_same_bytes():
    bodies = {r: body_of(records(r, 1000, seed=3)) for r in RESOURCES}
    want = {r: page_tables(r, b).tables for r, b in bodies.items()}
    errors = []

    def work(order):
        for _ in range(3):
            for r in order:
                got = page_tables(r, bodies[r])
                if got is None or got.tables != want[r]:
                    errors.append(r)

    threads = [
        threading.Thread(target=work, args=(o,)) for o in (RESOURCES, tuple(reversed(RESOURCES)))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_unknown_resource_declines():
    assert page_tables("accounts", b"[]") is None
