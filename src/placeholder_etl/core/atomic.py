"""Atomic files on a local disk: write under a temporary name, fsync, rename.

The rule: nothing appears under a final name until it is complete and on disk. A temporary
name sits in the same directory (``.<name>.<tag>.tmp``) and carries the writer's tag
(:func:`~placeholder_etl.core.names.make_tag`), so a killed process's leftovers can be told
from a live one's files and removed (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from placeholder_etl.core.names import make_tag, pid_of_tag

__all__ = [
    "TEMP_SUFFIX",
    "atomic_write",
    "fsync_dir",
    "fsync_file",
    "remove_stale_temps",
    "run_is_gone",
]

TEMP_SUFFIX = ".tmp"


def fsync_file(handle: IO[bytes]) -> None:
    """Flush and fsync an open file."""
    handle.flush()
    os.fsync(handle.fileno())


def fsync_dir(directory: Path) -> None:
    """Fsync a directory, so the renames in it survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(
    path: Path, tag: str | None = None, exclusive: bool = False, sync: bool = True
) -> Iterator[IO[bytes]]:
    """Write ``path`` atomically: a temp file in the same directory, fsync, rename.

    If the block raises, the temp file is removed and ``path`` is left as it was. With
    ``exclusive`` the file is linked into place instead, which fails if ``path`` exists.
    ``sync=False`` skips the fsyncs: the rename still makes the file whole or absent for any
    reader and through a killed process, though not through a power cut.

    Raises:
        FileExistsError: ``exclusive`` and ``path`` exists.
    """
    tmp = path.with_name(f".{path.name}.{tag or make_tag()}{TEMP_SUFFIX}")
    try:
        with tmp.open("wb") as handle:
            yield handle
            if sync:
                fsync_file(handle)
        if exclusive:
            os.link(tmp, path)
            tmp.unlink()
        else:
            tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(path.parent)


def run_is_gone(tag: str, mtime: float, older_than: float) -> bool:
    """Whether the process that wrote a file tagged ``tag`` is gone.

    Its tag names this host: whether that process still runs. Else (another host, an
    unknown tag): whether the file has not changed for ``older_than`` seconds.
    """
    pid = pid_of_tag(tag)
    if pid is not None:
        return not _alive(pid)
    return time.time() - mtime >= older_than


def remove_stale_temps(directory: Path, older_than: float = 86_400.0) -> list[Path]:
    """Remove temporary files that killed runs left in ``directory`` (and its subfolders).

    A temp file is stale when the run named in its tag is gone (:func:`run_is_gone`); a run
    going on beside this one keeps its files.
    """
    if not directory.is_dir():
        return []
    removed = []
    for tmp in directory.rglob(f".*{TEMP_SUFFIX}"):
        tag = tmp.name.removesuffix(TEMP_SUFFIX).rsplit(".", 1)[-1]
        try:
            if run_is_gone(tag, tmp.stat().st_mtime, older_than):
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
