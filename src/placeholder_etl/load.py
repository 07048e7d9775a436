"""Loading: atomic files, part files joined into tables, and the run manifest.

The rule: nothing appears under a final name until it is complete and on disk. Every file is
written under a temporary name in the same directory (``.<name>.<run>.tmp``), fsynced, and
renamed into place only when the whole run has succeeded; a failed run removes its temporary
files, and a killed run's leftovers are removed by the next run (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

__all__ = [
    "TEMP_SUFFIX",
    "Staging",
    "atomic_write",
    "concat_files",
    "remove_stale_temps",
    "sha256_file",
]

TEMP_SUFFIX = ".tmp"
_COPY_CHUNK = 1 << 20


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: Path, tag: str | None = None) -> Iterator[IO[bytes]]:
    """Write ``path`` atomically: a temp file in the same directory, fsync, rename.

    If the block raises, the temp file is removed and ``path`` is left as it was.
    """
    tmp = path.with_name(f".{path.name}.{tag or os.getpid()}{TEMP_SUFFIX}")
    try:
        with tmp.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def concat_files(header: bytes, parts: Iterable[Path], out: IO[bytes]) -> tuple[str, int]:
    """Write ``header`` then every part file to ``out``; return (sha256, bytes written).

    Files are copied in 1 MiB blocks: memory stays flat however big the table.
    """
    digest = hashlib.sha256(header)
    out.write(header)
    size = len(header)
    for part in parts:
        with part.open("rb") as handle:
            while block := handle.read(_COPY_CHUNK):
                digest.update(block)
                out.write(block)
                size += len(block)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_COPY_CHUNK):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Staging:
    """Files of one run, written under temporary names, renamed together on :meth:`commit`.

    Args:
        directory: the output directory (created on first use, removed again on
            :meth:`abort` if this run created it and it is still empty).
        run_tag: a unique tag of this run, part of every temporary name.
    """

    directory: Path
    run_tag: str
    staged: dict[Path, Path] = field(default_factory=dict)
    _created_dir: bool = False

    def temp_path(self, final_name: str) -> Path:
        """Reserve ``final_name`` in the output dir; return the temporary path to write."""
        if Path(final_name).name != final_name or final_name.startswith("."):
            raise ValueError(f"output name {final_name!r} must be a plain file name")
        if not self.directory.exists():
            self.directory.mkdir(parents=True)
            self._created_dir = True
        final = self.directory / final_name
        tmp = self.directory / f".{final_name}.{self.run_tag}{TEMP_SUFFIX}"
        self.staged[final] = tmp
        return tmp

    def write_bytes(self, final_name: str, data: bytes) -> Path:
        """Stage a small file (a manifest) in one go; returns its final path."""
        tmp = self.temp_path(final_name)
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return self.directory / final_name

    def commit(self) -> list[Path]:
        """Rename every staged file into place (files are fsynced before, the dir after)."""
        for final in self.staged:
            if final.exists():
                raise FileExistsError(f"{final} exists already: refusing to overwrite it")
        for final, tmp in self.staged.items():
            tmp.replace(final)
        _fsync_dir(self.directory)
        committed = list(self.staged)
        self.staged.clear()
        return committed

    def abort(self) -> None:
        """Remove this run's temporary files; the output dir is left as it was."""
        for tmp in self.staged.values():
            tmp.unlink(missing_ok=True)
        self.staged.clear()
        if self._created_dir:
            with suppress(OSError):
                self.directory.rmdir()


def fsync_file(handle: IO[bytes]) -> None:
    """Flush and fsync an open file."""
    handle.flush()
    os.fsync(handle.fileno())


def remove_stale_temps(directory: Path, older_than: float = 0.0) -> list[Path]:
    """Remove temporary files a killed run left in ``directory``.

    Args:
        directory: an output or cache directory.
        older_than: only remove temps whose last change is at least this many seconds ago
            (so a run going on beside this one keeps its files).
    """
    if not directory.is_dir():
        return []
    now = time.time()
    removed = []
    for tmp in directory.glob(f".*{TEMP_SUFFIX}"):
        with suppress(FileNotFoundError):
            if now - tmp.stat().st_mtime >= older_than:
                tmp.unlink()
                removed.append(tmp)
    return removed


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The manifest as indented, key-sorted JSON."""
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
