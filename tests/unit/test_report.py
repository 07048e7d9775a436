"""The run report's numbers: the headline, per-user activity streamed from the tables, samples."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from placeholder_etl.core.results import ContractSummary, Manifest, TableInfo, Timings
from placeholder_etl.core.transform import summarize_activity
from placeholder_etl.report import activity_per_user, headline, sample_rows

STAMP = "20261125T005503Z"


def _tables() -> dict[str, pd.DataFrame]:
    """Three users with uneven activity (user 3 has nothing at all)."""
    return {
        "users_flat": pd.DataFrame(
            {
                "id": [1, 2, 3],
                "name": ["Ann", "Bo", "Cy"],
                "address_geo_lat": [1.5, -2.5, 3.5],
                "address_geo_lng": [10.0, 20.0, -30.0],
            }
        ),
        "posts": pd.DataFrame({"user_id": [1, 1, 2], "id": [1, 2, 3], "body": ["a\nb", "c", "d"]}),
        "comments": pd.DataFrame({"post_id": [1, 1, 1, 2, 3], "id": [1, 2, 3, 4, 5]}),
        "albums": pd.DataFrame({"user_id": [2], "id": [1]}),
        "photos": pd.DataFrame({"album_id": [1, 1], "id": [1, 2]}),
        "todos": pd.DataFrame(
            {"user_id": [1, 1, 1, 2], "id": [1, 2, 3, 4], "completed": [True, False, True, False]}
        ),
    }


def _summary(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The pipeline's own activity summary of the frames."""
    names = ("users_flat", "posts", "comments", "todos", "albums", "photos")
    return summarize_activity(*(frames[name] for name in names))


def _write(folder: Path, frames: dict[str, pd.DataFrame]) -> Manifest:
    """The frames as a run's CSV files, and the manifest that lists them."""
    tables = {}
    for name, frame in frames.items():
        body = frame.to_csv(index=False).encode()
        (folder / f"{name}_{STAMP}.csv").write_bytes(body)
        tables[name] = TableInfo(
            file=f"{name}_{STAMP}.csv",
            rows=len(frame),
            bytes=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
        )
    return Manifest(
        created=STAMP,
        started="2026-11-25T00:54:58+00:00",
        source="http://127.0.0.1:3000",
        resources=["users", "posts"],
        flow_run_id="0f0e0d0c-0000-4000-8000-000000000000",
        tables=tables,
        chunks=8,
        cached_chunks=3,
        pages=12,
        pages_fetched=9,
        pages_reused=3,
        retries=2,
        workers=["tcp://127.0.0.1:40001", "tcp://127.0.0.1:40002"],
        contract=ContractSummary(records_checked={"users": 3}),
        timings=Timings(count_s=0.25, extract_s=1.5, load_s=0.5, total_s=2.75),
    )


def test_the_headline_says_where_when_how_long_and_what(tmp_path) -> None:
    frames = {"users_flat": _tables()["users_flat"], "photos": pd.DataFrame({"id": range(1234)})}
    text = headline(_write(tmp_path, frames))
    assert text.startswith("# Run report: users, posts from `http://127.0.0.1:3000`\n")
    for fact in [
        "| **Source** | `http://127.0.0.1:3000` |",
        "| **Started** | 2026-11-25 00:54:58 UTC (files stamped",
        "| **Duration** | 2.8 s: counting 0.2 s, extracting 1.5 s, loading 0.5 s |",
        "| **Pages** | 12 in 8 tasks on 2 workers |",
        "| **Retries** | 2 request retries |",
        "| **Cache hits** | 3 of 12 pages reused, 3 of 8 tasks from cache |",
        f"| photos | 1,234 | 4.9 KiB | `photos_{STAMP}.csv` |",
        "| **Prefect flow run** | `0f0e0d0c-0000-4000-8000-000000000000` |",  # no UI: no link
    ]:
        assert fact in text
    assert "{" not in text


