"""Counting and planning: the resources, the chunks, the limits."""

from __future__ import annotations

import pytest

from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.plan import auto_pages_per_chunk, check_plan, plan_chunks, total_pages
from placeholder_etl.core.resources import resolve_resources
from tests.unit.steps import URL


@pytest.mark.parametrize(
    ("requested", "names"),
    [
        ("users", ("users",)),
        ("todos, users", ("users", "todos")),
        (["photos", "posts", "photos"], ("posts", "photos")),
        ("users,all", ("users", "posts", "comments", "albums", "photos", "todos")),
    ],
)
def test_resources_resolve_in_table_order(requested, names) -> None:
    assert resolve_resources(requested) == names


def test_unknown_or_no_resources_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^unknown resource '\.\./x', 'ALL': choose from users, "):
        resolve_resources("users,../x,ALL")
    with pytest.raises(ValueError, match=r"^no resource given: choose from users, posts, "):
        resolve_resources(" , ")


def test_chunks_cover_every_page_once_in_order() -> None:
    chunks = plan_chunks(URL, {"users": 25, "posts": 0, "todos": 41}, 10, 2, "start")
    assert [(c.resource, c.first_page, c.last_page) for c in chunks] == [
        ("users", 1, 2),
        ("users", 3, 3),
        ("todos", 1, 2),
        ("todos", 3, 4),
        ("todos", 5, 5),
    ]
    assert {(c.page_size, c.paging, c.api_url) for c in chunks} == {(10, "start", URL)}
    assert [c.total for c in chunks] == [25, 25, 41, 41, 41]  # decides the pages' version


def test_an_unknown_total_is_one_open_chunk() -> None:
    (chunk,) = plan_chunks(URL, {"users": None}, 10, 3)
    assert (chunk.first_page, chunk.last_page, chunk.label) == (1, None, "users p1-…")
    assert chunk.total is None


@pytest.mark.parametrize(("size", "per"), [(0, 1), (1, 0)])
def test_plan_refuses_empty_pages_or_chunks(size, per) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan_chunks(URL, {"users": 5}, size, per)


def test_a_plan_beyond_max_records_is_refused_naming_the_resource() -> None:
    check_plan({"users": 10, "posts": None, "todos": 10_000_000}, 10_000_000)
    with pytest.raises(
        PermanentError,
        match=r"^posts: the API reports 10,000,001 records \(X-Total-Count\), more than "
        r"--max-records 10,000,000; nothing was fetched",
    ):
        check_plan({"users": 10, "posts": 10_000_001}, 10_000_000)


def test_only_an_open_ended_chunk_is_bounded_by_max_records() -> None:
    known, unknown = plan_chunks(URL, {"users": 25, "posts": None}, 10, 5, max_records=95)
    assert (known.last_page, known.max_pages) == (3, None)
    assert (unknown.last_page, unknown.max_pages) == (None, 10)  # 95 records: 10 pages
    (unbounded,) = plan_chunks(URL, {"posts": None}, 10, 5)
    assert unbounded.max_pages is None


def test_pages_and_pages_per_task() -> None:
    totals = {"users": 25, "posts": 250, "todos": None}
    assert total_pages(totals, 10) == 3 + 25
    assert auto_pages_per_chunk(totals, 10, 2) == 7  # 28 pages, two tasks per slot
    assert auto_pages_per_chunk(totals, 10, 0) == 28  # no slots: one task
    assert auto_pages_per_chunk({"users": 1}, 10, 8) == 1
