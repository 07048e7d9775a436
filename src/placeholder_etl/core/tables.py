"""Output tables from page files: CSV joined byte for byte, or Parquet with real types.

Every function streams: a table is never held in memory (the de-duplicating path for pages
whose ids came out of order aside, and the per-user activity summary, which reads only a
few columns). Pages are read through a :class:`~placeholder_etl.core.store.Store`, so they
may live on this machine's disk or on an object store; the written bytes are hashed on the
way out, so the manifest's sha256 needs no second read.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.names import TableFormat
from placeholder_etl.core.resources import ACTIVITY_TABLE
from placeholder_etl.core.results import TableInfo
from placeholder_etl.core.rows import FLAT_COLUMNS, SEED_COLUMNS, csv_header
from placeholder_etl.core.schema import column_kinds
from placeholder_etl.core.store import Store

__all__ = ["ACTIVITY_INPUTS", "SUFFIX", "build_activity", "write_table"]

SUFFIX: dict[str, str] = {"csv": ".csv", "parquet": ".parquet"}
_BLOCK = 1 << 20

#: Columns that are not text (for Parquet), from the schema; coordinates are floats.
_KINDS = column_kinds()
_INTEGERS = {column for column, kind in _KINDS.items() if kind == "int"}
_FLOATS = {column for column, kind in _KINDS.items() if kind == "coordinate"}
_BOOLS = {column for column, kind in _KINDS.items() if kind == "bool"}


def table_header(table: str) -> bytes:
    """The CSV header line of an output table."""
    return csv_header(columns(table))


def columns(table: str) -> tuple[str, ...]:
    """The columns of an output table."""
    if table == "users":
        return SEED_COLUMNS
    return FLAT_COLUMNS[table.removesuffix("_flat")]


class _Hashing:
    """A write-only stream that counts and hashes what passes through to ``out``."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.size, self.digest = out, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()

    def tell(self) -> int:
        return self.size

    @property
    def closed(self) -> bool:
        return False

    def info(self, rows: int) -> TableInfo:
        return TableInfo(rows=rows, bytes=self.size, sha256=self.digest.hexdigest())


def _blocks(store: Store, parts: Sequence[str]) -> Iterator[bytes]:
    for part in parts:
        with store.open_read(part) as handle:
            while block := handle.read(_BLOCK):
                yield block


class _Chained(io.RawIOBase):
    """The page files, end to end, as one readable stream (for Arrow's CSV reader)."""

    def __init__(self, header: bytes, blocks: Iterator[bytes]) -> None:
        self._pending, self._blocks = header, blocks

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._blocks, b"")
            if not self._pending:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def write_table(
    table: str,
    store: Store,
    parts: Sequence[str],
    out: IO[bytes],
    rows: int,
    fmt: TableFormat = "csv",
    ordered: bool = True,
) -> TableInfo:
    """Write ``table`` from its page files (in page order) to ``out``.

    Args:
        table: the output table (decides the header and the column types).
        store: where the page files are.
        parts: the page files, in page order.
        out: a binary stream to write the table to.
        rows: the records in the pages, as counted while fetching them.
        fmt: ``csv`` (the header, then the pages byte for byte) or ``parquet``.
        ordered: whether ids rose strictly across the pages; if not, the table is sorted by
            id and de-duplicated (the first occurrence wins).
    """
    sink = _Hashing(out)
    if not ordered:
        frame = _sorted_frame(table, store, parts)
        rows = len(frame)
        if fmt == "csv":
            sink.write(table_header(table) + frame.to_csv(index=False, header=False).encode())
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
        return sink.info(rows)
    if fmt == "csv":
        sink.write(table_header(table))
        for block in _blocks(store, parts):
            sink.write(block)
        return sink.info(rows)
    _write_parquet(table, _Chained(table_header(table), _blocks(store, parts)), sink)
    return sink.info(rows)


