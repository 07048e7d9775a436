"""Loading: atomic writes, staged commits under a lock, and the clean-up of killed runs."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from placeholder_etl.core import folder as folder_module
from placeholder_etl.core.atomic import atomic_write, remove_stale_temps
from placeholder_etl.core.folder import FolderOutput, recover
from placeholder_etl.core.names import make_tag
from placeholder_etl.core.output import CommitError
from placeholder_etl.core.results import StagedTable
from tests.helpers import snapshot


def stage(staging: FolderOutput, **tables: str) -> dict[str, StagedTable]:
    """Write each table's text through ``open_table``; return what the commit takes."""
    staged = {}
    for key, text in tables.items():
        data = text.encode()
        with staging.open_table(key) as handle:
            handle.write(data)
        staged[key] = StagedTable(
            path=staging.staged_path(key),
            suffix=".csv",
            rows=text.count("\n") - 1,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
    return staged


def test_atomic_write_keeps_the_old_file_when_the_block_fails(tmp_path) -> None:
    target = tmp_path / "users.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):  # noqa: PT012 - the failure must happen mid-write
        with atomic_write(target) as handle:
            handle.write(b"half")
            raise RuntimeError("died")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["users.csv"]


def _commit(directory: str, barrier) -> str:
    staging = FolderOutput(Path(directory))
    staged = stage(staging, users=f"ID\n{os.getpid()}\n")
    barrier.wait()  # every process commits in the same instant
    return staging.commit(staged, lambda stamp: f'{{"created": "{stamp}"}}\n'.encode())


def test_concurrent_commits_never_share_or_overwrite_files(tmp_path) -> None:
    with multiprocessing.Manager() as manager, ProcessPoolExecutor(8) as pool:
        barrier = manager.Barrier(8)
        stamps = list(pool.map(_commit, [str(tmp_path)] * 8, [barrier] * 8))
    assert len(set(stamps)) == 8
    pids = set()
    for stamp in stamps:
        users = (tmp_path / f"users_{stamp}.csv").read_text().splitlines()
        assert users[0] == "ID"
        pids.add(users[1])
        assert (tmp_path / f"manifest_{stamp}.json").read_text() == f'{{"created": "{stamp}"}}\n'
    assert len(pids) == 8  # no file overwrote another
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("taken", ["users_flat", "manifest"])
def test_a_commit_that_fails_halfway_leaves_the_output_dir_as_it_was(tmp_path, taken) -> None:
    """A rename fails after others succeeded: the renamed files go back, nothing is left.

    The failure is real: something that ignores the lock (a person, another tool) makes a
    directory at the final name of the second file (or of the manifest, renamed last)
    after the stamp was chosen, so renaming a file onto it fails with EISDIR.
    """
    out = tmp_path / "out"
    earlier = FolderOutput(out)  # a previous good run (it also leaves the lock file)
    earlier.commit(stage(earlier, users="ID\n1\n"), lambda stamp: b"{}\n")
    before = snapshot(out)
    taken_dirs = []

    def manifest(stamp: str) -> bytes:
        suffix = ".json" if taken == "manifest" else ".csv"
        taken_dirs.append(out / f"{taken}_{stamp}{suffix}")
        taken_dirs[0].mkdir()
        return b'{"created": "%s"}\n' % stamp.encode()

    staging = FolderOutput(out)
    staged = stage(staging, users="ID\n2\n", users_flat="id\n2\n")
    with pytest.raises(IsADirectoryError), staging:
        staging.commit(staged, manifest)
    taken_dirs[0].rmdir()  # the intruder's, not ours
    assert snapshot(out) == before  # byte for byte: no final name, no temporary file
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


@pytest.fixture
def fsyncs(monkeypatch, tmp_path) -> list[tuple[str, list[str]]]:
    """Every real fsync from here on: what it synced, and the names in ``tmp_path`` then."""
    synced: list[tuple[str, list[str]]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        real(fd)
        names = sorted(p.name for p in tmp_path.iterdir())
        synced.append((str(Path(f"/proc/self/fd/{fd}").readlink()), names))

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_every_file_is_on_disk_before_its_final_name_and_the_names_before_commit_returns(
    tmp_path, fsyncs
) -> None:
    """Durable through a power cut: a file is fsynced while only its temporary name exists,
    and the directory (the renames) once every final name exists."""
    staging = FolderOutput(tmp_path)
    staged = stage(staging, users="ID\n1\n", users_flat="ID\n1\n")
    temps = {f"{key}{table.suffix}": table.path for key, table in staged.items()}
    stamp = staging.commit(staged, lambda stamp: b"{}\n")
    (manifest_temp,) = {path for path, _ in fsyncs if Path(path).name.startswith(".manifest")}
    temps["manifest.json"] = manifest_temp
    finals = {name.replace(".", f"_{stamp}.", 1): temp for name, temp in temps.items()}
    assert sorted(finals) == sorted(p.name for p in tmp_path.glob("[!.]*"))
    for final, temp in finals.items():
        (names,) = [names for path, names in fsyncs if path == temp]
        assert Path(temp).name in names
        assert final not in names
    assert any(path == str(tmp_path) and set(finals) <= set(names) for path, names in fsyncs)


def test_atomic_write_syncs_the_file_before_the_rename_and_the_rename_after(
    tmp_path, fsyncs
) -> None:
    target = tmp_path / "seen.json"
    target.write_text("old\n")
    with atomic_write(target) as handle:
        handle.write(b"new\n")
    (file_sync, dir_sync) = fsyncs
    assert Path(file_sync[0]).name.startswith(".seen.json.")  # the temporary file, ...
    assert target.read_text() == "new\n"
    assert dir_sync[0] == str(tmp_path)  # ... then the directory, after the rename
    assert dir_sync[1] == ["seen.json"]


def test_abort_removes_temps_and_a_directory_it_created(tmp_path) -> None:
    staging = FolderOutput(tmp_path / "new")
    stage(staging, users="x")
    staging.abort()
    assert not (tmp_path / "new").exists()


def test_abort_keeps_a_directory_that_was_there_and_other_runs_files(tmp_path) -> None:
    other = FolderOutput(tmp_path)
    stage(other, users="ID\n1\n")
    staging = FolderOutput(tmp_path)
    stage(staging, users="ID\n2\n")
    staging.abort()
    assert [p.name for p in tmp_path.iterdir()] == [Path(other.staged_path("users")).name]


def test_a_copy_of_the_staging_commits_what_another_copy_staged(tmp_path) -> None:
    """Nothing crosses a process boundary by mutation: the staging holds no state, so a
    table staged through a pickled copy (a Dask worker's) is committed from the original."""
    import pickle

    staging = FolderOutput(tmp_path / "out")
    staged = stage(pickle.loads(pickle.dumps(staging)), users="ID\n1\n")
    stamp = staging.commit(staged, lambda stamp: b"{}\n")
    assert (tmp_path / "out" / f"users_{stamp}.csv").read_text() == "ID\n1\n"


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_commit_refuses_a_table_that_is_not_what_was_written(tmp_path, damage) -> None:
    """The manifest never names a missing or short file: the commit checks each table's size
    under its final name before the manifest, and undoes everything otherwise."""
    out = tmp_path / "out"
    earlier = FolderOutput(out)
    earlier.commit(stage(earlier, users="ID\n1\n"), lambda stamp: b"{}\n")
    before = snapshot(out)
    staging = FolderOutput(out)
    staged = stage(staging, users="ID\n2\n", users_flat="id\n2\n")
    flat = Path(staged["users_flat"].path)
    if damage == "truncated":
        flat.write_text("id\n")
    else:
        flat.unlink()
    error = CommitError if damage == "truncated" else FileNotFoundError
    with pytest.raises(error, match="users_flat"), staging:
        staging.commit(staged, lambda stamp: b"{}\n")
    assert snapshot(out) == before


def test_a_full_disk_while_the_journal_is_written_leaves_the_output_dir_as_it_was(
    tmp_path, monkeypatch
) -> None:
    """ENOSPC on the commit journal: the failing run removes the journal itself."""
    out = tmp_path / "out"
    earlier = FolderOutput(out)
    earlier.commit(stage(earlier, users="ID\n1\n"), lambda stamp: b"{}\n")
    before = snapshot(out)
    real = folder_module.fsync_file

    def full_disk(handle) -> None:
        if Path(handle.name).name.startswith(folder_module.JOURNAL_PREFIX):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(handle)

    monkeypatch.setattr(folder_module, "fsync_file", full_disk)
    staging = FolderOutput(out)
    staged = stage(staging, users="ID\n2\n")
    with pytest.raises(OSError, match="No space left"), staging:
        staging.commit(staged, lambda stamp: b"{}\n")
    assert snapshot(out) == before


def test_staging_rejects_names_that_could_escape_the_directory(tmp_path) -> None:
    for bad in ("../users", "a/b", ".hidden", "x y"):
        with pytest.raises(ValueError, match="letters, digits and underscores"):
            FolderOutput(tmp_path).staged_path(bad)


def test_stale_temps_of_dead_processes_are_removed_live_ones_kept(tmp_path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    host, _, _ = make_tag().partition("-")
    dead_tmp = tmp_path / f".users.csv.{host}-{dead}-abcd1234.tmp"
    live_tmp = tmp_path / f".users.csv.{make_tag()}.tmp"
    old_unknown = tmp_path / "sub" / ".parts.csv.elsewhere-1-abcd.tmp"
    young_unknown = tmp_path / ".parts.csv.otherhost-1-abcd.tmp"
    old_unknown.parent.mkdir()
    for path in (dead_tmp, live_tmp, old_unknown, young_unknown):
        path.write_text("partial")
    os.utime(old_unknown, (time.time() - 90_000, time.time() - 90_000))
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([dead_tmp, old_unknown])
    assert live_tmp.exists()
    assert young_unknown.exists()


_KILLED_COMMIT = """
import os, signal, sys
from pathlib import Path
from placeholder_etl.core.results import StagedTable
from placeholder_etl.core.folder import FolderOutput

renames = 0
replace = Path.replace

def replace_then_die(self, target):
    global renames
    renames += 1
    if renames == 2:  # the first table is in place, the rest and the manifest are not
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(self, target)

Path.replace = replace_then_die
staging = FolderOutput(Path(sys.argv[1]))
staged = {}
for key in ("users", "users_flat"):
    Path(staging.staged_path(key)).write_text("ID\\n1\\n")
    staged[key] = StagedTable(
        path=staging.staged_path(key), suffix=".csv", rows=1, bytes=5, sha256=""
    )
staging.commit(staged, lambda stamp: b"{}")
"""


def test_a_commit_killed_between_renames_is_undone_by_the_next_run(tmp_path) -> None:
    """SIGKILL after the first rename: the next run removes what that commit had renamed."""
    earlier = tmp_path / "users_20200101T000000Z.csv"
    earlier.write_text("ID\n1\n")  # an earlier run's table, no manifest: not ours to remove
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_COMMIT, str(tmp_path)], capture_output=True, check=False
    )
    assert killed.returncode == -9
    orphans = [p for p in tmp_path.glob("users_2*.csv") if p != earlier]
    assert len(orphans) == 1  # the kill left a table under a final name, without a manifest
    assert list(tmp_path.glob(".placeholder-etl.commit.*"))
    assert not list(tmp_path.glob("manifest_*.json"))

    removed = recover(tmp_path)
    assert removed == orphans
    assert [p.name for p in tmp_path.glob("users*.csv")] == [earlier.name]
    assert not list(tmp_path.glob(".placeholder-etl.commit.*"))
    assert recover(tmp_path) == []  # nothing more to do
