"""Page checkpoints are checked before reuse: a damaged, truncated or missing page is not done.

Real files in a temporary cache; each damage is made the way a disk, a power cut or a person
makes it (bytes flipped in place, a file cut short or emptied, a file deleted beside its marker).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from placeholder_api.fakedata import make_records
from placeholder_etl.core.client import RawPage
from placeholder_etl.core.extract import render_page
from placeholder_etl.core.pages import PageBook, PageMarker, checksum, count_done, page_number
from placeholder_etl.core.results import ChunkResult, ChunkSpec
from placeholder_etl.core.store import Store
from placeholder_etl.core.transport import parts_damaged

URL = "http://api.test"


def spec(first: int = 1, last: int = 3) -> ChunkSpec:
    return ChunkSpec(
        api_url=URL, resource="users", first_page=first, last_page=last, page_size=10, total=30
    )


def write_pages(book: PageBook, numbers: range) -> dict[int, PageMarker]:
    """Check and checkpoint users pages ``numbers`` (10 records each) as a chunk does."""
    done = {}
    for number in numbers:
        records = make_records("users", 10 * number - 9, 10 * number + 1, 0)
        raw = RawPage("users", number, f"{URL}/users", "users", orjson.dumps(records), "", 3, 0)
        done[number] = book.write(number, render_page(raw))
    return done


def flip(path: Path, at: int = 40) -> None:
    """Flip the bits of one byte in place: the size stays, the content does not."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def book(tmp_path) -> PageBook:
    return PageBook.of(Store.open(str(tmp_path / "cache")), spec(), False)


def test_a_marker_records_each_files_size_and_checksum(book) -> None:
    (done,) = write_pages(book, range(2, 3)).values()
    for table, (size, digest) in zip(book.tables, done.files, strict=True):
        data = Path(book.file(2, table)).read_bytes()
        assert size == len(data)
        assert digest == hashlib.sha256(data).hexdigest()[:16] == checksum(data)
    (marker,) = (p.name for p in Path(book.folder).iterdir() if ".done." in p.name)
    assert marker == done.marker()
    assert marker.startswith("p0000002.done.10.11.20.o.")
    assert PageMarker.parse(marker) == done
    assert book.scan() == ({2: done}, {})
    assert book.check(done) is None
    assert page_number(book.file(2, "users_flat")) == (2, "users_flat")
    assert page_number(f"{book.folder}/{marker}") is None


def test_damaged_truncated_and_missing_pages_are_not_done(book) -> None:
    done = write_pages(book, range(1, 6))
    flip(Path(book.file(1, "users")))  # same size: only the checksum tells
    Path(book.file(2, "users_flat")).write_bytes(Path(book.file(2, "users_flat")).read_bytes()[:-7])
    Path(book.file(3, "users")).unlink()  # its marker kept
    Path(book.file(4, "users")).write_bytes(b"")  # what a power cut can leave beside a marker

    found, broken = book.scan()
    assert broken == {2: "damaged", 3: "missing", 4: "damaged"}  # from the listing alone
    assert set(found) == {1, 5}
    assert book.check(found[1]) == "damaged"
    assert book.check(found[5]) is None
    Path(book.file(5, "users_flat")).unlink()  # gone between the listing and the read
    assert book.check(found[5]) == "missing"
    assert count_done(book.store, [spec(1, 5)], False) == (1, 10)  # progress: by the listing

    # a page written again is whole and done; its marker is the same name
    assert write_pages(book, range(1, 6)) == done
    assert book.scan() == (done, {})
    assert all(book.check(page) is None for page in done.values())


def test_old_format_markers_are_ignored_and_their_pages_fetched_again(book) -> None:
    """A marker with no sizes and checksums (an older version's) vouches for nothing."""
    write_pages(book, range(1, 2))
    folder = Path(book.folder)
    for marker in folder.glob("*.done.*"):
        marker.unlink()
    (folder / "p0000001.done.10.1.10.o").touch()  # the old format
    (folder / "p0000002.done.10.11.20.o").touch()  # no page files either
    (folder / "p0000003.done.10.21.30.o.12-nothex").touch()  # not a marker at all
    assert book.scan() == ({}, {})
    assert count_done(book.store, [spec()], False) == (0, 0)


def test_the_newest_sound_marker_of_a_page_wins(book) -> None:
    """Data changed under the same total: the page's files and marker are written anew; the
    old marker, which names other files, does not make the page damaged."""
    (old,) = write_pages(book, range(1, 2)).values()
    stale = PageMarker(1, 10, 1, 10, True, tuple((size + 1, "0" * 16) for size, _ in old.files))
    Path(book.folder, stale.marker()).touch()
    assert book.scan() == ({1: old}, {})


def test_cached_chunk_results_are_checked_like_pages(tmp_path, book) -> None:
    """The flow checks a chunk result Prefect served from its cache the same way."""
    done = write_pages(book, range(1, 4))
    result = ChunkResult(
        spec=spec(),
        pages=3,
        rows=30,
        parts={t: [book.file(n, t) for n in done] for t in book.tables},
        first_id=1,
        last_id=30,
        ordered=True,
        retries=0,
        worker="here",
    )
    cache = book.store
    assert not parts_damaged(result, cache)
    flip(Path(book.file(2, "users_flat")))
    assert parts_damaged(result, cache)
    write_pages(book, range(2, 3))
    assert not parts_damaged(result, cache)
    Path(book.file(3, "users")).unlink()
    assert parts_damaged(result, cache)
