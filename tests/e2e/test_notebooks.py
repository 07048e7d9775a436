"""The notebooks: committed clean, and executed by papermill in real kernels.

Each notebook runs twice: against the bundled server with papermill parameters, and with no
parameters at all (it then starts the bundled server in its own kernel). The assertions read
the values the notebooks ``record`` and the files they write.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import papermill
import pytest

from placeholder_api.server import make_server
from placeholder_etl.core.results import Manifest
from placeholder_etl.notebook import recorded
from tests.helpers import SEED_HEADER, run_etl

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ["01-extract", "02-transform", "03-load", "04-flow-on-dask", "05-run-report"]

pytestmark = pytest.mark.usefixtures("prefect_api_url")


def execute(name: str, tmp_path: Path, **parameters) -> dict:
    out = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
        execution_timeout=300,
    )
    return recorded(out)


def test_the_notebooks_are_the_numbered_pipeline_steps() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_committed_clean(name) -> None:
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c for c in code if c.outputs or c.execution_count is not None] == []
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assigned = {line.split("=")[0].strip() for line in tagged[0].source.splitlines() if "=" in line}
    assert {"api_url", "output_dir"} <= assigned


def test_01_extract(tmp_path) -> None:
    with make_server(users=12) as server:
        values = execute("01-extract", tmp_path, api_url=server.url, output_dir=str(tmp_path))
    assert values["totals"] == {
        "users": 12,
        "posts": 120,
        "comments": 600,
        "albums": 120,
        "photos": 6000,
        "todos": 240,
    }
    assert values["users_fetched"] == 12
    assert values["pages"] == 3
    assert values["contract_error"].endswith("record id=1 field email: missing")


def test_02_transform(tmp_path) -> None:
    with make_server(users=12) as server:
        values = execute("02-transform", tmp_path, api_url=server.url, output_dir=str(tmp_path))
        first = server.stats()  # the notebook really read this server
    assert first["requests"] >= 6
    assert values["seed_rows"] == 12
    assert values["seed_columns"] == SEED_HEADER
    assert values["seed_first_row"]["ID"] == "1"
    assert values["seed_first_row"]["Address"].count(", ") >= 2
    assert values["flat_rows"]["photos"] == 6000
    assert set(values["nulls"].values()) == {0}
    assert values["activity_rows"] == 12


def test_03_load(tmp_path) -> None:
    out = tmp_path / "out"
    with make_server(users=12) as server:
        values = execute("03-load", tmp_path, api_url=server.url, output_dir=str(out))
    assert values["written"] == "users.csv"  # the atomic-write demonstration
    assert values["unchanged_after_failure"] is True
    assert values["temp_files_left"] == []
    committed = values["committed"]  # the load step, as the flow runs it
    assert sorted(name.split("_2")[0] for name in committed) == ["manifest", "users", "users_flat"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == committed
    (users,) = out.glob("users_2*.csv")
    assert len(users.read_text().splitlines()) == 13
    assert values["rows_read_back"] == 12
    assert values["round_trip_equal"] is True
    assert values["checksum_ok"] is True


def test_04_flow_on_dask(tmp_path) -> None:
    out = tmp_path / "out"
    with make_server(users=12) as server:
        values = execute("04-flow-on-dask", tmp_path, api_url=server.url, output_dir=str(out))
    assert values["rows"]["users"] == 12
    assert values["rows"]["photos"] == 6000
    assert values["rows"]["user_activity"] == 12
    assert values["artifact_rows"] == values["rows"]
    assert len(values["workers"]) >= 1
    assert all(w.startswith("tcp://127.0.0.1:") for w in values["workers"])
    manifest = json.loads(next(out.glob("manifest_*.json")).read_text())
    assert manifest["flow_run_id"] == values["flow_run_id"]


def test_05_run_report_on_a_given_manifest(tmp_path) -> None:
    out = tmp_path / "out"
    with make_server(users=12) as server:
        result = run_etl(server.url, out, "--resources", "all", runner="local")
    assert result.returncode == 0, result.stderr[-2000:]
    (manifest,) = out.glob("manifest_*.json")
    values = execute("05-run-report", tmp_path, manifest=str(manifest), output_dir=str(out))
    assert values["tables"]["users"] == 12
    assert values["tables"]["photos"] == 6000
    assert "breaches" not in values["contract"]
    assert values["contract"]["records_checked"]["comments"] == 600
    assert values["charts"] == 5  # rows, activity, todos done, posts and comments, the map


@pytest.mark.parametrize("name", NAMES)
def test_every_notebook_runs_offline_with_no_parameters(name, tmp_path) -> None:
    values = execute(name, tmp_path)
    assert values, "the notebook recorded nothing"
    users = {
        "01-extract": lambda v: v["users_fetched"],
        "02-transform": lambda v: v["seed_rows"],
        "03-load": lambda v: v["rows_read_back"],
        "04-flow-on-dask": lambda v: v["rows"]["users"],
        "05-run-report": lambda v: v["tables"]["users"],
    }[name](values)
    assert users == 10


def test_run_report_writes_html_for_readers(tmp_path) -> None:
    out = tmp_path / "out"
    result = run_etl(
        "bundled", out, "--resources", "all", "--report", cache=tmp_path / "cache", runner="local"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (report,) = out.glob("report_*.html")
    assert f"report: {report}" in result.stdout
    (manifest_file,) = out.glob("manifest_*.json")
    manifest = Manifest.read(manifest_file)
    html = report.read_text()
    text = re.sub(r"<(style|script)\b.*?</\1>", "", html, flags=re.DOTALL)  # what a reader sees
    # the headline, from the manifest
    assert "Run report: " in html
    assert manifest.source in html
    assert f"{manifest.timings.total_s:.1f} s" in html
    assert f"{manifest.retries} request retries" in html
    assert f"{manifest.cached_chunks} of {manifest.chunks} tasks from cache" in html
    for name, info in manifest.tables.items():
        assert f"<td>{name}</td>" in html
        assert f"{info.rows:,}" in html
    assert "5,000" in html  # photos checked, from the data
    assert "none breaking the contract" in html
    # the flow run's id links to its page in the UI of the (lasting) server the run used
    ui = os.environ["PREFECT_API_URL"].removesuffix("/api")
    run_id = manifest.flow_run_id
    assert (
        f'<code>{run_id}</code> (<a href="{ui}/runs/flow-run/{run_id}">open in the Prefect UI</a>)'
        in html
    )
    assert html.count('src="data:image/png;base64') == 5
    # for a browser's tab and a screen reader: a title, each chart described by its own title
    assert f"<title>Run report {manifest.created} · placeholder-etl</title>" in html
    alts = re.findall(r'<img [^>]*alt="([^"]*)"', html)
    assert alts[0] == f"Rows per table ({sum(i.rows for i in manifest.tables.values()):,} in all)"
    assert len(set(alts)) == 5
    assert "No description has been provided" not in html
    # no third-party notices in the terminal (kernel transport, nbconvert's alt-text warning)
    assert result.stderr.strip() == "", result.stderr[-2000:]
    # nothing for notebook users or tests: no code, no dicts, no recorded values, no logs
    assert "import pandas" not in text
    assert "{'" not in text
    for recorded_name in ("tables", "contract", "charts"):
        assert f"{recorded_name}: " not in text
    for instruction in ("parameters", "papermill", "remove_cell", "template"):
        assert instruction not in text.lower()
    assert "WARNING" not in text


def test_a_failing_report_keeps_the_data_and_says_so(tmp_path) -> None:
    broken = tmp_path / "notebooks"
    broken.mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("raise RuntimeError('chart library missing')")]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, broken / "05-run-report.ipynb")
    out = tmp_path / "out"
    result = run_etl(
        *("bundled", out, "--report"),
        cache=tmp_path / "cache",
        env={"PLACEHOLDER_ETL_NOTEBOOKS": str(broken)},
        runner="local",
    )
    assert result.returncode == 3
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the data was written, but report notebook 05-run-report")
    assert "RuntimeError: chart library missing" in last
    assert len(list(out.glob("users_[0-9]*.csv"))) == 1
    assert list(out.glob("report_*")) == []
    assert list(out.glob(".*.tmp")) == []
