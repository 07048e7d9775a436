"""A JSONPlaceholder-compatible HTTP server over generated data, with fault injection.

It answers like json-server 0.16 (which runs jsonplaceholder.typicode.com): lists,
single records, one level of nested routes, ``_page``/``_limit``/``_start``/``_end``
slicing with ``X-Total-Count`` and ``Link``, ``field=value`` filters (deep fields with
``.``), ``_gte``/``_lte``/``_ne``/``_like``, ``q``, ``_sort``/``_order``, ``_embed`` and
``_expand``. Records come from :mod:`placeholder_api.fakedata`, one at a time, so memory
stays flat whatever ``users`` is.

Cost of a list request:

* no filter, ``q`` or sort (``_sort=id`` aside): O(page), the id slice is computed;
* filters on ``id`` or on the parent key only (``/posts?userId=5``, nested routes, their
  ``_gte``/``_lte``): O(page), the id ranges are computed arithmetically;
* anything else (other fields, ``_ne``, ``_like``, ``q``, other sorts) scans a generator
  over the candidate ids: O(n) time; memory O(page) without a sort and O(matches) small
  ``(key, id)`` tuples with one.

Faults (``MODE[:ARG]``, see :data:`FAULT_MODES`) exercise a client's retries and
validation; they can be limited to one resource and/or one page number. It is stdlib
``http.server`` on purpose: resets and hangs need the raw socket.

Control routes, never counted nor faulted: ``GET /__control/stats``, ``GET /__control/log``
(every resource request with its arrival time, to observe a client's retries and backoff),
``POST /__control/reset``, ``GET|POST /__control/fault``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import os
import queue
import random
import re
import select
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from types import FrameType, TracebackType
from typing import IO, Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from placeholder_api.fakedata import children_range, make_record, make_records, parent_block
from placeholder_api.resources import RESOURCES

__all__ = ["FAULT_MODES", "ApiServer", "bundled_server", "make_server", "parse_fault", "serve"]

Record = dict[str, Any]
JSON_TYPE = "application/json; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"
CONTROL_PREFIX = "/__control/"
LOG_SIZE = 100_000  # resource requests kept in the request log

# --------------------------------------------------------------------------- faults

FAULT_MODES: dict[str, str] = {
    "none": "no fault",
    "5xx": "5xx[:N] (default 2): each distinct URL answers 503 to its first N requests",
    "5xx-rate": "5xx-rate:P (default 0.1): each request answers 503 with probability P",
    "429": "429[:S] (default 1): first request to each URL answers 429, Retry-After: S",
    "slow": "slow[:S] (default 1): sleep S seconds before answering",
    "hang": "hang: read the request, never answer (until shutdown)",
    "4xx": "4xx[:CODE] (default 404): answer with status CODE (400-499) and a JSON error",
    "malformed": "malformed: 200 with the JSON body cut in half",
    "html": "html: 200 text/html error page",
    "not-a-list": "not-a-list: list responses are a JSON object wrapping the records",
    "drift": "drift: every record loses a required field (email or title)",
    "drift-type": "drift-type: every record's id is a string",
    "reset": "reset: close the connection with a TCP RST, no answer",
    "empty": "empty: list responses are [] with X-Total-Count: 0",
    "bad-utf8": "bad-utf8: 200 JSON body with invalid UTF-8 bytes in a string",
    "no-total": "no-total: no X-Total-Count nor Link header (clients must stop on a short page)",
    "bad-total": "bad-total: X-Total-Count is not a number ('NaN')",
    "dup-ids": "dup-ids: every page but the first starts with the previous page's last record, "
    "its first text field ending in ' (repeated)'",
    "reverse": "reverse: every page's records in descending id order",
    "total-lie": "total-lie[:N] (default 5): X-Total-Count claims N more records than exist",
    "shrink": "shrink: pages after the first hold half their records (data shrinking mid-run)",
    "huge": "huge[:BYTES] (default 1000000): each record's first text field is BYTES long",
    "formula": "formula: text fields start with =, +, - or @ (CSV formula injection)",
    "extra-field": "extra-field: every record carries an unexpected extra field",
    "stale-304": "stale-304: every conditional request is answered 304 Not Modified, even when "
    "the page changed",
}
_DEFAULT_ARGS: dict[str, float] = {
    "4xx": 404,
    "5xx": 2,
    "5xx-rate": 0.1,
    "429": 1,
    "slow": 1.0,
    "total-lie": 5,
    "huge": 1_000_000,
}
_INT_ARGS = frozenset({"4xx", "5xx", "429", "total-lie", "huge"})
_DRIFT_FIELD = {"users": "email", "comments": "email"}  # others lose "title"
_BODY_FAULTS = frozenset(
    {
        "malformed",
        "drift",
        "drift-type",
        "empty",
        "bad-utf8",
        "no-total",
        "bad-total",
        "not-a-list",
        "dup-ids",
        "reverse",
        "total-lie",
        "shrink",
        "huge",
        "formula",
        "extra-field",
    }
)
_EARLY_FAULTS = frozenset({"4xx", "5xx", "5xx-rate", "429", "hang", "reset", "html"})


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to break, and where.

    Attributes:
        mode: a key of :data:`FAULT_MODES`.
        arg: the mode's number (count, probability or seconds); 0 when it takes none.
        resource: only requests for this resource (nested routes count as the child).
        page: only requests for this page (``_page``, or ``_start // _limit + 1``).
    """

    mode: str = "none"
    arg: float = 0
    resource: str | None = None
    page: int | None = None

    def applies(self, resource: str | None, page: int | None) -> bool:
        """Whether a request for ``resource`` (page ``page``) falls under this plan."""
        if self.mode == "none":
            return False
        if self.resource is not None and resource != self.resource:
            return False
        return self.page is None or page == self.page

    def describe(self) -> dict[str, Any]:
        """The plan as JSON-able data (``mode`` written back as ``MODE[:ARG]``)."""
        mode = self.mode
        if mode in _DEFAULT_ARGS:
            arg = int(self.arg) if mode in _INT_ARGS else self.arg
            mode = f"{mode}:{arg}"
        return {"mode": mode, "resource": self.resource, "page": self.page}


