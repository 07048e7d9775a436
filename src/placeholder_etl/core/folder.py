"""A run's output in a local folder: temporary names renamed together under a lock.

Final names are ``<key>_<stamp><suffix>``; the stamp is chosen at commit, under a lock on the
folder, so two runs committing at once get different stamps and never overwrite or
interleave each other's files. A commit journals the names it is about to create, so a
process killed between two renames leaves a record the next run undoes (:func:`recover`).
"""

from __future__ import annotations

import fcntl
import itertools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar

from placeholder_etl.core.atomic import TEMP_SUFFIX, fsync_dir, fsync_file, remove_stale_temps
from placeholder_etl.core.names import MANIFEST, final_name, manifest_name, utc_stamp
from placeholder_etl.core.output import ManifestFor, Output, check_published
from placeholder_etl.core.results import StagedTable
from placeholder_etl.core.store import Store

__all__ = ["FolderOutput", "recover"]

LOCK_NAME = ".placeholder-etl.lock"
JOURNAL_PREFIX = ".placeholder-etl.commit."


@dataclass(frozen=True)
class FolderOutput(Output):
    """A run's tables in a local folder: temporary names, renamed together on :meth:`commit`.

    Args:
        directory: the output directory (created on first use, removed again on
            :meth:`abort` if it did not exist before and is still empty).
        run_tag: a unique tag of this run, part of every temporary name.
    """

    directory: Path
    existed: bool = field(init=False)

    #: Tables are assembled by the flow's own process (it can write this folder).
    assembles_on_runner: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "existed", self.directory.exists())

    @property
    def store(self) -> Store:
        """The output folder as a store (to read staged files back)."""
        return Store.open(str(self.directory))

    def _temp_path(self, key: str, suffix: str) -> str:
        return str(self.directory / f".{key}{suffix}.{self.run_tag}{TEMP_SUFFIX}")

    @contextmanager
    def open_table(self, key: str, suffix: str = ".csv") -> Iterator[IO[bytes]]:
        """Write the staged file of ``key`` (fsynced when the block ends)."""
        path = Path(self.staged_path(key, suffix))
        self.directory.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            yield handle
            fsync_file(handle)

    def remove_leftovers(self) -> list[str]:
        """Undo a commit a killed run left half done; remove dead runs' temporary files."""
        removed = recover(self.directory) + remove_stale_temps(self.directory)
        return [str(path) for path in removed]

    def commit(self, tables: Mapping[str, StagedTable], manifest: ManifestFor | None = None) -> str:
        """Pick the stamp under the folder's lock, rename every staged table into place,
        check them, rename the manifest into place last (see :meth:`Output.commit`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / LOCK_NAME).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stamp = self._free_stamp(tables, manifest is not None)
            finals = {
                key: (str(self.directory / final_name(key, stamp, staged.suffix)), staged)
                for key, staged in tables.items()
            }
            moves = [(Path(staged.path), Path(final)) for final, staged in finals.values()]
            manifest_tmp = Path(self.staged_path(MANIFEST, ".json"))
            if manifest is not None:
                moves.append((manifest_tmp, self.directory / manifest_name(stamp)))
            # A journal of the names this commit is about to create: a process killed
            # between two renames leaves it behind, and the next run's recover() removes
            # exactly those names (no manifest names them).
            journal = self.directory / f"{JOURNAL_PREFIX}{stamp}"
            done: list[tuple[Path, Path]] = []
            try:  # everything this commit creates is inside: a full disk leaves nothing
                if manifest is not None:
                    with manifest_tmp.open("wb") as handle:
                        handle.write(manifest(stamp))
                        fsync_file(handle)
                with journal.open("wb") as handle:
                    handle.write("\n".join(final.name for _, final in moves).encode())
                    fsync_file(handle)
                for tmp, final in moves[: len(finals)]:
                    tmp.replace(final)
                    done.append((tmp, final))
                fsync_dir(self.directory)
                check_published(finals, _local_size)  # before a manifest names them
                for tmp, final in moves[len(finals) :]:  # the manifest, last
                    tmp.replace(final)
                    done.append((tmp, final))
                    fsync_dir(self.directory)
            except BaseException:
                _undo_renames(done)
                journal.unlink(missing_ok=True)
                manifest_tmp.unlink(missing_ok=True)
                raise
            journal.unlink()
            fsync_dir(self.directory)
        return stamp

    def _free_stamp(self, tables: Mapping[str, StagedTable], with_manifest: bool) -> str:
        names = {(key, staged.suffix) for key, staged in tables.items()}
        if with_manifest:
            names.add((MANIFEST, ".json"))
        base = stamp = utc_stamp()
        for n in itertools.count(2):
            if not any((self.directory / final_name(k, stamp, s)).exists() for k, s in names):
                return stamp
            stamp = f"{base}-{n}"
        raise AssertionError("unreachable")  # pragma: no cover

    def abort(self) -> None:
        """Remove this run's temporary files; the output dir is left as it was."""
        if not self.directory.is_dir():
            return
        for tmp in self.directory.glob(f".*.{self.run_tag}{TEMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        if not self.existed:
            with suppress(OSError):
                self.directory.rmdir()


def _local_size(path: str) -> int | None:
    try:
        return Path(path).stat().st_size
    except FileNotFoundError:
        return None


def recover(directory: Path) -> list[Path]:
    """Undo commits a killed process left half done in ``directory`` (under the lock).

    A commit journals the final names it is about to create; a journal still there means
    the process died between two renames: every name it lists whose stamp has no manifest is
    removed (a journal whose manifest exists only lost its own removal).

    Returns:
        The files removed.
    """
    if not directory.is_dir() or not any(directory.glob(f"{JOURNAL_PREFIX}*")):
        return []  # nothing to undo (and no lock file made in an output dir that had none)
    removed = []
    with (directory / LOCK_NAME).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for journal in sorted(directory.glob(f"{JOURNAL_PREFIX}*")):
            stamp = journal.name.removeprefix(JOURNAL_PREFIX)
            if not (directory / manifest_name(stamp)).exists():
                for name in journal.read_text().splitlines():
                    path = directory / name
                    if name and path.parent == directory and path.exists():
                        path.unlink()
                        removed.append(path)
            journal.unlink()
        if removed:
            fsync_dir(directory)
    return removed


def _undo_renames(done: list[tuple[Path, Path]]) -> None:
    """Put files renamed by a commit that failed halfway back under their temporary names.

    Last renamed first; a file that cannot go back is removed, so no final name of the
    failed commit stays behind (the caller's :meth:`FolderOutput.abort` removes the
    temporaries).
    """
    for tmp, final in reversed(done):
        try:
            final.replace(tmp)
        except OSError:
            with suppress(OSError):
                final.unlink()
    if done:
        with suppress(OSError):
            fsync_dir(done[0][1].parent)