def test_the_flow_run_links_to_its_page_when_there_is_one(tmp_path) -> None:
    manifest = _write(tmp_path, {"users_flat": _tables()["users_flat"]})
    url = "http://127.0.0.1:4200/runs/flow-run/0f0e0d0c-0000-4000-8000-000000000000"
    assert (
        f"| **Prefect flow run** | `{manifest.flow_run_id}` ([open in the Prefect UI](<{url}>)) |"
        in headline(manifest, url).splitlines()
    )
    none = manifest.model_copy(update={"flow_run_id": None})
    assert "| **Prefect flow run** | `none` |" in headline(none, url).splitlines()


def test_the_flow_runs_page_is_known_only_from_a_lasting_ui() -> None:
    """PREFECT_UI_URL (by default the API URL without /api), but not a temporary server's:
    it stops with the run."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    from placeholder_etl import prefect_api

    run = "0f0e0d0c-0000-4000-8000-000000000000"
    api = "http://127.0.0.1:4299/api"
    with temporary_settings(updates={PREFECT_API_URL: api}):
        assert prefect_api.flow_run_ui_url(run) == f"http://127.0.0.1:4299/runs/flow-run/{run}"
        assert prefect_api.flow_run_ui_url(None) is None
        prefect_api._temporary.add(api)
        try:
            assert prefect_api.flow_run_ui_url(run) is None
        finally:
            prefect_api._temporary.discard(api)
    with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_UI_URL: "https://ui.test"}):
        assert prefect_api.flow_run_ui_url(run) == f"https://ui.test/runs/flow-run/{run}"
    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_UI_URL}):
        assert prefect_api.flow_run_ui_url(run) is None  # Prefect's own ephemeral server


@pytest.mark.parametrize("chunk_rows", [1, 2, 1000])
def test_activity_streamed_from_the_tables_matches_the_pipelines_summary(
    tmp_path, chunk_rows
) -> None:
    frames = _tables()
    manifest = _write(tmp_path, frames)
    expected = _summary(frames).set_index("user_id").drop(columns="name")
    found = activity_per_user(tmp_path, manifest, chunk_rows=chunk_rows)
    pd.testing.assert_frame_equal(found, expected, check_dtype=False, check_exact=False)
    assert found.loc[3].sum() == 0  # a user with nothing is still counted


def test_activity_reads_the_runs_own_summary_when_there_is_one(tmp_path) -> None:
    frames = _tables()
    summary = _summary(frames)
    manifest = _write(tmp_path, {"users_flat": frames["users_flat"], "user_activity": summary})
    found = activity_per_user(tmp_path, manifest)
    assert found["comments_received"].to_dict() == {1: 4, 2: 1, 3: 0}
    assert found["todos_done_ratio"].round(3).to_dict() == {1: 0.667, 2: 0.0, 3: 0.0}


def test_activity_has_only_what_the_tables_allow(tmp_path) -> None:
    frames = _tables()
    only = ("users_flat", "posts", "todos")
    found = activity_per_user(tmp_path, _write(tmp_path, {t: frames[t] for t in only}))
    assert list(found.columns) == ["posts_written", "todos", "todos_done", "todos_done_ratio"]
    users_only = _write(tmp_path, {"users_flat": frames["users_flat"]})
    assert list(activity_per_user(tmp_path, users_only).columns) == []
    assert activity_per_user(tmp_path, _write(tmp_path, {"posts": frames["posts"]})) is None


def test_a_sample_is_bounded_random_and_repeatable(tmp_path) -> None:
    path = tmp_path / "big.csv"
    pd.DataFrame({"id": range(1, 10_001), "x": range(10_000)}).to_csv(path, index=False)
    sample = sample_rows(path, 10_000, 500, ["id"], seed=1)
    assert len(sample) == 500
    assert sample["id"].is_unique
    assert sample["id"].min() < 1000  # spread over the table, not its head
    assert sample["id"].max() > 9000
    assert sample["id"].tolist() == sample_rows(path, 10_000, 500, ["id"], seed=1)["id"].tolist()
    assert len(sample_rows(path, 10_000, 20_000, ["id"])) == 10_000