_ARG_NAMES = {"4xx": "CODE", "5xx": "N", "5xx-rate": "P", "429": "S", "slow": "S"}
_SYNTAX = ", ".join(f"{m}[:{_ARG_NAMES[m]}]" if m in _ARG_NAMES else m for m in FAULT_MODES)


def _fault_error(fault: str, why: str) -> ValueError:
    """A ValueError naming the bad fault and listing every mode."""
    return ValueError(f"invalid fault {fault!r}: {why}; expected MODE[:ARG], one of {_SYNTAX}")


def _parse_arg(fault: str, mode: str, raw: str | None) -> float:
    """The numeric argument of ``mode`` (its default when ``raw`` is None)."""
    if raw is None:
        return _DEFAULT_ARGS.get(mode, 0)
    if mode not in _DEFAULT_ARGS:
        raise _fault_error(fault, f"{mode} takes no argument")
    try:
        value = int(raw) if mode in _INT_ARGS else float(raw)
    except ValueError:
        kind = "a whole number" if mode in _INT_ARGS else "a number"
        raise _fault_error(fault, f"{mode} needs {kind}, got {raw!r}") from None
    if not value >= 0 or math.isinf(value) or (mode == "5xx-rate" and value > 1):
        raise _fault_error(fault, f"{mode} argument {raw!r} is out of range")
    if mode == "4xx" and not 400 <= value <= 499:
        raise _fault_error(fault, f"4xx argument {raw!r} is not a 4xx status")
    return value


def parse_fault(
    fault: str | None, resource: str | None = None, page: int | None = None
) -> FaultPlan:
    """Parse ``MODE[:ARG]`` (e.g. ``"5xx:3"``, ``"slow:0.5"``) into a :class:`FaultPlan`.

    Raises:
        ValueError: unknown mode, bad argument, unknown resource or page < 1; the
            message lists every mode.
    """
    text = (fault or "none").strip().lower()
    mode, _, raw = text.partition(":")
    if mode not in FAULT_MODES:
        raise _fault_error(text, f"unknown mode {mode!r}")
    arg = _parse_arg(text, mode, raw if _ else None)
    if resource is not None and resource not in RESOURCES:
        raise ValueError(f"invalid fault resource {resource!r}: choose from {', '.join(RESOURCES)}")
    if page is not None and page < 1:
        raise ValueError(f"invalid fault page {page}: pages start at 1")
    return FaultPlan(mode, arg, resource, page)


# --------------------------------------------------------------------------- JS semantics

_JS_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
_JS_INT_PREFIX = re.compile(r"\s*([+-]?\d+)")


def _js_str(value: Any) -> str:
    """``String(value)`` as JavaScript writes it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, list):
        return ",".join("" if item is None else _js_str(item) for item in value)
    if value is None:
        return "null"
    return "[object Object]"


def _js_number(text: str) -> float:
    """``Number(text)``: NaN when not numeric, 0 for blank."""
    text = text.strip()
    if not text:
        return 0.0
    if _JS_NUMBER.fullmatch(text):
        return float(text)
    if text.lstrip("+-") == "Infinity":
        return -math.inf if text.startswith("-") else math.inf
    with contextlib.suppress(ValueError):
        if text[:2].lower() in ("0x", "0o", "0b"):
            return float(int(text, 0))
    return math.nan


def _js_parse_int(text: str | None) -> int | None:
    """``parseInt(text, 10)``; ``None`` stands for NaN."""
    match = _JS_INT_PREFIX.match(text or "")
    return int(match.group(1)) if match else None


def _canonical_int(text: str) -> int | None:
    """The int whose ``String()`` is exactly ``text`` (``"7"`` yes, ``"07"`` no)."""
    try:
        value = int(text)
    except ValueError:
        return None
    return value if str(value) == text else None


def _get_path(record: Any, parts: list[str]) -> Any:
    """``_.get(record, "a.b")``; ``None`` when absent."""
    for part in parts:
        if not isinstance(record, dict):
            return None
        record = record.get(part)
    return record


def _deep_query(value: Any, needle: str) -> bool:
    """json-server's ``deepQuery``: any truthy leaf whose lower-cased text has ``needle``."""
    if isinstance(value, dict):
        return any(_deep_query(item, needle) for item in value.values())
    if isinstance(value, list):
        return any(_deep_query(item, needle) for item in value)
    return bool(value) and needle in _js_str(value).lower()


# --------------------------------------------------------------------------- queries

_RESERVED = ("q", "_start", "_end", "_page", "_sort", "_order", "_limit", "_embed", "_expand")
_OPERATORS = ("_gte", "_lte", "_ne", "_like")


@dataclass(slots=True)
class Query:
    """A request's query string, split the way json-server reads it.

    Attributes:
        filters: field filters (``userId``, ``title_like``...) with all their values.
        options: the first value of each reserved parameter (``_page``, ``q``...).
        embed: ``_embed`` values, in order.
        expand: ``_expand`` values, in order.
    """

    filters: dict[str, list[str]] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    embed: list[str] = field(default_factory=list)
    expand: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, query: str) -> Query:
        """Parse a raw query string (``+`` and ``%xx`` decoded, blanks kept)."""
        parsed = cls()
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "_embed":
                parsed.embed.append(value)
            elif key == "_expand":
                parsed.expand.append(value)
            elif key in _RESERVED:
                parsed.options.setdefault(key, value)
            else:
                parsed.filters.setdefault(key, []).append(value)
        return parsed

    def page_number(self) -> int | None:
        """The page asked for: ``_page``, else ``_start // _limit + 1`` (or ``_end``)."""
        opts = self.options
        if opts.get("_page"):
            page = _js_parse_int(opts["_page"])
            return page if page is not None and page >= 1 else 1
        start = _js_parse_int(opts.get("_start")) or 0
        size = _js_parse_int(opts.get("_limit")) if opts.get("_limit") else None
        if size is None and opts.get("_end"):
            end = _js_parse_int(opts["_end"])
            size = None if end is None else end - start
        if size is None or size <= 0 or start < 0:
            return None
        return start // size + 1


