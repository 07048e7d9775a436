"""The run's tables and manifest as Prefect assets, read back from a real Prefect server's
events: one successful materialization per committed table and the manifest, with its key,
upstream assets and metadata; none for a failed run."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from placeholder_api.server import make_server
from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.results import RunResult
from placeholder_etl.prefect_api import drain

pytestmark = pytest.mark.usefixtures("prefect_api_url")

SUCCEEDED = "prefect.asset.materialization.succeeded"
#: Longest wait for the server to store the events a run sent (it writes them in batches).
WAIT_S = 30


def run_state(api_url: str, out: Path, cache_dir: Path, **options: Any):
    """The flow's final state (its run's id in ``state_details``), as ``run_flow`` runs it."""
    from placeholder_etl.flow import etl
    from placeholder_etl.options import settings_from_options

    defaults = {"page_size": 10, "pages_per_task": 1, "retry_delay": 0.05, "runner": "local"}
    settings = settings_from_options(
        defaults
        | options
        | {"api_url": api_url, "output_dir": str(out), "cache_dir": str(cache_dir)}
    )
    return etl(**settings.flow_parameters(), return_state=True)


def asset_events(flow_run_id: str) -> list:
    """The asset events (materializations and references) the server stored for a run."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    # a new filter each time: its time window ends when it is made
    only = EventFilter(
        event=EventNameFilter(prefix=["prefect.asset."]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    with get_client(sync_client=True) as client:
        page = client.read_events(filter=only, limit=50)
        events = list(page.events)
        while page.next_page:
            page = client.read_events_page(page.next_page)
            events += page.events
    return events


def materializations(flow_run_id: str, expected: int) -> list:
    """The run's successful materializations, once ``expected`` of them are stored (at most
    :data:`WAIT_S`: the events are sent by a background worker and stored in batches)."""
    drain()
    deadline = time.monotonic() + WAIT_S
    while True:
        found = [e for e in asset_events(flow_run_id) if e.event == SUCCEEDED]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def stored_everything_sent(flow_run_id: str) -> None:
    """Wait until the server stored a marker event sent after the run's own events (one
    connection sends them in order): whatever the run sent is stored by then."""
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    marker = f"placeholder-etl.test.marker.{uuid.uuid4().hex}"
    drain()
    emit_event(
        marker,
        resource={"prefect.resource.id": f"placeholder-etl.test.{uuid.uuid4().hex}"},
        related=[
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                "prefect.resource.role": "flow-run",
            }
        ],
    )
    drain()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        only = EventFilter(
            event=EventNameFilter(name=[marker]),
            related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
        )
        with get_client(sync_client=True) as client:
            if client.read_events(filter=only, limit=1).events:
                return
        time.sleep(0.5)
    raise AssertionError(f"the server did not store the marker event in {WAIT_S} s")


def upstream(event) -> set[str]:
    return {r.id for r in event.related if r.role == "asset"}


def test_a_run_materializes_each_table_and_the_manifest(tmp_path, cache_dir) -> None:
    out = tmp_path / "out"
    with make_server(users=3, seed=1) as server:
        state = run_state(server.url, out, cache_dir, resources="all", page_size=500)
        api = server.url
    result: RunResult = state.result()
    manifest = result.manifest
    flow_run_id = str(state.state_details.flow_run_id)
    assert manifest.flow_run_id == flow_run_id
    assert len(manifest.tables) == 8

    events = materializations(flow_run_id, expected=9)
    by_key = {e.resource.id: e for e in events}
    assert len(events) == len(by_key) == 9  # one each, no more
    location = f"file://{out}"
    assert set(by_key) == {f"{location}/{t}.csv" for t in manifest.tables} | {
        f"{location}/manifest.json"
    }
    for table, info in manifest.tables.items():
        event = by_key[f"{location}/{table}.csv"]
        assert event.payload == {
            "table": table,
            "file": info.file,
            "path": str(out / info.file),
            "format": "csv",
            "rows": info.rows,
            "bytes": info.bytes,
            "sha256": info.sha256,
            "stamp": manifest.created,
            "manifest": result.manifest_file,
            "flow_run_id": flow_run_id,
            "source": api,
        }
        written = (out / info.file).read_bytes()
        assert (len(written), hashlib.sha256(written).hexdigest()) == (info.bytes, info.sha256)
        assert event.resource.get("prefect.resource.name") == f"{table}.csv"
    # upstream: the endpoint each table was fetched from; the summary, the tables it reads
    assert upstream(by_key[f"{location}/users.csv"]) == {f"{api}/users"}
    assert upstream(by_key[f"{location}/users_flat.csv"]) == {f"{api}/users"}
    assert upstream(by_key[f"{location}/photos.csv"]) == {f"{api}/photos"}
    assert upstream(by_key[f"{location}/user_activity.csv"]) == {
        f"{location}/{t}.csv"
        for t in ("users_flat", "posts", "comments", "todos", "albums", "photos")
    }
    manifest_event = by_key[f"{location}/manifest.json"]
    assert upstream(manifest_event) == {f"{location}/{t}.csv" for t in manifest.tables}
    text = Path(result.manifest_file).read_bytes()
    assert manifest_event.payload["file"] == f"manifest_{manifest.created}.json"
    assert manifest_event.payload["path"] == result.manifest_file
    assert manifest_event.payload["bytes"] == len(text)
    assert manifest_event.payload["sha256"] == hashlib.sha256(text).hexdigest()
    # each materialization names the flow run and its own task run
    for event in events:
        roles = {r.role: r.id for r in event.related}
        assert roles["flow-run"] == f"prefect.flow-run.{flow_run_id}"
        assert roles["task-run"].startswith("prefect.task-run.")
    referenced = {
        e.resource.id for e in asset_events(flow_run_id) if e.event.endswith("referenced")
    }
    assert {f"{api}/{r}" for r in manifest.resources} <= referenced
    assert not [e for e in asset_events(flow_run_id) if e.event.endswith("failed")]


def test_the_keys_stay_the_same_from_run_to_run(api, tmp_path, cache_dir) -> None:
    """The key names the table and where it is written, not the run: the stamp changes."""
    out = tmp_path / "out"
    runs = [run_state(api.url, out, cache_dir, format="parquet") for _ in range(2)]
    seen = []
    for state in runs:
        flow_run_id = str(state.state_details.flow_run_id)
        events = materializations(flow_run_id, expected=3)
        seen.append({e.resource.id: e.payload["stamp"] for e in events})
    keys = {
        f"file://{out}/{name}" for name in ("users.parquet", "users_flat.parquet", "manifest.json")
    }
    assert set(seen[0]) == set(seen[1]) == keys
    assert [len(set(s.values())) for s in seen] == [1, 1]  # one stamp a run
    assert seen[0]["file://" + str(out / "manifest.json")] != seen[1][f"file://{out}/manifest.json"]


def test_a_failed_run_records_no_materialization(tmp_path, cache_dir) -> None:
    """The pages disagree with the count after the tables were assembled: nothing is
    committed, and no asset is materialized."""
    out = tmp_path / "out"
    with make_server(users=25, fault="total-lie:3") as server:
        state = run_state(server.url, out, cache_dir)
    assert state.is_failed()
    with pytest.raises(PermanentError, match=r"users: the API reported 28 records"):
        state.result()
    flow_run_id = str(state.state_details.flow_run_id)
    stored_everything_sent(flow_run_id)
    assert asset_events(flow_run_id) == []
    assert not out.exists() or not list(out.glob("manifest_*.json"))


def test_an_object_store_output_is_materialized_under_its_url(api, bucket, cache_dir) -> None:
    state = run_state(api.url, f"s3://{bucket}/daily/", cache_dir)
    result: RunResult = state.result()
    flow_run_id = str(state.state_details.flow_run_id)
    events = materializations(flow_run_id, expected=3)
    by_key = {e.resource.id: e for e in events}
    assert set(by_key) == {
        f"s3://{bucket}/daily/{name}" for name in ("users.csv", "users_flat.csv", "manifest.json")
    }
    users = by_key[f"s3://{bucket}/daily/users.csv"]
    assert users.payload["path"] == f"s3://{bucket}/daily/{result.manifest.tables['users'].file}"
    assert users.payload["manifest"] == result.manifest_file
