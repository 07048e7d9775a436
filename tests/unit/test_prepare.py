"""Before a run: its output (a folder or an object store) and its page cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from placeholder_etl.core.folder import FolderOutput
from placeholder_etl.core.objectstore import ObjectStoreOutput
from placeholder_etl.core.outputs import open_output
from placeholder_etl.core.prepare import run_cache
from placeholder_etl.core.store import Store, StoreError


def test_the_run_cache_is_shared_or_the_runs_own_and_removed(tmp_path) -> None:
    cache = Store.open(str(tmp_path))
    with run_cache(cache, True, "r1") as shared:
        assert shared is cache
        shared.put(shared.path("pages", "x.csv"), b"1\n")
    with run_cache(cache, False, "r2") as own:
        assert Path(own.root) == tmp_path / "runs" / "run-r2"
        own.put(own.path("pages", "x.csv"), b"1\n")
        assert (tmp_path / "runs" / "run-r2" / "pages" / "x.csv").exists()
    assert not (tmp_path / "runs" / "run-r2").exists()
    with pytest.raises(RuntimeError):  # noqa: PT012 - the run fails inside the block
        with run_cache(cache, False, "r3") as failed:
            failed.put(failed.path("pages", "x.csv"), b"1\n")
            raise RuntimeError("the run failed")
    assert not (tmp_path / "runs" / "run-r3").exists()
    assert (tmp_path / "pages" / "x.csv").exists()


def test_output_staging_is_absolute_and_refuses_a_file(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    staging = open_output("out")
    assert isinstance(staging, FolderOutput)
    assert staging.directory == tmp_path / "out"
    assert open_output(f"file://{tmp_path}/out").directory == tmp_path / "out"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        open_output("file")
    remote = open_output("memory://placeholder-etl-test/out")
    assert isinstance(remote, ObjectStoreOutput)
    assert remote.store.root == "/placeholder-etl-test/out"
    with pytest.raises(StoreError, match="nosuch://x"):
        open_output("nosuch://x")
    assert not (tmp_path / "out").exists()  # nothing is written before the commit


@pytest.mark.parametrize("output", ["out", "memory://placeholder-etl-test/names"])
def test_either_staging_refuses_names_that_could_escape_the_output(tmp_path, output) -> None:
    staging = open_output(str(tmp_path / output) if "://" not in output else output)
    for bad in ("../users", "a/b", ".hidden", "x y"):
        with pytest.raises(ValueError, match="letters, digits and underscores"):
            staging.open_table(bad).__enter__()
        with pytest.raises(ValueError, match="letters, digits and underscores"):
            staging.staged_path(bad)
    staging.abort()
    assert not (tmp_path / "users").exists()