@dataclass(frozen=True, slots=True)
class Window:
    """The slice asked for, as ``Array.prototype.slice(start, end)`` arguments."""

    start: int
    end: int | None  # None: to the end

    def bounds(self, total: int) -> tuple[int, int]:
        """Concrete ``[lo, hi)`` indexes for a list of ``total`` items."""
        lo, hi, _ = slice(self.start, self.end).indices(total)
        return lo, max(lo, hi)

    @property
    def streamable(self) -> bool:
        """Whether the slice can be cut without knowing the total first."""
        return self.start >= 0 and (self.end is None or self.end >= 0)


def _window(opts: dict[str, str]) -> tuple[Window, int | None, int | None]:
    """The slice of a list request, plus ``(page, limit)`` when ``_page`` is used."""
    start = _js_parse_int(opts.get("_start")) or 0
    if opts.get("_page"):
        page = _js_parse_int(opts["_page"])
        page = page if page is not None and page >= 1 else 1
        limit = _js_parse_int(opts.get("_limit")) or 10
        return Window((page - 1) * limit, page * limit), page, limit
    if opts.get("_end"):
        end = _js_parse_int(opts["_end"])
        return Window(start, 0 if end is None else end), None, None
    if opts.get("_limit"):
        limit = _js_parse_int(opts["_limit"])
        return Window(start, 0 if limit is None else start + limit), None, None
    return Window(0, None), None, None


def _intersect(left: list[range], right: list[range]) -> list[range]:
    """Intersection of two sorted lists of disjoint ascending ranges."""
    out: list[range] = []
    i = j = 0
    while i < len(left) and j < len(right):
        lo = max(left[i].start, right[j].start)
        hi = min(left[i].stop, right[j].stop)
        if lo < hi:
            out.append(range(lo, hi))
        if left[i].stop < right[j].stop:
            i += 1
        else:
            j += 1
    return out


def _union(ranges: list[range]) -> list[range]:
    """Sort and merge ascending ranges."""
    out: list[range] = []
    for r in sorted((r for r in ranges if r), key=lambda r: r.start):
        if out and r.start <= out[-1].stop:
            out[-1] = range(out[-1].start, max(out[-1].stop, r.stop))
        else:
            out.append(r)
    return out


def _slice_ranges(ranges: list[range], lo: int, hi: int) -> list[range]:
    """Items ``lo:hi`` of the concatenation of ``ranges`` (ascending or descending)."""
    out: list[range] = []
    offset = 0
    for r in ranges:
        size = len(r)
        a, b = max(lo - offset, 0), min(hi - offset, size)
        if a < b:
            out.append(r[a:b])
        offset += size
        if offset >= hi:
            break
    return out


def _id_ranges(op: str, values: list[str], block: int) -> list[range] | None:
    """Ids matching an ``id`` (block 1) or parent-key filter, or None if not arithmetic."""
    if op == "":
        wanted = (_canonical_int(v) for v in values)
        return _union([range((p - 1) * block + 1, p * block + 1) for p in wanted if p])
    if op not in ("_gte", "_lte") or len(values) != 1:
        return None
    bound = _js_number(values[0])
    if math.isnan(bound) or (op == "_gte" and bound == math.inf):
        return []
    if op == "_lte" and bound == -math.inf:
        return []
    if op == "_gte":
        first = 1 if bound == -math.inf else (max(math.ceil(bound), 1) - 1) * block + 1
        return [range(first, sys.maxsize)]
    last = sys.maxsize if bound == math.inf else max(math.floor(bound), 0) * block
    return [range(1, last + 1)]


Check = Callable[[Record], bool]


def _compare(op: str, value: str) -> Callable[[Any], bool]:
    """One filter value's test against a field value, with JavaScript's coercions."""
    if op == "":
        return lambda v: _js_str(v) == value
    if op == "_ne":
        return lambda v: _js_str(v) != value
    if op == "_like":
        pattern = re.compile(value, re.IGNORECASE)
        return lambda v: pattern.search(_js_str(v)) is not None
    number = _js_number(value)

    def ranged(v: Any) -> bool:
        if isinstance(v, str | dict | list):
            other = _js_str(v)
            return value <= other if op == "_gte" else value >= other
        return number <= v if op == "_gte" else number >= v

    return ranged


def _make_check(key: str, values: list[str]) -> Check:
    """A record test for one filter key: OR over its values (json-server semantics)."""
    op = next((o for o in _OPERATORS if key.endswith(o)), "")
    parts = key[: len(key) - len(op)].split(".")
    tests = [_compare(op, value) for value in values]

    def check(record: Record) -> bool:
        found = _get_path(record, parts)
        return found is not None and any(test(found) for test in tests)

    return check


class BadQuery(ValueError):
    """A query json-server would choke on (an invalid ``_like`` regex)."""


@dataclass(slots=True)
class Plan:
    """How to answer one list request.

    Attributes:
        domain: candidate ids, as ascending (or, for ``id`` desc, descending) ranges.
        checks: record tests still to run (empty: the domain is the answer).
        needle: lower-cased ``q``, if any.
        sort: ``(path parts, descending)`` keys, most significant first.
    """

    domain: list[range]
    checks: list[Check]
    needle: str | None
    sort: list[tuple[list[str], bool]]

    @property
    def arithmetic(self) -> bool:
        """Whether the answer needs no scan."""
        return not self.checks and self.needle is None and not self.sort


