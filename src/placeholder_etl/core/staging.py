"""Loading: atomic files, part files joined into tables, and the commit of a run's files.

The rule: nothing appears under a final name until it is complete and on disk. Every file is
written under a temporary name in the same directory (``.<name>.<run>.tmp``), fsynced, and
renamed into place only when the whole run has succeeded; a failed run removes its temporary
files, and a killed run's leftovers are removed by the next run (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, ClassVar, Self

from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.names import MANIFEST, final_name, manifest_name
from placeholder_etl.core.results import StagedTable
from placeholder_etl.core.store import Store

SizeOf = Callable[[str], "int | None"]

__all__ = [
    "CommitError",
    "ObjectStaging",
    "Staging",
    "atomic_write",
    "make_tag",
    "recover",
    "remove_stale_temps",
]

TEMP_SUFFIX = ".tmp"
LOCK_NAME = ".placeholder-etl.lock"
JOURNAL_PREFIX = ".placeholder-etl.commit."


def _fsync_dir(directory: Path) -> None:
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
        _fsync_dir(path.parent)


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


class CommitError(PermanentError):
    """A table the commit was about to name in a manifest is missing or has the wrong size."""


def check_published(finals: Mapping[str, tuple[str, StagedTable]], size_of: SizeOf) -> None:
    """Check every table under its final name has the size it was written with.

    Args:
        finals: table -> (its final path, what was staged).
        size_of: the size of a path (None: it does not exist).

    Raises:
        CommitError: naming the first table that is missing or short.
    """
    for table, (final, staged) in finals.items():
        size = size_of(final)
        if size is None:
            raise CommitError(
                f"{table}: {final} is missing after the commit; nothing was committed"
            )
        if size != staged.bytes:
            raise CommitError(
                f"{table}: {final} holds {size:,} bytes after the commit, {staged.bytes:,} were "
                "written; nothing was committed"
            )


@dataclass(frozen=True)
class Staging:
    """A run's tables in a local folder: temporary names, renamed together on :meth:`commit`.

    Final names are ``<key>_<stamp><suffix>``; the stamp is chosen at commit, under a lock on
    the output dir, so two runs committing at once get different stamps and never overwrite
    or interleave each other's files. The object holds no state that changes: what was
    staged is what :meth:`open_table`'s caller returns (:class:`StagedTable`), and the
    commit takes it as its argument.

    Args:
        directory: the output directory (created on first use, removed again on
            :meth:`abort` if it did not exist before and is still empty).
        run_tag: a unique tag of this run (:func:`make_tag`), part of every temporary name.
    """

    directory: Path
    run_tag: str = field(default_factory=make_tag)
    existed: bool = field(init=False)

    #: Tables are assembled by the flow's own process (it can write this folder).
    assembles_on_runner: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "existed", self.directory.exists())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        """Abort (remove this run's temporary files) when the block raised."""
        if exc_type is not None:
            self.abort()

    @property
    def store(self) -> Store:
        """The output folder as a store (to read staged files back)."""
        return Store.open(str(self.directory))

    def staged_path(self, key: str, suffix: str = ".csv") -> str:
        """Where the staged file of ``key`` is written (and read back before the commit)."""
        if not key.replace("_", "").isalnum():
            raise ValueError(f"output name {key!r} must be letters, digits and underscores")
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

    def commit(
        self,
        tables: Mapping[str, StagedTable],
        manifest: Callable[[str], bytes] | None = None,
    ) -> str:
        """Pick the stamp, rename every staged table into place, check them, write the
        manifest last.

        Args:
            tables: what was staged (:meth:`open_table`), by table name.
            manifest: called with the chosen stamp; its bytes become ``manifest_<stamp>.json``,
                renamed into place last, once every table is checked under its final name.

        Returns:
            The stamp of the committed files.

        Raises:
            CommitError: a table is missing or short under its final name (every rename is
                undone, the manifest is not written).
        """
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
                _fsync_dir(self.directory)
                check_published(finals, _local_size)  # before a manifest names them
                for tmp, final in moves[len(finals) :]:  # the manifest, last
                    tmp.replace(final)
                    done.append((tmp, final))
                    _fsync_dir(self.directory)
            except BaseException:
                _undo_renames(done)
                journal.unlink(missing_ok=True)
                manifest_tmp.unlink(missing_ok=True)
                raise
            journal.unlink()
            _fsync_dir(self.directory)
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
            _fsync_dir(directory)
    return removed


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


#: The folder of an object-store output that holds runs' staging and stamp claims.
CONTROL = "_placeholder_etl"


@dataclass(frozen=True)
class ObjectStaging:
    """A run's tables on an object store, staged, then published with the manifest last.

    An object store has no rename and no lock, so a run (1) writes its tables under
    ``_placeholder_etl/staging/<run tag>/``, where nothing is final, (2) claims its stamp by
    creating ``_placeholder_etl/runs/<stamp>.json`` only if it does not exist (``If-None-Match``:
    two runs never share a stamp), (3) copies every table to its final name
    ``<table>_<stamp>.<ext>`` (a server-side copy) and checks each copy's size (one HEAD
    each), (4) writes ``manifest_<stamp>.json`` last, also only if absent: the manifest is the
    commit marker, and (5) removes its staging and its claim. A reader trusts a stamp only
    once its manifest exists: before that, final names of the stamp may exist (during step
    3), but no manifest names them. A run that fails removes its staging (and any final names
    it had copied); a killed run's staging and claim are removed by the next run
    (:func:`remove_dead_runs`).

    The tables may be written anywhere (a Dask worker writes them from the page cache, so the
    flow's process never holds rows): the object holds no state that changes, and the
    commit takes what was staged (:class:`StagedTable`) as its argument.

    Args:
        store: the output folder.
        run_tag: this run's tag (:func:`make_tag`).
    """

    store: Store
    run_tag: str = field(default_factory=make_tag)

    #: Tables are assembled by a task on the task runner: no rows pass through the flow.
    assembles_on_runner: ClassVar[bool] = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None:
            self.abort()

    def _staging_folder(self) -> str:
        return self.store.path(CONTROL, "staging", self.run_tag)

    def staged_path(self, key: str, suffix: str = ".csv") -> str:
        """Where the staged object of ``key`` is written (and read back before the commit)."""
        if not key.replace("_", "").isalnum():
            raise ValueError(f"output name {key!r} must be letters, digits and underscores")
        return f"{self._staging_folder()}/{key}{suffix}"

    @contextmanager
    def open_table(self, key: str, suffix: str = ".csv") -> Iterator[IO[bytes]]:
        """Write the staged object of ``key`` (it appears only if the block ends well)."""
        with self.store.open_write(self.staged_path(key, suffix)) as handle:
            yield handle

    def remove_leftovers(self) -> list[str]:
        """Remove dead runs' staging and unfinished stamp claims."""
        return remove_dead_runs(self.store)

    def commit(
        self,
        tables: Mapping[str, StagedTable],
        manifest: Callable[[str], bytes] | None = None,
    ) -> str:
        """Claim a stamp, publish every staged table, check them, write the manifest last.

        Returns:
            The stamp of the committed files.

        Raises:
            CommitError: a published table is missing or short (what was published is
                removed again, the manifest is not written).
        """
        claim, stamp = self._claim()
        published: list[str] = []
        try:
            finals = {}
            for key, staged in tables.items():
                final = self.store.path(final_name(key, stamp, staged.suffix))
                published.append(final)
                self.store.copy(staged.path, final)
                finals[key] = (final, staged)
            check_published(finals, self.store.size)
            if manifest is not None:
                final = self.store.path(manifest_name(stamp))
                self.store.put(final, manifest(stamp), exclusive=True)
        except BaseException:
            for final in published:  # nothing of a failed commit stays under a final name
                self.store.remove(final)
            self.store.remove(claim)
            raise
        self.abort()
        self.store.remove(claim)
        return stamp

    def _claim(self) -> tuple[str, str]:
        body = f'{{"run": "{self.run_tag}"}}\n'.encode()
        base = stamp = utc_stamp()
        for n in itertools.count(2):
            claim = self.store.path(CONTROL, "runs", f"{stamp}.json")
            taken = self.store.exists(self.store.path(manifest_name(stamp)))
            if not taken:
                try:
                    self.store.put(claim, body, exclusive=True)
                    return claim, stamp
                except FileExistsError:
                    pass
            stamp = f"{base}-{n}"
        raise AssertionError("unreachable")  # pragma: no cover

    def abort(self) -> None:
        """Remove this run's staged objects; final names are left as they were."""
        self.store.remove(self._staging_folder(), recursive=True)


def remove_dead_runs(store: Store, older_than: float = 86_400.0) -> list[str]:
    """Remove what killed runs left in an object-store output: staging and stamp claims.

    A run is dead when its tag (:func:`make_tag`) names this host and a process that is gone,
    or, when that cannot be told, when its files are older than ``older_than`` seconds. For a
    dead run's unfinished claim, the final names of that stamp (a kill during the publish) are
    removed too: no manifest names them.

    Returns:
        What was removed, as URLs.
    """
    removed = []
    staging = store.path(CONTROL, "staging")
    for tag in store.folders(staging):
        listing = store.listing(f"{staging}/{tag}")
        newest = max((info["mtime"] for info in listing.values()), default=0.0)
        if _dead(tag, newest, older_than):
            store.remove(f"{staging}/{tag}", recursive=True)
            removed.append(store.url_of(f"{staging}/{tag}"))
    runs = store.path(CONTROL, "runs")
    finals = store.listing(store.root)
    for name, info in store.listing(runs).items():
        stamp = name.removesuffix(".json")
        tag = _claim_tag(store, f"{runs}/{name}")
        if manifest_name(stamp) in finals or not _dead(tag, info["mtime"], older_than):
            continue
        for final in finals:
            if final.rsplit(".", 1)[0].endswith(f"_{stamp}"):
                store.remove(store.path(final))
                removed.append(store.url_of(store.path(final)))
        store.remove(f"{runs}/{name}")
        removed.append(store.url_of(f"{runs}/{name}"))
    return removed


def _claim_tag(store: Store, path: str) -> str:
    import json

    try:
        return str(json.loads(store.cat(path)).get("run", ""))
    except (FileNotFoundError, ValueError):
        return ""


def _dead(tag: str, mtime: float, older_than: float) -> bool:
    """Whether the run tagged ``tag`` is gone (see :func:`remove_stale_temps`)."""
    host = socket.gethostname().replace(".", "_").replace("-", "_")
    tag_host, _, rest = tag.partition("-")
    pid = rest.partition("-")[0]
    if tag_host == host and pid.isdigit():
        return not _alive(int(pid))
    return time.time() - mtime >= older_than
