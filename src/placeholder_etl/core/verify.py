"""Check a run's output against its manifest: every table there, whole, as recorded.

For readers of the output (``placeholder-etl verify``), for the tests and the benchmarks:
each table the manifest names must exist with the recorded size, sha256 and row count. Works
on a local folder and on any fsspec URL (``s3://bucket/run``); tables are streamed, never
held in memory.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field

from placeholder_etl.core.results import Manifest, TableInfo
from placeholder_etl.core.store import Store

__all__ = ["verify_output"]

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Verified:
    """What :func:`verify_output` found.

    Attributes:
        manifest_file: the manifest checked against (a path or URL).
        manifest: its contents.
        problems: one sentence per table that is not as recorded, naming its file.
    """

    manifest_file: str
    manifest: Manifest
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_output(output: str, manifest: str | None = None) -> Verified:
    """Check every table of ``output``'s newest manifest (or of ``manifest``).

    Args:
        output: the output folder (a path or fsspec URL).
        manifest: a manifest file name in ``output``, or its path or URL (default: the newest).

    Raises:
        FileNotFoundError: no manifest in ``output`` (or ``manifest`` does not exist).
        pydantic.ValidationError: the manifest is not one this version can read.
    """
    folder = Store.open(output)
    if manifest is None:
        url = folder.url_of(Manifest.newest_path(folder))
    elif "/" in manifest:  # a path or URL of its own: the tables are beside it
        url = manifest
        folder = Store.open(manifest.rsplit("/", 1)[0])
    else:
        url = folder.url_of(folder.path(manifest))
    read = Manifest.read(url)
    problems = [
        problem
        for info in read.tables.values()
        if (problem := check_table(folder, info, read.format)) is not None
    ]
    return Verified(manifest_file=url, manifest=read, problems=problems)


def check_table(store: Store, info: TableInfo, fmt: str) -> str | None:
    """One table against its manifest entry: None when it is as recorded, else the problem."""
    path = store.path(info.file)
    size = store.size(path)
    if size is None:
        return f"{info.file}: missing"
    if size != info.bytes:
        return f"{info.file}: {size:,} bytes, the manifest says {info.bytes:,}"
    digest = hashlib.sha256()
    rows = _csv_rows(store, path, digest) if fmt == "csv" else _parquet_rows(store, path, digest)
    if digest.hexdigest() != info.sha256:
        return f"{info.file}: its sha256 differs from the manifest's (the bytes changed)"
    if rows is None:
        return f"{info.file}: cannot be read as {fmt}"
    if rows != info.rows:
        return f"{info.file}: {rows:,} rows, the manifest says {info.rows:,}"
    return None


def _hashed_blocks(store: Store, path: str, digest: hashlib._Hash) -> Iterator[bytes]:
    with store.open_read(path) as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
            yield block


def _csv_rows(store: Store, path: str, digest: hashlib._Hash) -> int | None:
    """Records in a CSV table (quoted newlines count once), hashing every byte on the way.

    None when Arrow cannot parse it.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from placeholder_etl.core.tables import _Chained

    blocks = _hashed_blocks(store, path, digest)
    first = next(blocks, b"")
    header = first.split(b"\n", 1)[0].decode("utf-8", "replace")
    names = next(csv.reader(io.StringIO(header)), [])
    rows: int | None = 0
    if names:  # only the first column is converted (as text): counting, not typing
        stream = _Chained(first, blocks)
        try:
            reader = pcsv.open_csv(
                stream,
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(
                    include_columns=[names[0]], column_types={names[0]: pa.string()}
                ),
            )
            rows = sum(batch.num_rows for batch in reader)
        except pa.ArrowInvalid:
            rows = None
    for _ in blocks:  # hash whatever the parser did not read
        pass
    return rows


def _parquet_rows(store: Store, path: str, digest: hashlib._Hash) -> int | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for _ in _hashed_blocks(store, path, digest):
        pass
    try:
        with store.open_read(path) as handle:
            return pq.ParquetFile(handle).metadata.num_rows
    except pa.ArrowInvalid:
        return None