class Dataset:
    """The generated data: sizes, records and query answers for ``users`` users."""

    def __init__(self, users: int, seed: int) -> None:
        """Describe a dataset of ``users`` users generated with ``seed``."""
        self.users = users
        self.seed = seed
        self._samples = {name: make_record(name, 1, seed) for name in RESOURCES}

    def count(self, resource: str) -> int:
        """Number of records of ``resource``."""
        return RESOURCES[resource].count(self.users)

    def get(self, resource: str, record_id: int) -> Record | None:
        """One record, or None outside ``1..count``."""
        if 1 <= record_id <= self.count(resource):
            return make_record(resource, record_id, self.seed)
        return None

    def fetch(self, resource: str, ids: list[range]) -> list[Record]:
        """The records of the given id ranges, in that order."""
        out: list[Record] = []
        for r in ids:
            if r.step == 1:
                out.extend(make_records(resource, r.start, r.stop, self.seed))
            else:
                out.extend(reversed(make_records(resource, r[-1], r[0] + 1, self.seed)))
        return out

    def iter_records(self, resource: str, ids: list[range]) -> Iterator[Record]:
        """Generate the records of ``ids`` lazily, a thousand at a time."""
        for r in ids:
            for start in range(r.start, r.stop, 1000):
                yield from make_records(resource, start, min(start + 1000, r.stop), self.seed)

    def known_filter(self, resource: str, key: str) -> bool:
        """json-server drops filters on fields no record has (and all, when empty)."""
        if self.count(resource) == 0:
            return False
        if key in ("callback", "_") or key.endswith(_OPERATORS):
            return True
        return _get_path(self._samples[resource], key.split(".")) is not None

    def plan(self, resource: str, query: Query) -> Plan:
        """Turn filters into id ranges where arithmetic allows, record checks elsewhere."""
        domain = [range(1, self.count(resource) + 1)]
        checks: list[Check] = []
        parent_key = RESOURCES[resource].parent_key
        for key, values in query.filters.items():
            if key in ("callback", "_") or not self.known_filter(resource, key):
                continue
            op = next((o for o in _OPERATORS if key.endswith(o)), "")
            name = key[: len(key) - len(op)]
            block = 1 if name == "id" else parent_block(resource) if name == parent_key else 0
            ranges = _id_ranges(op, values, block) if block else None
            if ranges is None:
                try:
                    checks.append(_make_check(key, values))
                except re.error as exc:
                    raise BadQuery(f"invalid {key} pattern {values!r}: {exc}") from None
            else:
                domain = _intersect(domain, ranges)
        return Plan(domain, checks, self._needle(query), self._sort_keys(query))

    @staticmethod
    def _needle(query: Query) -> str | None:
        """The lower-cased ``q``, or None when absent or blank."""
        q = query.options.get("q")
        return q.lower() if q else None

    @staticmethod
    def _sort_keys(query: Query) -> list[tuple[list[str], bool]]:
        """``_sort``/``_order`` as ``(path parts, descending)`` pairs."""
        sort = query.options.get("_sort")
        if not sort:
            return []
        orders = query.options.get("_order", "").split(",")
        keys = []
        for index, name in enumerate(sort.split(",")):
            order = orders[index].lower() if index < len(orders) else ""
            keys.append((name.split("."), order == "desc"))
        return keys

    def select(self, resource: str, query: Query, window: Window) -> tuple[list[Record], int]:
        """The records of one list request and the total before slicing."""
        plan = self.plan(resource, query)
        if plan.sort and not plan.checks and plan.needle is None:
            self._sort_arithmetically(resource, plan)
        if plan.arithmetic:
            total = sum(len(r) for r in plan.domain)
            lo, hi = window.bounds(total)
            return self.fetch(resource, _slice_ranges(plan.domain, lo, hi)), total
        if plan.sort:
            return self._select_sorted(resource, plan, window)
        return self._select_scan(resource, plan, window)

    @staticmethod
    def _sort_arithmetically(resource: str, plan: Plan) -> None:
        """Drop sorts that ids order already: by ``id``, or by the parent key ascending."""
        (parts, descending), *rest = plan.sort
        if parts == ["id"]:
            if descending:
                plan.domain = [r[::-1] for r in reversed(plan.domain)]
            plan.sort = []
        elif parts == [RESOURCES[resource].parent_key] and not descending and not rest:
            plan.sort = []  # a stable sort by a non-decreasing function of the id

    def _matches(self, resource: str, plan: Plan) -> Iterator[Record]:
        """Records of the domain passing every check and ``q`` (O(domain) generator)."""
        needle = plan.needle
        for record in self.iter_records(resource, plan.domain):
            if all(check(record) for check in plan.checks) and (
                needle is None or _deep_query(record, needle)
            ):
                yield record

    def _select_scan(self, resource: str, plan: Plan, window: Window) -> tuple[list[Record], int]:
        """Unsorted scan: count all matches, keep only the window's records."""
        if not window.streamable:
            total = sum(1 for _ in self._matches(resource, plan))
            lo, hi = window.bounds(total)
            return list(islice(self._matches(resource, plan), lo, hi)), total
        lo, hi = window.start, window.end
        kept: list[Record] = []
        total = 0
        for record in self._matches(resource, plan):
            if lo <= total and (hi is None or total < hi):
                kept.append(record)
            total += 1
        return kept, total

    def _select_sorted(self, resource: str, plan: Plan, window: Window) -> tuple[list[Record], int]:
        """Sorted scan: sort ``(keys, id)`` of all matches, then regenerate the window."""
        rows = [
            ([_sort_key(_get_path(rec, parts)) for parts, _ in plan.sort], rec["id"])
            for rec in self._matches(resource, plan)
        ]
        for index in range(len(plan.sort) - 1, -1, -1):
            rows.sort(key=lambda row, i=index: row[0][i], reverse=plan.sort[index][1])
        lo, hi = window.bounds(len(rows))
        ids = [range(row[1], row[1] + 1) for row in rows[lo:hi]]
        return self.fetch(resource, ids), len(rows)

    def decorate(self, resource: str, record: Record, query: Query) -> Record:
        """Apply ``_embed`` (children lists) and ``_expand`` (parent objects) in place."""
        for child in query.embed:
            spec = RESOURCES.get(child)
            if spec is not None and spec.parent == resource:
                record[child] = self.fetch(child, [children_range(child, record["id"])])
            else:
                record[child] = []
        for name in query.expand:
            plural = name if name in RESOURCES else f"{name}s"
            key = f"{name}Id"
            if plural in RESOURCES and isinstance(record.get(key), int):
                parent = self.get(plural, record[key])
                if parent is not None:
                    record[name] = parent
        return record


def _sort_key(value: Any) -> tuple[int, Any]:
    """A total order close to lodash's: numbers, then strings, then objects, then missing."""
    if value is None:
        return (3, 0)
    if isinstance(value, bool | int | float):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, _js_str(value))


# --------------------------------------------------------------------------- routing


