"""Polite reruns: a page past its lifetime is asked for conditionally (``If-None-Match``), and
the bundled API's ``304 Not Modified`` renews it, against a real Prefect server.

The cache lifetime is ``--cache-hours 0.0003`` (about 1.1 s) and each rerun waits past it, so
Prefect's task cache has expired too: every chunk task runs again, as on the next day.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from placeholder_api.server import Dataset
from placeholder_etl.core.pages import PageBook
from placeholder_etl.core.results import ChunkSpec, Manifest
from placeholder_etl.core.store import Store
from placeholder_etl.core.verify import verify_output
from tests.helpers import run_flow

pytestmark = pytest.mark.usefixtures("prefect_api_url")

LIFETIME = 0.0003  # hours: about 1.1 s
EXPIRED = 1.5  # seconds


def run(api_url: str, out: Path, cache_dir: Path, **options) -> Manifest:
    """A run with the short lifetime, its output checked against its manifest."""
    manifest = run_flow(api_url, out, cache_dir, cache_hours=LIFETIME, **options).manifest
    assert verify_output(str(out)).ok
    return manifest


def users_csv(out: Path) -> bytes:
    (path,) = out.glob("users_[0-9]*.csv")
    return path.read_bytes()


class Edited(Dataset):
    """The bundled data with user 15's name changed: page 2 of 10 differs, nothing else."""

    def select(self, resource, query, window):
        records, total = super().select(resource, query, window)
        return [dict(r, name="Edited Name") if r["id"] == 15 else r for r in records], total


def test_an_unchanged_api_is_revalidated_with_headers_only(api, tmp_path, cache_dir) -> None:
    """The default runner (Dask): every expired page gets a 304, no body is downloaded, the
    tables are byte-identical and the manifest counts the revalidated pages."""
    first = run(api.url, tmp_path / "a", cache_dir)
    assert (first.pages_fetched, first.pages_revalidated) == (3, 0)
    time.sleep(EXPIRED)
    api.reset_stats()
    again = run(api.url, tmp_path / "b", cache_dir)
    stats = api.stats()
    assert stats["not_modified"] == 3  # the three pages; the count is asked for as before
    assert stats["requests"] == 4
    assert (again.cached_chunks, again.pages_fetched) == (0, 0)
    assert (again.pages_reused, again.pages_revalidated) == (3, 3)
    assert users_csv(tmp_path / "b") == users_csv(tmp_path / "a")
    assert {n: t.sha256 for n, t in again.tables.items()} == {
        n: t.sha256 for n, t in first.tables.items()
    }


def test_a_changed_page_is_fetched_anew(api, tmp_path, cache_dir) -> None:
    run(api.url, tmp_path / "a", cache_dir, runner="local")
    time.sleep(EXPIRED)
    api.data = Edited(api.data.users, api.data.seed)
    api.reset_stats()
    again = run(api.url, tmp_path / "b", cache_dir, runner="local")
    assert api.stats()["not_modified"] == 2
    assert (again.pages_fetched, again.pages_revalidated) == (1, 2)
    assert b"Edited Name" in users_csv(tmp_path / "b")
    assert b"Edited Name" not in users_csv(tmp_path / "a")
    # and the next rerun revalidates the new copy
    time.sleep(EXPIRED)
    api.reset_stats()
    third = run(api.url, tmp_path / "c", cache_dir, runner="local")
    assert (third.pages_fetched, third.pages_revalidated) == (0, 3)
    assert users_csv(tmp_path / "c") == users_csv(tmp_path / "b")


def test_what_a_wrong_304_can_and_cannot_do(api, tmp_path, cache_dir) -> None:
    """``stale-304`` answers every conditional request 304, even for a page that changed.

    Trusted: a 304 for a page whose checkpoint is sound (HTTP says the copy is current; the
    run keeps it, as any HTTP cache would). Checked regardless: a damaged checkpoint is never
    revalidated (its page is fetched whole, unconditionally), and a changed total starts a
    fresh set of pages (no conditional request at all)."""
    first = run(api.url, tmp_path / "a", cache_dir, runner="local")
    spec = ChunkSpec(api_url=api.url, resource="users", first_page=1, page_size=10, total=25)
    book = PageBook.of(Store.open(str(cache_dir)), spec, False)
    page3 = Path(book.file(3, "users"))
    damaged = bytearray(page3.read_bytes())
    damaged[5] ^= 0xFF  # same size: only the checksum tells
    page3.write_bytes(bytes(damaged))
    time.sleep(EXPIRED)
    api.data = Edited(api.data.users, api.data.seed)
    api.set_fault("stale-304")
    api.reset_stats()
    lied = run(api.url, tmp_path / "b", cache_dir, runner="local")
    assert api.stats()["not_modified"] == 2  # pages 1 and 2; page 3 fetched whole
    assert (lied.pages_fetched, lied.pages_revalidated) == (1, 2)
    assert b"Edited Name" not in users_csv(tmp_path / "b")  # the lie about page 2, believed
    assert users_csv(tmp_path / "b") == users_csv(tmp_path / "a")  # page 3 sound again
    assert lied.tables["users"].sha256 == first.tables["users"].sha256

    # the count is never conditional: its ETag covers the first record, not X-Total-Count, so
    # even an honest 304 would hide a new record (here the fault is still on)
    time.sleep(EXPIRED)
    api.data = Dataset(26, api.data.seed)  # a 26th user: another total
    api.reset_stats()
    grown = run(api.url, tmp_path / "c", cache_dir, runner="local")
    assert api.stats()["not_modified"] == 0
    assert (grown.pages_fetched, grown.pages_revalidated) == (3, 0)
    assert grown.tables["users"].rows == 26
