"""Page checkpoints: every page's rows are durable as soon as the page is checked.

A checked page is written at once, one file per output table, then a *marker* whose name
carries what the page held (``p0000012.done.1000.11001.12000.o``: rows, first and last id,
whether ids rose strictly). A page counts as done only when its marker exists, so a page half
written by a killed process is fetched again; one written twice (a retry, a resumed run, Dask
rerunning a lost worker's task) is the same file written twice, so every row is kept once.

Checkpoints live under ``<cache>/pages/<version>/<resource>/``. The version is a hash of what
decides a page's rows — the API, the resource, its ``X-Total-Count``, page size, paging and
formula setting — so a changed total (the data changed) starts a fresh set, never mixing two
versions of the data; checkpoints older than the cache window are not reused
(:func:`expire`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from placeholder_etl.core.fastpath import PageTables
from placeholder_etl.core.resources import TABLES
from placeholder_etl.core.results import ChunkSpec
from placeholder_etl.core.store import Store

__all__ = ["Done", "PageBook", "count_done", "expire"]

_ORDERED = {"o": True, "u": False}


@dataclass(frozen=True, slots=True)
class Done:
    """What a checkpointed page held (read back from its marker's name)."""

    number: int
    rows: int
    first_id: int | None
    last_id: int | None
    ordered: bool

    def marker(self) -> str:
        """The marker's file name."""
        first = "-" if self.first_id is None else self.first_id
        last = "-" if self.last_id is None else self.last_id
        flag = "o" if self.ordered else "u"
        return f"p{self.number:07d}.done.{self.rows}.{first}.{last}.{flag}"

    @classmethod
    def parse(cls, name: str) -> Done | None:
        """The page a marker name describes (None: not a marker)."""
        parts = name.split(".")
        if len(parts) != 6 or parts[1] != "done" or parts[5] not in _ORDERED:
            return None
        try:
            first = None if parts[3] == "-" else int(parts[3])
            last = None if parts[4] == "-" else int(parts[4])
            return cls(int(parts[0][1:]), int(parts[2]), first, last, _ORDERED[parts[5]])
        except ValueError:
            return None


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

    def done(self, max_age: float | None = None) -> dict[int, Done]:
        """Pages whose checkpoint is complete (and younger than ``max_age`` seconds)."""
        oldest = time.time() - max_age if max_age is not None else None
        found = {}
        for name, info in self.store.listing(self.folder).items():
            done = Done.parse(name)
            if done is not None and (oldest is None or info["mtime"] >= oldest):
                found[done.number] = done
        return found

    def write(self, number: int, page: PageTables) -> Done:
        """Make page ``number`` durable: its tables' files, then its marker."""
        for table in self.tables:  # whole or absent through a kill; no fsync per page
            self.store.put(self.file(number, table), page.tables[table], sync=False)
        done = Done(number, page.rows, page.first_id, page.last_id, page.ordered)
        self.store.put(f"{self.folder}/{done.marker()}", b"", sync=False)
        return done


def expire(store: Store, max_age: float) -> list[str]:
    """Remove checkpoint versions whose newest page is older than ``max_age`` seconds.

    Returns:
        The folders removed.
    """
    root = store.path("pages")
    oldest = time.time() - max_age
    removed = []
    for version in store.folders(root):
        folder = f"{root}/{version}"
        newest = 0.0
        for resource in store.folders(folder):
            times = [i["mtime"] for i in store.listing(f"{folder}/{resource}").values()]
            newest = max([newest, *times])
        if newest < oldest:
            store.remove(folder, recursive=True)
            removed.append(store.url_of(folder))
    return removed


def count_done(
    store: Store, specs: list[ChunkSpec], keep_formulas: bool, max_age: float | None = None
) -> tuple[int, int]:
    """Pages of ``specs`` checkpointed so far, and the rows they hold (for progress).

    One listing per resource folder, whoever wrote the pages (this process, Dask workers,
    another machine writing to the same store).
    """
    books: dict[str, tuple[PageBook, list[ChunkSpec]]] = {}
    for spec in specs:
        book = PageBook.of(store, spec, keep_formulas)
        books.setdefault(book.folder, (book, []))[1].append(spec)
    pages = rows = 0
    for book, planned in books.values():
        for number, done in book.done(max_age).items():
            if any(
                number >= s.first_page and (s.last_page is None or number <= s.last_page)
                for s in planned
            ):
                pages += 1
                rows += done.rows
    return pages, rows