@dataclass(slots=True)
class Response:
    """What to send: status, JSON-able payload and extra headers."""

    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a path leads: ``kind`` is ``list``, ``one`` or ``missing``."""

    kind: str
    resource: str | None = None
    record_id: str | None = None
    parent: str | None = None


def route(path: str) -> Route:
    """Match ``/res``, ``/res/id`` and ``/parent/id/res`` (one trailing slash allowed)."""
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    if len(parts) == 1 and parts[0] in RESOURCES:
        return Route("list", parts[0])
    if len(parts) == 2 and parts[0] in RESOURCES:
        return Route("one", parts[0], parts[1])
    if len(parts) == 3 and parts[2] in RESOURCES and RESOURCES[parts[2]].parent == parts[0]:
        return Route("list", parts[2], parts[1], parts[0])
    return Route("missing")


def _links(base_url: str, window_page: int, limit: int, total: int) -> str:
    """json-server's ``Link`` header for ``_page`` (empty when the page is empty)."""
    lo, hi = Window((window_page - 1) * limit, window_page * limit).bounds(total)
    if hi <= lo:
        return ""
    pages: dict[str, int] = {}
    whole = hi - lo == total
    if not whole:
        pages["first"] = 1
    if window_page > 1:
        pages["prev"] = window_page - 1
    if window_page * limit < total:
        pages["next"] = window_page + 1
    if not whole:
        pages["last"] = math.ceil(total / limit)
    current = f"page={window_page}"
    links = []
    for rel in ("first", "prev", "next", "last"):
        if rel in pages:
            url = base_url if whole else base_url.replace(current, f"page={pages[rel]}", 1)
            links.append(f'<{url}>; rel="{rel}"')
    return ", ".join(links)


def answer(data: Dataset, target: Route, query: Query, full_url: str) -> Response:
    """The normal (fault-free) response to a GET on a resource path."""
    if target.kind == "missing" or target.resource is None:
        return Response(404, {})
    resource = target.resource
    if target.kind == "one":
        record_id = _canonical_int(target.record_id or "")
        record = data.get(resource, record_id) if record_id is not None else None
        if record is None:
            return Response(404, {})
        return Response(200, data.decorate(resource, record, query))
    if target.parent is not None:
        query.filters[RESOURCES[resource].parent_key or ""] = [target.record_id or ""]
    return _answer_list(data, resource, query, full_url)


def _answer_list(data: Dataset, resource: str, query: Query, full_url: str) -> Response:
    """A list response with json-server's paging headers."""
    window, page, limit = _window(query.options)
    try:
        records, total = data.select(resource, query, window)
    except BadQuery as exc:
        return Response(400, {"error": str(exc)})
    headers: dict[str, str] = {}
    opts = query.options
    if opts.get("_end") or opts.get("_limit") or opts.get("_page"):
        headers["X-Total-Count"] = str(total)
        headers["Access-Control-Expose-Headers"] = (
            "X-Total-Count, Link" if page is not None else "X-Total-Count"
        )
    if page is not None and limit is not None:
        headers["Link"] = _links(full_url, page, limit, total)
    return Response(200, [data.decorate(resource, rec, query) for rec in records], headers)


# --------------------------------------------------------------------------- fault effects


def _drift(resource: str | None, payload: Any, retype: bool) -> Any:
    """Drop a required field (or stringify ``id``) in every top-level record."""
    if resource is None:
        return payload
    records = payload if isinstance(payload, list) else [payload]
    lost = _DRIFT_FIELD.get(resource, "title")
    for record in records:
        if not isinstance(record, dict) or "id" not in record:
            continue
        if retype:
            record["id"] = str(record["id"])
        else:
            record.pop(lost, None)
    return payload


_FORMULAS = ('=HYPERLINK("http://evil.example")', "+1+1", "-2+3", "@SUM(A1:A2)")


def _make_hostile(record: Record, plan: FaultPlan) -> None:
    """Alter one record in place for the ``huge``, ``formula`` and ``extra-field`` faults."""
    if plan.mode == "extra-field":
        record["nickname"] = {"unexpected": True}
        return
    text_keys = [k for k, v in record.items() if isinstance(v, str)]
    if not text_keys:
        return
    if plan.mode == "huge":
        record[text_keys[0]] = "x" * int(plan.arg)
    else:
        formula = _FORMULAS[record.get("id", 0) % len(_FORMULAS)]
        record[text_keys[0]] = formula + record[text_keys[0]]


def _bad_utf8(body: bytes) -> bytes:
    """Put invalid UTF-8 bytes inside the first string value of a JSON body."""
    at = body.find(b'":"')
    if at < 0:
        return b'["\xff\xfe"]'
    return body[: at + 3] + b"\xff\xfe" + body[at + 3 :]


_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>Bad Gateway</h1><p>The upstream server is unavailable "
    b"(placeholder-etl injected fault).</p></body></html>\n"
)


# --------------------------------------------------------------------------- server


@dataclass(slots=True)
class _Stats:
    """Request counters, guarded by the server's lock."""

    requests: int = 0
    by_resource: dict[str, int] = field(default_factory=dict)
    pages: dict[str, dict[str, int]] = field(default_factory=dict)
    faults_injected: int = 0
    not_modified: int = 0

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return {
            "requests": self.requests,
            "by_resource": dict(self.by_resource),
            "pages": {name: dict(pages) for name, pages in self.pages.items()},
            "faults_injected": self.faults_injected,
            "not_modified": self.not_modified,
        }


def weak_etag(body: bytes) -> str:
    """Express's ETag (json-server's): ``W/"<length, hex>-<sha1, base64, 27 chars>"``."""
    digest = base64.b64encode(hashlib.sha1(body).digest()).decode()[:27]
    return f'W/"{len(body):x}-{digest}"'


