"""Extracting a chunk without a server: page checkpoints, rendering pages."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from placeholder_api.fakedata import make_record, make_records
from placeholder_etl.core.extract import _checked_page, render_page
from placeholder_etl.core.pages import PageBook, expire
from placeholder_etl.core.store import Store
from placeholder_etl.core.tables import table_header
from tests.unit.steps import URL, fast, raw_page, spec, users_page


def test_page_checkpoints_are_kept_apart_by_every_setting_that_decides_their_rows(
    tmp_path,
) -> None:
    """Checkpoint folders replaced chunk keys: one per API, resource, total, page size, paging
    and formula setting; the chunks of one such version share it, a file per page and table."""
    cache = Store.open(str(tmp_path))
    base = spec()
    others = [
        spec(size=11),
        spec(resource="posts"),
        spec(total=26),
        spec(total=None),
        base.model_copy(update={"paging": "start"}),
        base.model_copy(update={"api_url": URL + "/v2"}),
    ]
    books = [PageBook.of(cache, s, False) for s in (base, *others)]
    books.append(PageBook.of(cache, base, True))
    assert len({book.folder for book in books}) == 8
    book = books[0]
    assert book.folder == PageBook.of(cache, spec(), False).folder
    assert book.folder == PageBook.of(cache, spec(first=2, last=3), False).folder
    version = Path(book.folder).parent.name
    assert Path(book.folder) == tmp_path / "pages" / version / "users"
    assert len(version) == 20
    assert book.tables == ("users", "users_flat")
    assert book.file(3, "users_flat") == f"{book.folder}/p0000003.users_flat.csv"
    assert book.file(3, "users") != book.file(4, "users")
    assert spec(first=3, last=8).label == "users p3-8"

    # a page checkpointed for one version is seen by every chunk of it, and by no other
    book.write(1, render_page(raw_page("users", users_page(1))))
    assert set(PageBook.of(cache, spec(first=1, last=3), False).done()) == {1}
    assert all(other.done() == {} for other in books[1:])


def test_checkpoints_older_than_the_cache_window_are_not_reused(tmp_path) -> None:
    """--cache-hours: a page checkpoint is reused that long, and its version folder is removed
    once its newest page is older."""
    cache = Store.open(str(tmp_path))
    users, posts = PageBook.of(cache, spec(), False), PageBook.of(cache, spec("posts"), False)

    hour_ago = time.time() - 3600
    for number in (1, 2):
        users.write(number, render_page(raw_page("users", users_page(number), number)))
    posts.write(1, render_page(raw_page("posts", make_records("posts", 1, 11, 0))))
    for path in Path(users.folder).iterdir():
        os.utime(path, (hour_ago, hour_ago))
    assert set(users.done()) == {1, 2}  # no window: every checkpoint
    assert set(users.done(max_age=7200)) == {1, 2}
    assert users.done(max_age=1800) == {}
    assert set(posts.done(max_age=1800)) == {1}

    users.write(3, render_page(raw_page("users", users_page(3), 3)))
    assert set(users.done(max_age=1800)) == {3}  # only the fresh page among old ones
    assert expire(cache, 1800) == []  # the version has a fresh page: kept
    for path in Path(users.folder).iterdir():
        os.utime(path, (hour_ago, hour_ago))
    assert expire(cache, 1800) == [str(Path(users.folder).parent)]
    assert not Path(users.folder).exists()
    assert set(posts.done(max_age=1800)) == {1}


RENDERERS = {
    "render_page": render_page,
    "fastpath": fast,
    "checked_page": _checked_page,
}
renderers = pytest.mark.parametrize("render", RENDERERS.values(), ids=RENDERERS.keys())


@renderers
def test_a_page_becomes_seed_rows_in_id_order_and_flat_rows_as_served(render) -> None:
    users = [make_record("users", n, 0) for n in (3, 1, 2)]
    page = render(raw_page("users", users), False)
    assert set(page.tables) == {"users", "users_flat"}
    seed = page.tables["users"].decode().splitlines()
    flat = page.tables["users_flat"].decode().splitlines()
    assert [line.split(",")[0] for line in seed] == ["1", "2", "3"]
    assert [line.split(",")[0] for line in flat] == ["3", "1", "2"]
    assert (page.rows, page.first_id, page.last_id, page.ordered) == (3, 3, 2, False)
    ordered = render(raw_page("users", make_records("users", 1, 4, 0)), False)
    assert (ordered.rows, ordered.first_id, ordered.last_id, ordered.ordered) == (3, 1, 3, True)


def test_every_table_has_its_header() -> None:
    assert table_header("users") == b"ID,Name,Username,Email,Address,PhoneNumber,Company\n"
    assert table_header("users_flat").startswith(b"id,name,username,email,address_")
    assert table_header("todos") == b"user_id,id,title,completed\n"


@renderers
def test_formula_guarding_follows_keep_formulas(render) -> None:
    posts = [{"userId": 1, "id": 1, "title": "=1+1", "body": "-x"}]
    raw = raw_page("posts", posts)
    assert render(raw, False).tables == {"posts": b"1,1,'=1+1,'-x\n"}
    assert render(raw, True).tables == {"posts": b"1,1,=1+1,-x\n"}
    user = make_record("users", 1, 0) | {"name": "@SUM(A1)"}
    guarded = render(raw_page("users", [user]), False).tables
    kept = render(raw_page("users", [user]), True).tables
    for table in ("users", "users_flat"):
        assert b",'@SUM(A1)," in guarded[table]
        assert b",@SUM(A1)," in kept[table]
