"""Parts between machines, and a cached chunk's parts checked."""

from __future__ import annotations

import socket
from pathlib import Path

from placeholder_etl.core.assemble import (
    assemble_tables,
)
from placeholder_etl.core.folder import FolderOutput
from placeholder_etl.core.store import Store
from placeholder_etl.core.transport import parts_damaged, receive_parts, ship_parts
from tests.unit.steps import users_chunk


def test_parts_from_another_machine_travel_in_the_result(tmp_path) -> None:
    worker, flow = Store.open(str(tmp_path / "worker")), Store.open(str(tmp_path / "flow"))
    local = users_chunk(worker, 1, 2)
    pages = {t: b"".join(Path(p).read_bytes() for p in paths) for t, paths in local.parts.items()}
    assert ship_parts(local, worker, socket.gethostname()) is local  # same machine
    shipped = ship_parts(local, worker, flow_host="elsewhere")
    assert shipped.packed is not None
    assert set(shipped.packed) == {"users", "users_flat"}
    received = receive_parts(shipped, flow)
    assert received.packed is None
    for table, paths in received.parts.items():
        (path,) = paths  # one file per table per chunk, the pages joined in page order
        assert Path(path).read_bytes() == pages[table]
        assert Path(path).parent == tmp_path / "flow" / "received" / "users"
    assert not parts_damaged(received, flow)

    # another chunk of the same resource gets files of its own
    other = receive_parts(ship_parts(users_chunk(worker, 3, 3), worker, "elsewhere"), flow)
    assert not set(other.parts["users"]) & set(received.parts["users"])
    staging = FolderOutput(tmp_path / "out")
    tables = assemble_tables(["users"], [received, other], flow, staging)
    assert tables["users"].rows == 30
    lines = Path(staging.staged_path("users")).read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in lines] == list(range(1, 31))

    Path(received.parts["users"][0]).unlink()
    assert parts_damaged(received, flow)
    assert receive_parts(local, flow) is local


def test_workers_writing_to_an_object_store_return_paths_only(tmp_path) -> None:
    store = Store.open("memory://placeholder-etl-test/cache")
    try:
        remote = users_chunk(store, 1, 1)
        assert ship_parts(remote, store, flow_host="elsewhere") is remote
        assert not parts_damaged(remote, store)
    finally:
        store.remove(store.root, recursive=True)