class _Handler(BaseHTTPRequestHandler):
    """One connection: keep-alive HTTP/1.1, every body with a Content-Length."""

    protocol_version = "HTTP/1.1"
    server_version = "placeholder-etl"
    disable_nagle_algorithm = True
    server: ApiServer

    def setup(self) -> None:
        """Register the connection so shutdown can close it."""
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        """Unregister the connection."""
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the server's stdout carries only the ``serving ...`` line."""

    def _read_body(self) -> bytes:
        """Read the request body (so keep-alive stays in sync)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str = JSON_TYPE,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Send a complete response (always with a Content-Length, for keep-alive)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Send ``payload`` serialized by orjson."""
        self.send_body(status, orjson.dumps(payload), JSON_TYPE, headers)

    def do_GET(self) -> None:
        """Control or resource GET."""
        self._read_body()
        split = urlsplit(self.path)
        if split.path.startswith(CONTROL_PREFIX):
            self._control(split.path, None)
        else:
            self._resource(split.path, split.query)

    def do_POST(self) -> None:
        """Control POST; the data itself is read-only."""
        body = self._read_body()
        path = urlsplit(self.path).path
        if path.startswith(CONTROL_PREFIX):
            self._control(path, body)
        else:
            self.send_json(405, {"error": "read-only API: only GET is served"}, {"Allow": "GET"})

    def _control(self, path: str, body: bytes | None) -> None:
        """``/__control/stats``, ``/__control/log``, ``/__control/reset`` and ``/__control/fault``."""
        name = path[len(CONTROL_PREFIX) :].strip("/")
        if name == "stats" and body is None:
            self.send_json(200, self.server.stats())
        elif name == "log" and body is None:
            self.send_json(200, self.server.log())
        elif name == "reset" and body is not None:
            self.server.reset_stats()
            self.send_json(200, self.server.stats())
        elif name == "fault" and body is None:
            self.send_json(200, self.server.fault_plan.describe())
        elif name == "fault" and body is not None:
            self._set_fault(body)
        else:
            self.send_json(404, {})

    def _set_fault(self, body: bytes) -> None:
        """Replace the fault plan from ``{"mode": ..., "resource": ..., "page": ...}``."""
        try:
            spec = orjson.loads(body or b"{}")
            if not isinstance(spec, dict):
                raise TypeError("the body must be a JSON object")
            page = spec.get("page")
            if page is not None and (isinstance(page, bool) or not isinstance(page, int)):
                raise ValueError(f"page must be an integer or null, got {page!r}")
            self.server.set_fault(spec.get("mode", "none"), spec.get("resource"), page)
        except (ValueError, TypeError) as exc:
            self.send_json(400, {"error": str(exc)})
            return
        self.send_json(200, self.server.fault_plan.describe())

    def _resource(self, path: str, raw_query: str) -> None:
        """Count, delay, maybe fault, then answer a resource request."""
        srv = self.server
        target = route(path)
        query = Query.parse(raw_query)
        page = query.page_number()
        srv.count_request(target.resource, page, self.path)
        if srv.latency > 0:
            srv.stopping.wait(srv.latency)
        plan = srv.fault_plan
        faulted = plan.applies(target.resource, page)
        if faulted and self._early_fault(plan):
            return
        host = self.headers.get("Host") or srv.url.removeprefix("http://")
        response = answer(srv.data, target, query, f"http://{host}{self.path}")
        if faulted and plan.mode in _BODY_FAULTS:
            self._faulty_answer(plan, target.resource, response)
        else:
            stale = faulted and plan.mode == "stale-304"
            self._send_data(
                response.status, orjson.dumps(response.payload), response.headers, stale
            )

    def _send_data(
        self, status: int, body: bytes, headers: dict[str, str], stale: bool = False
    ) -> None:
        """Send a data response with a weak ``ETag`` over its bytes, as json-server (Express)
        does; a matching ``If-None-Match`` (any, with ``stale``) gets ``304`` and no body."""
        if status != 200:
            self.send_body(status, body, JSON_TYPE, headers)
            return
        tag = weak_etag(body)
        asked = self.headers.get("If-None-Match")
        if asked is not None and (stale or tag in (t.strip() for t in asked.split(","))):
            self.server.note_not_modified(stale)
            self.send_response(304)
            self.send_header("ETag", tag)
            self.end_headers()
            return
        self.send_body(status, body, JSON_TYPE, {**headers, "ETag": tag})

    def _early_fault(self, plan: FaultPlan) -> bool:
        """Faults that answer instead of the data (or delay it); True when one answered."""
        if plan.mode == "slow":
            self.server.note_fault()
            self.server.stopping.wait(plan.arg)
            return False
        if plan.mode not in _EARLY_FAULTS or not self._fires(plan):
            return False
        if plan.mode in ("5xx", "5xx-rate"):
            self.send_json(503, {"error": "Service Unavailable (placeholder-etl injected fault)"})
        elif plan.mode == "4xx":
            self.send_json(int(plan.arg), {"error": "placeholder-etl injected fault"})
        elif plan.mode == "429":
            body = {"error": "Too Many Requests (placeholder-etl injected fault)"}
            self.send_json(429, body, {"Retry-After": str(int(plan.arg))})
        elif plan.mode == "hang":
            self._hang()
        elif plan.mode == "reset":
            self._reset()
        else:
            self.send_body(200, _HTML_PAGE, HTML_TYPE)
        return True

    def _fires(self, plan: FaultPlan) -> bool:
        """Whether an early fault hits this request (and count it if so)."""
        srv = self.server
        if plan.mode == "5xx":
            return srv.take_url_fault(self.path, int(plan.arg))
        if plan.mode == "429":
            return srv.take_url_fault(self.path, 1)
        if plan.mode == "5xx-rate":
            return srv.roll(plan.arg)
        srv.note_fault()
        return True

    def _faulty_answer(self, plan: FaultPlan, resource: str | None, response: Response) -> None:
        """Faults that alter the data response."""
        self.server.note_fault()
        payload, headers = response.payload, response.headers
        if plan.mode in ("drift", "drift-type"):
            payload = _drift(resource, payload, plan.mode == "drift-type")
        elif plan.mode == "empty" and isinstance(payload, list):
            payload = []
            headers["X-Total-Count"] = "0"
            if "Link" in headers:
                headers["Link"] = ""
        elif plan.mode == "no-total":
            for name in ("X-Total-Count", "Link", "Access-Control-Expose-Headers"):
                headers.pop(name, None)
        elif plan.mode == "total-lie" and "X-Total-Count" in headers:
            headers["X-Total-Count"] = str(int(headers["X-Total-Count"]) + int(plan.arg))
        elif plan.mode == "bad-total" and "X-Total-Count" in headers:
            headers["X-Total-Count"] = "NaN"
        elif plan.mode == "not-a-list" and isinstance(payload, list):
            payload = {"data": payload, "total": headers.get("X-Total-Count")}
        elif isinstance(payload, list) and payload and resource is not None:
            payload = self._hostile(plan, resource, payload)
        body = orjson.dumps(payload)
        if plan.mode == "malformed":
            body = body[: len(body) // 2]
        elif plan.mode == "bad-utf8":
            body = _bad_utf8(body)
        self._send_data(response.status, body, headers)

    def _hostile(self, plan: FaultPlan, resource: str, records: list[Record]) -> list[Record]:
        """Odd but well-formed data: duplicates, unordered or shrinking pages, huge or
        formula-like text."""
        first_id = records[0].get("id")
        if plan.mode == "dup-ids":
            if isinstance(first_id, int) and first_id > 1 and len(records) > 1:
                repeated = self.server.data.get(resource, first_id - 1) or {}
                text_key = next(k for k, v in repeated.items() if isinstance(v, str))
                repeated[text_key] += " (repeated)"  # first and last occurrence differ
                return [repeated, *records]
        elif plan.mode == "reverse":
            return records[::-1]
        elif plan.mode == "shrink":
            if first_id != 1:
                return records[: len(records) // 2]
        elif plan.mode in ("huge", "formula", "extra-field"):
            for record in records:
                _make_hostile(record, plan)
        return records

    def _hang(self) -> None:
        """Never answer: wait for shutdown (or the client hanging up), then drop."""
        while not self.server.stopping.wait(0.2):
            if _peer_closed(self.connection):
                break
        self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection: SO_LINGER 0 then close sends a TCP RST."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            linger = struct.pack("ii", 1, 0)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            self.connection.close()


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the client closed its side (readable with no data)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class ApiServer(ThreadingHTTPServer):
    """The bundled API server; see :func:`make_server`.

    As a context manager it serves from a background thread and shuts down on exit.
    """

    daemon_threads = True
    request_queue_size = 1024
    block_on_close = False

    def __init__(
        self,
        host: str,
        port: int,
        data: Dataset,
        latency: float,
        fault_plan: FaultPlan,
    ) -> None:
        """Bind ``host:port`` (0 picks a free port) and get ready to serve ``data``."""
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.data = data
        self.latency = latency
        self.fault_plan = fault_plan
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._stats = _Stats()
        self._log: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)
        self._url_hits: dict[str, int] = {}
        self._random = random.Random(data.seed)
        self._connections: set[socket.socket] = set()
        self._serving = False
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)
        bound_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        bound_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{bound_host}:{self.server_address[1]}"

    # -- lifecycle

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def serve_forever(self, poll_interval: float = 0.1) -> None:
        """Serve until :meth:`shutdown` (returns at once if already shut down)."""
        with self._lock:
            if self.stopping.is_set():
                return
            self._serving = True
        try:
            super().serve_forever(poll_interval)
        finally:
            with self._lock:
                self._serving = False

    def shutdown(self) -> None:
        """Stop serving, release hung requests, close connections and the socket.

        Returns promptly, even while ``hang`` holds requests; safe to call twice.
        """
        with self._lock:
            self.stopping.set()
            serving = self._serving
            connections = list(self._connections)
        if serving:
            super().shutdown()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def __enter__(self) -> Self:
        """Serve from a daemon thread."""
        self._thread = threading.Thread(
            target=self.serve_forever, name=f"api-server-{self.url}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Shut down."""
        self.shutdown()

    def track(self, conn: socket.socket) -> None:
        """Remember an open client connection."""
        with self._lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        """Forget a closed client connection."""
        with self._lock:
            self._connections.discard(conn)

    # -- stats and faults

    def stats(self) -> dict[str, Any]:
        """``{"requests", "by_resource", "pages", "faults_injected"}`` (a copy)."""
        with self._lock:
            return self._stats.snapshot()

    def log(self) -> list[dict[str, Any]]:
        """Resource requests in arrival order: ``{"t", "path", "resource", "page"}`` each.

        ``t`` is the arrival time (``time.time()``, seconds), taken before any latency or
        fault, so the gaps between a URL's requests are the client's waits. The last
        :data:`LOG_SIZE` requests are kept.
        """
        with self._lock:
            return list(self._log)

    def reset_stats(self) -> None:
        """Zero the stats, the request log and the per-URL fault counters."""
        with self._lock:
            self._stats = _Stats()
            self._log.clear()
            self._url_hits.clear()

    def set_fault(
        self, fault: str | None, resource: str | None = None, page: int | None = None
    ) -> FaultPlan:
        """Replace the fault plan (and zero the per-URL fault counters).

        Raises:
            ValueError: see :func:`parse_fault`.
        """
        plan = parse_fault(fault, resource, page)
        with self._lock:
            self.fault_plan = plan
            self._url_hits.clear()
        return plan

    def count_request(self, resource: str | None, page: int | None, path: str = "") -> None:
        """Count and log one resource request (``resource`` None: an unknown path)."""
        arrived = time.time()
        with self._lock:
            self._log.append({"t": arrived, "path": path, "resource": resource, "page": page})
            stats = self._stats
            stats.requests += 1
            if resource is not None:
                stats.by_resource[resource] = stats.by_resource.get(resource, 0) + 1
                if page is not None:
                    pages = stats.pages.setdefault(resource, {})
                    pages[str(page)] = pages.get(str(page), 0) + 1

    def note_fault(self) -> None:
        """Count one injected fault."""
        with self._lock:
            self._stats.faults_injected += 1

    def note_not_modified(self, injected: bool) -> None:
        """Count one ``304`` (and an injected fault when it was a stale one)."""
        with self._lock:
            self._stats.not_modified += 1
            self._stats.faults_injected += injected

    def take_url_fault(self, url: str, times: int) -> bool:
        """Whether this request is among the first ``times`` to ``url`` (counts it if so)."""
        with self._lock:
            seen = self._url_hits.get(url, 0)
            if seen >= times:
                return False
            self._url_hits[url] = seen + 1
            self._stats.faults_injected += 1
            return True

    def roll(self, probability: float) -> bool:
        """A seeded, thread-safe coin flip (counted when it fires)."""
        with self._lock:
            fired = self._random.random() < probability
            if fired:
                self._stats.faults_injected += 1
            return fired


def make_server(
    host: str = "127.0.0.1",
    port: int = 0,
    users: int = 10,
    seed: int = 0,
    latency: float = 0.0,
    fault: str = "none",
    fault_resource: str | None = None,
    fault_page: int | None = None,
) -> ApiServer:
    """Create (and bind) an API server; call ``serve_forever()`` or use it with ``with``.

    Args:
        host: interface to bind.
        port: port; 0 picks a free one (read it back from ``.url``).
        users: users to generate; posts, comments... scale with it.
        seed: seed of the generated values.
        latency: seconds slept before every resource response.
        fault: ``MODE[:ARG]`` from :data:`FAULT_MODES`.
        fault_resource: only inject on this resource.
        fault_page: only inject on this page number.

    Raises:
        ValueError: bad fault spec, negative ``users`` or ``latency``.
    """
    if users < 0:
        raise ValueError(f"users must be >= 0, got {users}")
    if not latency >= 0:
        raise ValueError(f"latency must be >= 0, got {latency}")
    plan = parse_fault(fault, fault_resource, fault_page)
    return ApiServer(host, port, Dataset(users, seed), latency, plan)


class _Stop(Exception):
    """Raised by the signal handler to leave ``serve_forever``."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGINT handler."""
    raise _Stop(signum)


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    users: int = 10,
    seed: int = 0,
    latency: float = 0.0,
    fault: str = "none",
    fault_resource: str | None = None,
    fault_page: int | None = None,
) -> None:
    """Serve in the foreground (the ``placeholder-api`` command) until SIGTERM or SIGINT.

    Prints ``serving N users on http://HOST:PORT`` once listening, then returns
    normally on SIGTERM/SIGINT. Arguments are those of :func:`make_server`.

    Raises:
        SystemExit: status 2 with a message on stderr for invalid arguments, 1 when
            the address cannot be bound.
    """
    try:
        server = make_server(host, port, users, seed, latency, fault, fault_resource, fault_page)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _raise_stop) for sig in _SIGNALS} if in_main else {}
    _watch_parent(server)
    try:
        print(f"serving {users} users on {server.url}", flush=True)
        server.serve_forever()
    except _Stop:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()


