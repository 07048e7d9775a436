"""Damaged page checkpoints are fetched again, never trusted: in a chunk, and in a whole rerun.

One cached page gets bytes flipped in place (its size unchanged), one is truncated, and one
loses a file while its marker stays; the run after that fetches exactly those pages again,
says so once each, and writes the tables a clean run wrote.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from placeholder_etl.core.extract import extract_chunk
from placeholder_etl.core.pages import PageBook
from placeholder_etl.core.results import ChunkSpec
from placeholder_etl.core.store import Store
from tests.helpers import run_flow, run_logs


def flip(path: Path, at: int = 40) -> None:
    """Flip the bits of one byte in place: the size stays, the content does not."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def damage(book: PageBook) -> None:
    """Page 2 flipped, page 3 truncated, page 5 missing a file (its marker kept)."""
    flip(Path(book.file(2, "users")))
    flat = Path(book.file(3, "users_flat"))
    flat.write_bytes(flat.read_bytes()[: flat.stat().st_size // 2])
    Path(book.file(5, "users_flat")).unlink()
    assert len(list(Path(book.folder).glob("*.done.*"))) == 5


def fetched_pages(api) -> list[int]:
    """Pages of users the API served since its stats were reset (the count is page 1 of 1)."""
    pages = [
        int(entry["path"].split("_page=")[1].split("&")[0])
        for entry in api.log()
        if "_limit=5" in entry["path"]
    ]
    return sorted(pages)


def test_a_chunk_fetches_its_damaged_pages_again(api, tmp_path) -> None:
    cache = Store.open(str(tmp_path / "cache"))
    spec = ChunkSpec(
        api_url=api.url, resource="users", first_page=1, last_page=5, page_size=5, total=25
    )
    first = extract_chunk(spec, cache)
    parts = {t: [Path(p).read_bytes() for p in paths] for t, paths in first.parts.items()}
    damage(PageBook.of(cache, spec, False))
    api.reset_stats()

    again = extract_chunk(spec, cache)
    assert again.pages_damaged == {2: "damaged", 3: "damaged", 5: "missing"}
    assert (again.pages, again.pages_reused, again.rows) == (5, 2, 25)
    assert fetched_pages(api) == [2, 3, 5]
    assert {t: [Path(p).read_bytes() for p in paths] for t, paths in again.parts.items()} == parts

    api.reset_stats()
    third = extract_chunk(spec, cache)  # whole again: reused, nothing said
    assert (third.pages_reused, third.pages_damaged, fetched_pages(api)) == (5, {}, [])


@pytest.mark.usefixtures("prefect_api_url")
def test_a_rerun_fetches_damaged_cached_pages_again_and_says_which(api, tmp_path) -> None:
    """On the CLI's default runner (Dask) with its default pages per task; the rerun's chunks
    are served from Prefect's cache, so the flow finds the damage and runs them again."""
    cache = tmp_path / "cache"
    options = {"runner": "dask", "page_size": 5, "pages_per_task": None}
    clean = run_flow(api.url, tmp_path / "a", cache, **options).manifest
    spec = ChunkSpec(
        api_url=api.url, resource="users", first_page=1, last_page=5, page_size=5, total=25
    )
    damage(PageBook.of(Store.open(str(cache)), spec, False))
    api.reset_stats()

    rerun = run_flow(api.url, tmp_path / "b", cache, **options)
    manifest = rerun.manifest
    assert fetched_pages(api) == [2, 3, 5]
    assert (manifest.pages, manifest.pages_fetched, manifest.pages_reused) == (5, 3, 2)
    for table, info in clean.tables.items():
        again = manifest.tables[table]
        assert (again.rows, again.bytes, again.sha256) == (info.rows, info.bytes, info.sha256)
        written = (tmp_path / "b" / again.file).read_bytes()
        assert written == (tmp_path / "a" / info.file).read_bytes()
    logs = run_logs(manifest.flow_run_id)
    said = [line for line in logs.splitlines() if "cached copy" in line]
    assert said == [
        "users page 2: cached copy damaged, fetching again",
        "users page 3: cached copy damaged, fetching again",
        "users page 5: cached copy missing, fetching again",
    ]
