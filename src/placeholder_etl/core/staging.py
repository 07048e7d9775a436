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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Self

from placeholder_etl.core.store import Store

__all__ = [
    "ObjectStaging",
    "Staging",
    "atomic_write",
    "make_tag",
    "recover",
    "remove_dead_runs",
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

    @contextmanager
    def open_table(self, key: str, suffix: str = ".csv") -> Iterator[IO[bytes]]:
        """Write the staged file of ``key`` (fsynced when the block ends)."""
        with self.temp_path(key, suffix).open("wb") as handle:
            yield handle
            fsync_file(handle)

    def staged_path(self, key: str) -> str:
        """Where the staged file of ``key`` is, to read it back before the commit."""
        return str(self.staged[key][1])

    @property
    def store(self) -> Store:
        """The output folder as a store (to read staged files back)."""
        return Store.open(str(self.directory))

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
            finals = {
                key: self.directory / f"{key}_{stamp}{suffix}"
                for key, (suffix, _) in self.staged.items()
            }
            # A journal of the names this commit is about to create: a process killed
            # between two renames leaves it behind, and the next run's recover() removes
            # exactly those names (no manifest names them).
            journal = self.directory / f"{JOURNAL_PREFIX}{stamp}"
            with journal.open("wb") as handle:
                handle.write("\n".join(p.name for p in finals.values()).encode())
                fsync_file(handle)
            done: list[tuple[Path, Path]] = []
            try:
                for key, (_, tmp) in self.staged.items():
                    tmp.replace(finals[key])  # the manifest is staged last: renamed last
                    done.append((tmp, finals[key]))
                _fsync_dir(self.directory)
            except BaseException:
                _undo_renames(done)
                journal.unlink(missing_ok=True)
                raise
            journal.unlink()
            _fsync_dir(self.directory)
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
            if not (directory / f"manifest_{stamp}.json").exists():
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


@dataclass
class ObjectStaging:
    """A run's tables on an object store, staged, then published with the manifest last.

    An object store has no rename and no lock, so a run (1) writes its tables under
    ``_placeholder_etl/staging/<run tag>/``, where nothing is final, (2) claims its stamp by
    creating ``_placeholder_etl/runs/<stamp>.json`` only if it does not exist (``If-None-Match``:
    two runs never share a stamp), (3) copies every table to its final name
    ``<table>_<stamp>.<ext>`` (a server-side copy), (4) writes ``manifest_<stamp>.json`` last,
    also only if absent: the manifest is the commit marker, and (5) removes its staging and
    its claim. A reader trusts a stamp only once its manifest exists: before that, final names
    of the stamp may exist (during step 3), but no manifest names them. A run that fails
    removes its staging (and any final names it had copied); a killed run's staging and
    claim are removed by the next run (:func:`remove_dead_runs`).

    Args:
        store: the output folder.
        run_tag: this run's tag (:func:`make_tag`).
    """

    store: Store
    run_tag: str = field(default_factory=make_tag)
    staged: dict[str, str] = field(default_factory=dict)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None:
            self.abort()

    def _staging_folder(self) -> str:
        return self.store.path(CONTROL, "staging", self.run_tag)

    @contextmanager
    def open_table(self, key: str, suffix: str = ".csv") -> Iterator[IO[bytes]]:
        """Write the staged object of ``key`` (it appears only if the block ends well)."""
        if not key.replace("_", "").isalnum():
            raise ValueError(f"output name {key!r} must be letters, digits and underscores")
        path = f"{self._staging_folder()}/{key}{suffix}"
        self.staged[key] = path
        with self.store.open_write(path) as handle:
            yield handle

    def staged_path(self, key: str) -> str:
        return self.staged[key]

    def commit(self, manifest: Callable[[str], bytes] | None = None) -> str:
        """Claim a stamp, publish every staged table, write the manifest last.

        Returns:
            The stamp of the committed files.
        """
        claim, stamp = self._claim()
        published: list[str] = []
        try:
            for key, path in self.staged.items():
                suffix = path[path.rindex(".") :]
                final = self.store.path(f"{key}_{stamp}{suffix}")
                self.store.copy(path, final)
                published.append(final)
            if manifest is not None:
                final = self.store.path(f"manifest_{stamp}.json")
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
            taken = self.store.exists(self.store.path(f"manifest_{stamp}.json"))
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
        self.staged.clear()


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
        if f"manifest_{stamp}.json" in finals or not _dead(tag, info["mtime"], older_than):
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