_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PARENT_ENV = "PLACEHOLDER_API_PARENT_PID"


def _watch_parent(server: ApiServer) -> None:
    """Shut down if the process named by ``$PLACEHOLDER_API_PARENT_PID`` goes away.

    :func:`bundled_server` sets it, so a server whose parent was killed outright
    (SIGKILL, a crashed kernel) does not linger.
    """
    parent = os.environ.get(_PARENT_ENV, "")
    if not parent.isdigit() or int(parent) != os.getppid():
        return

    def watch() -> None:
        while not server.stopping.wait(1.0):
            if os.getppid() != int(parent):
                server.shutdown()

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


_LINE = re.compile(r"serving \d+ users on (http://\S+)")


def _command(
    users: int,
    seed: int,
    latency: float,
    fault: str,
    fault_resource: str | None,
    fault_page: int | None,
) -> list[str]:
    """The ``python -m placeholder_api`` command line."""
    cmd = [sys.executable, "-m", "placeholder_api", "--host", "127.0.0.1"]
    cmd += ["--port", "0", "--users", str(users), "--seed", str(seed)]
    cmd += ["--latency", repr(float(latency)), "--fault", fault]
    if fault_resource is not None:
        cmd += ["--fault-resource", fault_resource]
    if fault_page is not None:
        cmd += ["--fault-page", str(fault_page)]
    return cmd


