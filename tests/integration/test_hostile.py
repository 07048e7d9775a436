"""Hostile and odd input: each case has a documented behaviour (docs/guarantees.md)."""

from __future__ import annotations

import pandas as pd
import pytest

from placeholder_api.fakedata import make_record
from placeholder_api.server import make_server
from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.redact import redact_url
from placeholder_etl.core.results import Manifest
from placeholder_etl.core.transform import neutralise_formulas
from tests.helpers import run_flow, run_logs, snapshot

pytestmark = pytest.mark.usefixtures("prefect_api_url")


def run(server, tmp_path, **options) -> Manifest:
    options = {"cache": False, "runner": "local"} | options
    return run_flow(server.url, tmp_path / "out", tmp_path / "cache", **options).manifest


def seed_table(tmp_path, manifest) -> pd.DataFrame:
    return pd.read_csv(tmp_path / "out" / manifest.tables["users"].file, dtype=str)


def test_duplicate_ids_across_pages_are_dropped(tmp_path) -> None:
    """The first occurrence wins: the repeat (on the next page) carries a changed name."""
    with make_server(users=25, fault="dup-ids") as server:
        manifest = run(server, tmp_path, resources="users,posts")
    users = seed_table(tmp_path, manifest)
    assert users["ID"].astype(int).tolist() == list(range(1, 26))
    assert manifest.tables["users"].rows == 25
    assert manifest.tables["users_flat"].rows == 25
    assert "users: ids out of order or repeated; sorting" in run_logs(manifest.flow_run_id)
    # ids 10 and 20 came twice (pages 1 and 2, 2 and 3): the first, unchanged, copy is kept
    expected = {user_id: make_record("users", user_id, 0)["name"] for user_id in range(1, 26)}
    assert dict(zip(users["ID"].astype(int), users["Name"], strict=True)) == expected
    flat = pd.read_csv(tmp_path / "out" / manifest.tables["users_flat"].file)
    assert flat["name"].tolist() == list(expected.values())
    posts = pd.read_csv(tmp_path / "out" / manifest.tables["posts"].file)
    assert posts["id"].tolist() == list(range(1, 251))
    assert not posts["title"].str.endswith(" (repeated)").any()


def test_pages_out_of_order_are_sorted_by_id(tmp_path) -> None:
    """Every page comes last id first: each table is still one row per record in id order."""
    with make_server(users=25, fault="reverse") as server:
        manifest = run(server, tmp_path, resources="users,todos")
    out = tmp_path / "out"
    assert seed_table(tmp_path, manifest)["ID"].astype(int).tolist() == list(range(1, 26))
    for table, rows in (("users_flat", 25), ("todos", 500)):
        frame = pd.read_csv(out / manifest.tables[table].file)
        assert frame["id"].tolist() == list(range(1, rows + 1)), table
        assert manifest.tables[table].rows == rows


@pytest.mark.parametrize(
    ("fault", "held"), [("total-lie:3", "held 25 distinct"), ("shrink", "held 17 distinct")]
)
def test_counts_that_disagree_with_the_pages_fail_and_write_nothing(tmp_path, fault, held):
    out = tmp_path / "out"
    out.mkdir()
    (out / "users_20200101T000000Z.csv").write_text("ID\n1\n")
    before = snapshot(out)
    with make_server(users=25, fault=fault) as server:
        with pytest.raises(PermanentError, match=r"users: the API reported \d+ records") as err:
            run(server, tmp_path)
    assert held in str(err.value)
    assert snapshot(out) == before


def test_huge_field_values_arrive_whole(tmp_path) -> None:
    with make_server(users=12, fault="huge:300000") as server:
        manifest = run(server, tmp_path)
    users = seed_table(tmp_path, manifest)
    assert users["Name"].str.len().tolist() == [300_000] * 12


def test_unexpected_extra_fields_are_allowed_and_dropped(tmp_path) -> None:
    with make_server(users=12, fault="extra-field") as server:
        manifest = run(server, tmp_path)
    flat = pd.read_csv(tmp_path / "out" / manifest.tables["users_flat"].file)
    assert "nickname" not in "".join(flat.columns)
    assert len(flat) == 12


def test_formulas_are_neutralised_by_default(tmp_path) -> None:
    with make_server(users=12, fault="formula") as server:
        manifest = run(server, tmp_path)
    names = seed_table(tmp_path, manifest)["Name"]
    assert names.str.startswith("'").all()
    assert {n[1] for n in names} == {"=", "+", "-", "@"}


def test_formulas_can_be_kept_raw(tmp_path) -> None:
    with make_server(users=12, fault="formula") as server:
        manifest = run(server, tmp_path, keep_formulas=True)
    names = seed_table(tmp_path, manifest)["Name"]
    assert {n[0] for n in names} == {"=", "+", "-", "@"}


def test_neutralise_leaves_numbers_and_ordinary_text() -> None:
    frame = pd.DataFrame({"lat": [-37.3], "name": ["-x"], "ok": ["Leanne"], "n": [5]})
    out = neutralise_formulas(frame)
    assert out.to_dict("records") == [{"lat": -37.3, "name": "'-x", "ok": "Leanne", "n": 5}]


def test_output_dir_that_is_a_file_is_refused(tmp_path) -> None:
    (tmp_path / "out").write_text("not a directory")
    with make_server(users=3) as server, pytest.raises(NotADirectoryError, match="is a file"):
        run(server, tmp_path)


@pytest.mark.parametrize("fault", ["none", "malformed"])
def test_credentials_in_the_api_url_never_reach_outputs(tmp_path, fault) -> None:
    """On success and on the failure path: files, the run's logs in Prefect and the error."""
    with make_server(users=3, fault=fault) as server:
        url = server.url.replace("http://", "http://etl:hunter2@")
        if fault == "none":
            manifest = run_flow(url, tmp_path / "out", tmp_path / "cache", runner="local").manifest
            assert manifest.source.startswith("http://etl:***@127.0.0.1:")
        else:
            with pytest.raises(PermanentError, match=r"from http://etl:\*\*\*@127") as error:
                run_flow(url, tmp_path / "out", tmp_path / "cache", runner="local")
            assert "hunter2" not in str(error.value)
        assert server.stats()["requests"] >= 1  # the credentials were really sent
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert "hunter2" not in written
    log = run_logs()
    assert "Beginning flow run" in log  # the run's log, as the Prefect UI shows it
    assert "hunter2" not in log


def test_redact_url_hides_passwords_and_secret_query_values() -> None:
    assert redact_url("http://h/x?token=abc&_page=2") == "http://h/x?token=***&_page=2"
    assert (
        redact_url("https://bob:pw@h/x?api_key=1&sig=2")
        == "https://bob:***@h/x?api_key=***&sig=***"
    )
