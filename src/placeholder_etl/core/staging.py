"""Loading: atomic files, part files joined into tables, and the commit of a run's files.

The rule: nothing appears under a final name until it is complete and on disk. Every file is
written under a temporary name in the same directory (``.<name>.<run>.tmp``), fsynced, and
renamed into place only when the whole run has succeeded; a failed run removes its temporary
files, and a killed run's leftovers are removed by the next run (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Self

__all__ = [
    "TEMP_SUFFIX",
    "Staging",
    "atomic_write",
    "concat_files",
    "fsync_file",
    "make_tag",
    "remove_stale_temps",
]

TEMP_SUFFIX = ".tmp"
LOCK_NAME = ".placeholder-etl.lock"
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
    tmp = path.with_name(f".{path.name}.{tag or make_tag()}{TEMP_SUFFIX}")
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


def make_tag() -> str:
    """A tag unique to this process and call: ``<host>-<pid>-<random>``.

    Temporary names carry it, so the next run can tell a dead process's leftovers (removed)
    from a live run's files (kept).
    """
    host = socket.gethostname().replace(".", "_").replace("-", "_")
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def utc_stamp() -> str:
    """The run timestamp used in file names: ``20261125T005503Z``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


@dataclass
class Staging:
    """Files of one run, written under temporary names, renamed together on :meth:`commit`.

    Final names are ``<key>_<stamp><suffix>``; the stamp is chosen at commit, under a lock on
    the output dir, so two runs committing at once get different stamps and never overwrite
    or interleave each other's files.

    Args:
        directory: the output directory (created on first use, removed again on
            :meth:`abort` if this run created it and it is still empty).
        run_tag: a unique tag of this run (:func:`make_tag`), part of every temporary name.
    """

    directory: Path
    run_tag: str = field(default_factory=make_tag)
    staged: dict[str, tuple[str, Path]] = field(default_factory=dict)
    _created_dir: bool = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        """Abort (remove this run's temporary files) when the block raised."""
        if exc_type is not None:
            self.abort()

    def temp_path(self, key: str, suffix: str = ".csv") -> Path:
        """Reserve the file ``<key>_<stamp><suffix>``; return the temporary path to write."""
        if not key.replace("_", "").isalnum():
            raise ValueError(f"output name {key!r} must be letters, digits and underscores")
        if not self.directory.exists():
            self.directory.mkdir(parents=True)
            self._created_dir = True
        tmp = self.directory / f".{key}{suffix}.{self.run_tag}{TEMP_SUFFIX}"
        self.staged[key] = (suffix, tmp)
        return tmp

    def commit(self, manifest: Callable[[str], bytes] | None = None) -> str:
        """Pick the stamp, write the manifest, rename every staged file into place.

        Args:
            manifest: called with the chosen stamp; its bytes become ``manifest_<stamp>.json``,
                written last, after the tables.

        Returns:
            The stamp of the committed files.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / LOCK_NAME).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stamp = self._free_stamp(manifest is not None)
            if manifest is not None:
                tmp = self.temp_path("manifest", ".json")
                with tmp.open("wb") as handle:
                    handle.write(manifest(stamp))
                    fsync_file(handle)
            done: list[tuple[Path, Path]] = []
            try:
                for key, (suffix, tmp) in self.staged.items():
                    final = self.directory / f"{key}_{stamp}{suffix}"
                    tmp.replace(final)
                    done.append((tmp, final))
                _fsync_dir(self.directory)
            except BaseException:
                _undo_renames(done)
                raise
        self.staged.clear()
        return stamp

    def _free_stamp(self, with_manifest: bool) -> str:
        names = {(key, suffix) for key, (suffix, _) in self.staged.items()}
        if with_manifest:
            names.add(("manifest", ".json"))
        base = stamp = utc_stamp()
        for n in itertools.count(2):
            if not any((self.directory / f"{k}_{stamp}{s}").exists() for k, s in names):
                return stamp
            stamp = f"{base}-{n}"
        raise AssertionError("unreachable")  # pragma: no cover

    def abort(self) -> None:
        """Remove this run's temporary files; the output dir is left as it was."""
        for _, tmp in self.staged.values():
            tmp.unlink(missing_ok=True)
        self.staged.clear()
        if self._created_dir:
            with suppress(OSError):
                self.directory.rmdir()


def _undo_renames(done: list[tuple[Path, Path]]) -> None:
    """Put files renamed by a commit that failed halfway back under their temporary names.

    Last renamed first; a file that cannot go back is removed, so no final name of the
    failed commit stays behind (the caller's :meth:`Staging.abort` removes the temporaries).
    """
    for tmp, final in reversed(done):
        try:
            final.replace(tmp)
        except OSError:
            with suppress(OSError):
                final.unlink()
    if done:
        with suppress(OSError):
            _fsync_dir(done[0][1].parent)


def fsync_file(handle: IO[bytes]) -> None:
    """Flush and fsync an open file."""
    handle.flush()
    os.fsync(handle.fileno())


def remove_stale_temps(directory: Path, older_than: float = 86_400.0) -> list[Path]:
    """Remove temporary files that killed runs left in ``directory`` (and its subfolders).

    A temp file is stale when the process named in its tag (:func:`make_tag`) is gone, or,
    when that cannot be told (another host, an unknown tag), when it has not changed for
    ``older_than`` seconds. A run going on beside this one keeps its files.
    """
    if not directory.is_dir():
        return []
    host = socket.gethostname().replace(".", "_").replace("-", "_")
    now = time.time()
    removed = []
    for tmp in directory.rglob(f".*{TEMP_SUFFIX}"):
        tag = tmp.name.removesuffix(TEMP_SUFFIX).rsplit(".", 1)[-1]
        tag_host, _, rest = tag.partition("-")
        pid = rest.partition("-")[0]
        try:
            if tag_host == host and pid.isdigit():
                stale = not _alive(int(pid))
            else:
                stale = now - tmp.stat().st_mtime >= older_than
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            continue
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's live process
        return True
    return True