def _read_url(stdout: IO[str], found: queue.Queue[str | None]) -> None:
    """Thread body: put the URL of the first ``serving ...`` line (None at EOF)."""
    for line in stdout:
        match = _LINE.search(line)
        if match:
            found.put(match.group(1))
            return
    found.put(None)


def _stop_process(proc: subprocess.Popen[str], grace: float = 5.0) -> None:
    """SIGTERM the process, SIGKILL it after ``grace`` seconds, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_failure(proc: subprocess.Popen[str], stderr: IO[bytes], why: str) -> RuntimeError:
    """Stop the child and describe why it did not start, with its stderr."""
    _stop_process(proc, grace=2)
    stderr.seek(0)
    text = stderr.read().decode("utf-8", "replace").strip() or "(empty)"
    return RuntimeError(
        f"bundled API server {why} (exit code {proc.returncode}); its stderr:\n{text}"
    )


@contextlib.contextmanager
def bundled_server(
    users: int = 10,
    seed: int = 0,
    latency: float = 0.0,
    fault: str = "none",
    fault_resource: str | None = None,
    fault_page: int | None = None,
    startup_timeout: float = 30,
) -> Iterator[str]:
    """Run ``placeholder-api`` in a subprocess (its own GIL) and yield its base URL.

    On exit the process is sent SIGTERM (SIGKILL after 5 s) and reaped.

    Raises:
        ValueError: invalid fault arguments (checked before starting anything).
        RuntimeError: the server exited or printed no URL within ``startup_timeout``
            seconds; the message carries its stderr.
    """
    parse_fault(fault, fault_resource, fault_page)
    cmd = _command(users, seed, latency, fault, fault_resource, fault_page)
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, _PARENT_ENV: str(os.getpid())},
        )
        try:
            assert proc.stdout is not None
            found: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_read_url, args=(proc.stdout, found), daemon=True).start()
            try:
                url = found.get(timeout=startup_timeout)
            except queue.Empty:
                raise _start_failure(
                    proc, stderr, f"printed no URL within {startup_timeout} s"
                ) from None
            if url is None:
                raise _start_failure(proc, stderr, "exited before listening")
            yield url
        finally:
            _stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()