def _arrow_types(table: str) -> dict[str, Any]:
    import pyarrow as pa

    types = {}
    for column in columns(table):
        if column in _INTEGERS:
            types[column] = pa.int64()
        elif column in _FLOATS:
            types[column] = pa.float64()
        elif column in _BOOLS:
            types[column] = pa.bool_()
        else:
            types[column] = pa.string()
    return types


def _write_parquet(table: str, source: IO[bytes], sink: Any) -> None:
    """CSV rows from ``source`` to Parquet, one batch at a time (bounded memory)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    types = _arrow_types(table)
    reader = pcsv.open_csv(
        source,
        read_options=pcsv.ReadOptions(block_size=4 << 20),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types=types,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            true_values=["True"],
            false_values=["False"],
        ),
    )
    with pq.ParquetWriter(sink, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)


def _sorted_frame(table: str, store: Store, parts: Sequence[str]) -> Any:
    """The table's rows sorted by id, each id once (first occurrence wins)."""
    import pandas as pd

    names = list(columns(table))
    frames = []
    for part in parts:
        with store.open_read(part) as handle:
            data = handle.read()
        if data:
            buffer = io.BytesIO(data)
            frame = pd.read_csv(buffer, header=None, names=names, dtype=str, keep_default_na=False)
            frames.append(frame)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=names)
    id_column = "ID" if table == "users" else "id"
    frame = frame.assign(_id=frame[id_column].astype("int64"))
    frame = frame.drop_duplicates("_id").sort_values("_id", kind="stable").drop(columns="_id")
    for column, kind in _pandas_types(table).items():
        if kind == "bool":  # the text "False" is not false to astype(bool)
            frame[column] = frame[column].map({"True": True, "False": False}).astype("bool")
        else:
            frame[column] = frame[column].astype(kind)
    return frame


def _pandas_types(table: str) -> dict[str, str]:
    kinds = {}
    for column in columns(table):
        if column in _INTEGERS:
            kinds[column] = "int64"
        elif column in _FLOATS:
            kinds[column] = "float64"
        elif column in _BOOLS:
            kinds[column] = "bool"
    return kinds


#: The flattened tables the activity summary reads, and the columns it reads of each.
ACTIVITY_INPUTS: dict[str, list[str]] = {
    "users_flat": ["id", "name"],
    "posts": ["user_id", "id"],
    "comments": ["post_id", "id"],
    "todos": ["user_id", "id", "completed"],
    "albums": ["user_id", "id"],
    "photos": ["album_id", "id"],
}


def build_activity(
    store: Store, flat_tables: Mapping[str, str], out: IO[bytes], fmt: TableFormat = "csv"
) -> TableInfo:
    """Write the per-user activity summary from the flattened tables.

    Args:
        store: where the tables are.
        flat_tables: paths of ``users_flat``, ``posts``, ``comments``, ``todos``, ``albums``
            and ``photos`` on ``store`` (only ids, the user's name and ``completed`` are read).
        out: where to write the summary.
        fmt: the tables' format, and the summary's.
    """
    import pandas as pd

    from placeholder_etl.core.transform import summarize_activity

    frames = {}
    for table, wanted in ACTIVITY_INPUTS.items():
        with store.open_read(flat_tables[table]) as handle:
            if fmt == "csv":
                frames[table] = pd.read_csv(handle, usecols=wanted)
            else:
                frames[table] = pd.read_parquet(handle, columns=wanted)
    summary = summarize_activity(
        frames["users_flat"],
        frames["posts"],
        frames["comments"],
        frames["todos"],
        frames["albums"],
        frames["photos"],
    )
    if summary.empty:
        raise PermanentError(f"{ACTIVITY_TABLE}: no users to summarise")
    sink = _Hashing(out)
    if fmt == "csv":
        sink.write(summary.to_csv(index=False).encode())
    else:
        summary.to_parquet(sink, index=False)
    return sink.info(len(summary))
