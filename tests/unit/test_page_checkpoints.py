"""Page checkpoints are checked before reuse: a damaged, truncated or missing page is not done.

Real files in a temporary cache; each damage is made the way a disk, a power cut or a person
makes it (bytes flipped in place, a file cut short or emptied, a file deleted beside its marker).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import orjson
import pytest

from placeholder_api.fakedata import make_records
from placeholder_etl.core.client import RawPage
from placeholder_etl.core.extract import render_page
from placeholder_etl.core.pages import (
    KEPT_FOR_REVALIDATION,
    PageBook,
    PageMarker,
    checksum,
    count_done,
    expire,
    page_number,
)
from placeholder_etl.core.responses import Validators
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
    assert book.scan()[:2] == ({2: done}, {})
    assert book.check(done) is None
    assert page_number(book.file(2, "users_flat")) == (2, "users_flat")
    assert page_number(f"{book.folder}/{marker}") is None


def test_damaged_truncated_and_missing_pages_are_not_done(book) -> None:
    done = write_pages(book, range(1, 6))
    flip(Path(book.file(1, "users")))  # same size: only the checksum tells
    Path(book.file(2, "users_flat")).write_bytes(Path(book.file(2, "users_flat")).read_bytes()[:-7])
    Path(book.file(3, "users")).unlink()  # its marker kept
    Path(book.file(4, "users")).write_bytes(b"")  # what a power cut can leave beside a marker

    found, broken, _, _ = book.scan()
    assert broken == {2: "damaged", 3: "missing", 4: "damaged"}  # from the listing alone
    assert set(found) == {1, 5}
    assert book.check(found[1]) == "damaged"
    assert book.check(found[5]) is None
    Path(book.file(5, "users_flat")).unlink()  # gone between the listing and the read
    assert book.check(found[5]) == "missing"
    assert count_done(book.store, [spec(1, 5)], False) == (1, 10, 0)  # progress: by the listing

    # a page written again is whole and done; its marker is the same name
    assert write_pages(book, range(1, 6)) == done
    assert book.scan()[:2] == (done, {})
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
    assert book.scan()[:2] == ({}, {})
    assert count_done(book.store, [spec()], False) == (0, 0, 0)


def test_the_newest_sound_marker_of_a_page_wins(book) -> None:
    """Data changed under the same total: the page's files and marker are written anew; the
    old marker, which names other files, does not make the page damaged."""
    (old,) = write_pages(book, range(1, 2)).values()
    stale = PageMarker(1, 10, 1, 10, True, tuple((size + 1, "0" * 16) for size, _ in old.files))
    Path(book.folder, stale.marker()).touch()
    assert book.scan()[:2] == ({1: old}, {})


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


def age(folder: str, seconds: float) -> None:
    """Make every file of ``folder`` ``seconds`` old: a later day's run, as it sees the cache."""
    when = time.time() - seconds
    for path in Path(folder).iterdir():
        os.utime(path, (when, when))


def test_an_expired_page_with_validators_is_stale_and_a_304_renews_it(book) -> None:
    """Past its lifetime a page the server gave validators for is stale (asked for again
    conditionally), not gone; renewing it makes it done again, counted as revalidated."""
    tag = Validators(etag='W/"a-1"', last_modified="Tue, 01 Dec 2026 10:00:00 GMT")
    page = render_page(
        RawPage("users", 1, URL, "users", orjson.dumps(make_records("users", 1, 11, 0)), "", 30, 0)
    )
    one = book.write(1, page, tag)
    two = book.write(2, page)  # no validators: expires as before
    assert book.validators(one) == tag
    assert book.validators(two) is None
    assert tag.conditions() == {
        "If-None-Match": 'W/"a-1"',
        "If-Modified-Since": "Tue, 01 Dec 2026 10:00:00 GMT",
    }

    age(book.folder, 7200)
    scan = book.scan(max_age=3600)
    assert (scan.done, scan.broken, scan.stale, scan.renewed) == ({}, {}, {1: one}, {})
    assert count_done(book.store, [spec()], False, 3600) == (0, 0, 0)

    before = time.time() - 1
    newer = Validators(etag='W/"a-1"')
    assert book.renew(one, newer) == one
    scan = book.scan(max_age=3600)
    assert scan.done == {1: one}
    assert scan.stale == {}
    assert scan.renewed[1] >= before
    assert book.validators(one) == newer
    assert count_done(book.store, [spec()], False, 3600, since=before) == (1, 10, 1)
    assert count_done(book.store, [spec()], False, 3600, since=time.time() + 5) == (1, 10, 0)

    # kept a week past its lifetime, then as if it were not there
    age(book.folder, 3600 + KEPT_FOR_REVALIDATION + 60)
    assert book.scan(max_age=3600)[:3] == ({}, {}, {})
    assert expire(book.store, 3600) == [str(Path(book.folder).parent)]


def test_validators_belong_to_their_marker(book) -> None:
    """Validators kept for another version of the page (the process died between the two
    files, or a page fetched again without any) are not sent: the page is fetched whole."""
    tag = Validators(etag='"v1"')
    (first,) = write_pages(book, range(1, 2)).values()
    book.renew(first, tag)
    other = PageMarker(1, 9, 1, 9, True, first.files)
    assert book.validators(first) == tag
    assert book.validators(other) is None
    Path(book.folder, "p0000001.http.json").write_bytes(b"{not json")
    assert book.validators(first) is None


def test_a_folder_with_validators_outlives_its_lifetime_for_revalidation(tmp_path) -> None:
    cache = Store.open(str(tmp_path / "cache"))
    kept, plain = PageBook.of(cache, spec(), False), PageBook.of(cache, spec(1, 4), True)
    page = render_page(
        RawPage("users", 1, URL, "users", orjson.dumps(make_records("users", 1, 11, 0)), "", 30, 0)
    )
    kept.write(1, page, Validators(etag='"x"'))
    plain.write(1, page)
    age(kept.folder, 7200)
    age(plain.folder, 7200)
    assert expire(cache, 3600) == [str(Path(plain.folder).parent)]
    assert Path(kept.folder).exists()


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        ({"ETag": 'W/"2a-xyz"'}, Validators(etag='W/"2a-xyz"')),
        (
            {"Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT"},
            Validators(last_modified="Tue, 01 Dec 2026 10:00:00 GMT"),
        ),
        ({}, None),
        ({"ETag": "bad\r\nX-Injected: 1"}, None),  # never sent back as a header
        ({"ETag": "x" * 1001}, None),
        ({"ETag": ""}, None),
    ],
)
def test_only_validators_that_can_be_sent_back_are_kept(headers, kept) -> None:
    assert Validators.of(headers) == kept
    if kept is not None:
        assert Validators.from_dict(kept.as_dict()) == kept
    assert Validators.from_dict(["not", "a", "dict"]) is None
    assert Validators.from_dict({"etag": 5}) is None
