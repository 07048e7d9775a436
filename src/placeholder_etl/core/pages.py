"""Page checkpoints: every page's rows are durable as soon as the page is checked.

A checked page is written at once, one file per output table, then a *marker*, the page's
commit point: its name carries what the page held and what its files must be
(``p0000012.done.1000.11001.12000.o.153210-1f0c….240311-9a7e…``: rows, first and last id,
whether ids rose strictly, then each table's file size and checksum). One listing of the
folder then tells which pages are done and whether their files are all there at their
recorded sizes, with no read per page (a GET each on an object store).

A page is reused only when its marker exists and its files match it, so nothing damaged is
ever trusted: a file deleted beside its marker, cut short, emptied or altered in place is
seen (:meth:`PageBook.scan`: a missing file or another size in the listing;
:meth:`PageBook.check`: another checksum, on a local disk) and the page is fetched again.
Each file is written whole under a temporary name and renamed, and the marker comes last, so a
killed process leaves no marker for a page it had not finished. The files are not fsynced:
after a power cut a marker can stand beside a torn or empty file, which the same check finds
(an fsync per page made a 100-page extract 6-40% slower here; the check costs about 0.4 ms a
page next to 14 ms to fetch and render it). A marker of an older format (no sizes and
checksums) is not a marker: its page is fetched again. A page written twice (a retry, a resumed
run, Dask rerunning a lost worker's task) is the same file and marker written twice, so every
row is kept once.

Checkpoints live under ``<cache>/pages/<version>/<resource>/``. The version is a hash of what
decides a page's rows — the API, the resource, its ``X-Total-Count``, page size, paging and
formula setting — so a changed total (the data changed) starts a fresh set, never mixing two
versions of the data; checkpoints older than the cache window are not reused as they are.

A page the server sent with validators (``ETag``, ``Last-Modified``) keeps them beside its
checkpoint (``p0000012.http.json``, naming the marker they belong to). Past its lifetime
such a page is *stale*, not gone: it is asked for again conditionally, and a ``304 Not
Modified`` renews it (:meth:`PageBook.renew` rewrites the validators file, whose time then
counts as the page's). Stale pages are kept :data:`KEPT_FOR_REVALIDATION` past their lifetime;
older ones, and expired pages without validators, are removed (:func:`expire`).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson

from placeholder_etl.core.fastpath import PageTables
from placeholder_etl.core.resources import TABLES
from placeholder_etl.core.responses import Validators
from placeholder_etl.core.results import ChunkSpec
from placeholder_etl.core.store import Store

__all__ = [
    "KEPT_FOR_REVALIDATION",
    "Damage",
    "PageBook",
    "PageMarker",
    "checksum",
    "count_done",
    "expire",
    "page_number",
]

#: Seconds a page with validators is kept past its lifetime, to be revalidated (a week).
KEPT_FOR_REVALIDATION = 7 * 24 * 3600.0

_ORDERED = {"o": True, "u": False}
_SUM = re.compile(r"[0-9a-f]{16}")
_PAGE_FILE = re.compile(r"p(\d{7})\.([a-z_]+)\.csv")
_HTTP = ".http.json"

#: What was wrong with a cached page that is fetched again (``ChunkResult.pages_damaged``).
Damage = Literal["damaged", "missing"]


def checksum(data: bytes) -> str:
    """A page file's checksum: the first 16 hex digits (64 bits) of its sha256.

    It finds damage (a torn, truncated or altered file), not forgery. sha256 runs in the
    CPU's SHA instructions here: about 0.3 ms for a 1,000-user page's 360 kB, three times
    faster than blake2b and near crc32.
    """
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PageMarker:
    """What a checkpointed page held, and its files (read back from its marker's name).

    Attributes:
        files: ``(size, checksum)`` of each table's file, in the order of the book's tables.
    """

    number: int
    rows: int
    first_id: int | None
    last_id: int | None
    ordered: bool
    files: tuple[tuple[int, str], ...]

    def marker(self) -> str:
        """The marker's file name."""
        first = "-" if self.first_id is None else self.first_id
        last = "-" if self.last_id is None else self.last_id
        flag = "o" if self.ordered else "u"
        files = "".join(f".{size}-{digest}" for size, digest in self.files)
        return f"p{self.number:07d}.done.{self.rows}.{first}.{last}.{flag}{files}"

    @classmethod
    def parse(cls, name: str) -> PageMarker | None:
        """The page a marker name describes (None: not a marker, or one of an older format
        that records no files)."""
        parts = name.split(".")
        if len(parts) < 7 or parts[1] != "done" or parts[5] not in _ORDERED:
            return None
        try:
            first = None if parts[3] == "-" else int(parts[3])
            last = None if parts[4] == "-" else int(parts[4])
            files = []
            for part in parts[6:]:
                size, digest = part.split("-")
                if not _SUM.fullmatch(digest):
                    return None
                files.append((int(size), digest))
            number, rows = int(parts[0][1:]), int(parts[2])
        except ValueError:
            return None
        return cls(number, rows, first, last, _ORDERED[parts[5]], tuple(files))


@dataclass(frozen=True)
class PageBook:
    """The checkpoints of one resource's pages, for one version of the data.

    Attributes:
        store: the cache store (a local folder or an object store).
        folder: the path of this version's folder on the store.
        tables: the output tables each page has a file for.
    """

    store: Store
    folder: str
    tables: tuple[str, ...]

    @classmethod
    def of(cls, store: Store, spec: ChunkSpec, keep_formulas: bool) -> PageBook:
        """The checkpoints of ``spec``'s resource and data version in ``store``."""
        fields = (spec.api_url, spec.resource, spec.total, spec.page_size, spec.paging)
        text = "|".join(map(str, (*fields, keep_formulas)))
        version = hashlib.sha256(text.encode()).hexdigest()[:20]
        folder = store.path("pages", version, spec.resource)
        return cls(store=store, folder=folder, tables=TABLES[spec.resource])

    def file(self, number: int, table: str) -> str:
        """The path of page ``number``'s rows of ``table``."""
        return f"{self.folder}/p{number:07d}.{table}.csv"

    def done(self, max_age: float | None = None) -> dict[int, PageMarker]:
        """Pages whose checkpoint is complete and current, by the listing (see :meth:`scan`)."""
        return self.scan(max_age).done

    def scan(self, max_age: float | None = None) -> Scan:
        """One listing of the folder: the pages done, stale and not.

        A page's checkpoint is complete when its marker names files that are all there with
        the sizes it records (several markers for one page — the data changed under the same
        total — the newest such). Its time is its marker's, or its validators file's when that
        is newer (a revalidation renewed it). Younger than ``max_age`` seconds it is done;
        older, with validators and younger than ``max_age`` +
        :data:`KEPT_FOR_REVALIDATION`, stale; older still, as if it were not there. A page
        whose every marker of that window names a file that is gone is ``missing``; one with a
        file of another size ``damaged``.
        """
        listing = self.store.listing(self.folder)
        now = time.time()
        newest: dict[int, tuple[float, PageMarker]] = {}
        broken: dict[int, Damage] = {}
        for name, info in listing.items():
            done = PageMarker.parse(name)
            if done is None:
                continue
            kept = listing.get(self._http_name(done.number))
            age = now - max(info["mtime"], kept["mtime"] if kept else 0.0)
            if max_age is not None and age > max_age + (KEPT_FOR_REVALIDATION if kept else 0):
                continue
            damage = self._damage(done, listing)
            if damage is not None:
                if broken.get(done.number) != "damaged":  # damaged says more than missing
                    broken[done.number] = damage
            elif done.number not in newest or newest[done.number][0] < info["mtime"]:
                newest[done.number] = (info["mtime"], done)
        fresh: dict[int, PageMarker] = {}
        stale: dict[int, PageMarker] = {}
        renewed: dict[int, float] = {}
        for number, (mtime, done) in newest.items():
            kept = listing.get(self._http_name(number))
            if kept is not None and kept["mtime"] > mtime:
                renewed[number], mtime = kept["mtime"], kept["mtime"]
            if max_age is None or now - mtime <= max_age:
                fresh[number] = done
            else:
                stale[number] = done
                renewed.pop(number, None)
        broken = {n: damage for n, damage in broken.items() if n not in newest}
        return Scan(fresh, broken, stale, renewed)

    def _damage(self, done: PageMarker, listing: dict[str, dict]) -> Damage | None:
        """What the listing shows wrong with ``done``'s files (None: all there, right sizes)."""
        if len(done.files) != len(self.tables):
            return "damaged"
        for table, (size, _) in zip(self.tables, done.files, strict=True):
            info = listing.get(f"p{done.number:07d}.{table}.csv")
            if info is None:
                return "missing"
            if info["size"] != size:
                return "damaged"
        return None

    def check(self, done: PageMarker) -> Damage | None:
        """Read ``done``'s files back: None when each has the checksum its marker records.

        For a page :meth:`scan` found done (the sizes are right); a file gone since is
        ``missing``, one whose bytes differ ``damaged``. On a local disk only: there reading a
        page back costs a small part of fetching it, and a file can be torn by a power cut or
        changed in place. An object store's objects are whole or absent and reading one back
        costs a request, so there the sizes in the listing are the check.
        """
        if not self.store.local:
            return None
        for table, (size, digest) in zip(self.tables, done.files, strict=True):
            try:
                data = self.store.cat(self.file(done.number, table))
            except FileNotFoundError:
                return "missing"
            if len(data) != size or checksum(data) != digest:
                return "damaged"
        return None

    def write(
        self, number: int, page: PageTables, validators: Validators | None = None
    ) -> PageMarker:
        """Checkpoint page ``number``: its tables' files, its ``validators`` if the server sent
        any, then its marker naming the files' sizes and checksums.

        No fsync (see the module's docstring): what a power cut tears, the check before reuse
        finds, and the page is fetched again.
        """
        files = []
        for table in self.tables:
            data = page.tables[table]
            self.store.put(self.file(number, table), data, sync=False)
            files.append((len(data), checksum(data)))
        done = PageMarker(
            number, page.rows, page.first_id, page.last_id, page.ordered, tuple(files)
        )
        if validators is not None:
            self._keep(done, validators)
        self.store.put(f"{self.folder}/{done.marker()}", b"", sync=False)
        return done

    def validators(self, done: PageMarker) -> Validators | None:
        """The validators kept for ``done`` (None: none kept, or kept for another marker)."""
        try:
            kept = orjson.loads(self.store.cat(f"{self.folder}/{self._http_name(done.number)}"))
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        if not isinstance(kept, dict) or kept.get("marker") != done.marker():
            return None
        return Validators.from_dict(kept)

    def renew(self, done: PageMarker, validators: Validators) -> PageMarker:
        """The server says ``done`` is still current (``304``): renew its lifetime."""
        self._keep(done, validators)
        return done

    def _keep(self, done: PageMarker, validators: Validators) -> None:
        kept: dict[str, Any] = {"marker": done.marker(), **validators.as_dict()}
        self.store.put(
            f"{self.folder}/{self._http_name(done.number)}", orjson.dumps(kept), sync=False
        )

    @staticmethod
    def _http_name(number: int) -> str:
        return f"p{number:07d}{_HTTP}"


class Scan(NamedTuple):
    """What one listing of a :class:`PageBook` shows (:meth:`PageBook.scan`).

    Attributes:
        done: pages to reuse as they are.
        broken: pages to fetch again, and why.
        stale: pages past their lifetime, to ask for conditionally.
        renewed: pages of ``done`` a ``304`` renewed, and when (``time.time()``).
    """

    done: dict[int, PageMarker]
    broken: dict[int, Damage]
    stale: dict[int, PageMarker]
    renewed: dict[int, float]


def page_number(path: str) -> tuple[int, str] | None:
    """The page and table of a checkpoint file's path (None: not a page file)."""
    found = _PAGE_FILE.fullmatch(path.rsplit("/", 1)[-1])
    return (int(found[1]), found[2]) if found else None


def expire(store: Store, max_age: float) -> list[str]:
    """Remove checkpoint versions whose newest page is older than ``max_age`` seconds
    (:data:`KEPT_FOR_REVALIDATION` more when its pages have validators: they can be renewed).

    Returns:
        The folders removed.
    """
    root = store.path("pages")
    now = time.time()
    removed = []
    for version in store.folders(root):
        folder = f"{root}/{version}"
        newest, validated = 0.0, False
        for resource in store.folders(folder):
            listing = store.listing(f"{folder}/{resource}")
            newest = max([newest, *(info["mtime"] for info in listing.values())])
            validated = validated or any(name.endswith(_HTTP) for name in listing)
        if now - newest > max_age + (KEPT_FOR_REVALIDATION if validated else 0):
            store.remove(folder, recursive=True)
            removed.append(store.url_of(folder))
    return removed


class Progress(NamedTuple):
    """Pages of a run checkpointed so far (:func:`count_done`)."""

    pages: int
    rows: int
    revalidated: int


def count_done(
    store: Store,
    specs: list[ChunkSpec],
    keep_formulas: bool,
    max_age: float | None = None,
    since: float | None = None,
) -> Progress:
    """Pages of ``specs`` checkpointed so far, the rows they hold, and how many of them a
    ``304`` renewed after ``since`` (``time.time()``), for progress.

    One listing per resource folder, whoever wrote the pages (this process, Dask workers,
    another machine writing to the same store).
    """
    books: dict[str, tuple[PageBook, list[ChunkSpec]]] = {}
    for spec in specs:
        book = PageBook.of(store, spec, keep_formulas)
        books.setdefault(book.folder, (book, []))[1].append(spec)
    pages = rows = revalidated = 0
    for book, planned in books.values():
        scan = book.scan(max_age)
        for number, done in scan.done.items():
            if any(
                number >= s.first_page and (s.last_page is None or number <= s.last_page)
                for s in planned
            ):
                pages += 1
                rows += done.rows
                renewed = scan.renewed.get(number)
                revalidated += renewed is not None and (since is None or renewed >= since)
    return Progress(pages, rows, revalidated)
