"""The command line as a user runs it: exit codes, what it prints, what it leaves on disk."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest

from placeholder_api.server import make_server
from tests.helpers import SEED_HEADER, requests_by_url, run_cli, run_etl, snapshot

pytestmark = pytest.mark.usefixtures("prefect_api_url")


def _earlier_output(out: Path) -> dict[str, bytes]:
    """An output dir holding a previous run's files, which a failed run must not touch."""
    out.mkdir()
    (out / "users_20200101T000000Z.csv").write_text("ID,Name\n1,Old\n")
    (out / "manifest_20200101T000000Z.json").write_text("{}\n")
    return snapshot(out)


def test_run_against_the_bundled_server_on_dask(tmp_path) -> None:
    out = tmp_path / "out"
    result = run_etl(
        *("bundled", out, "--bundled-users", "12"), cache=tmp_path / "cache", runner="dask"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == f"output: {out}"
    assert lines[-1].startswith(f"manifest: {out}/manifest_")
    (users,) = out.glob("users_[0-9]*.csv")
    assert users.name in result.stdout
    frame = pd.read_csv(users)
    assert list(frame.columns) == SEED_HEADER
    assert frame["ID"].tolist() == list(range(1, 13))
    assert "Bundled API: 12 users at http://127.0.0.1:" in result.stdout
    assert "Tables from the bundled API (12 users)" in result.stdout
    assert re.search(r"\n1 page \(0 reused\), 0 retries, [\d.]+ s in all \(", result.stdout)

    checked = run_cli("verify", str(out), timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("ok: 2 tables, 24 rows, as ")
    (flat,) = out.glob("users_flat_*.csv")
    flat.write_bytes(flat.read_bytes()[:-20])  # truncated
    users.unlink()
    checked = run_cli("verify", str(out), timeout=60)
    assert checked.returncode == 1
    lines = checked.stderr.strip().splitlines()
    size = flat.stat().st_size
    short = f"{flat.name}: {size:,} bytes, the manifest says {size + 20:,}"
    assert sorted(lines[:-1]) == sorted([f"{users.name}: missing", short])
    assert lines[-1].startswith("error: 2 of 2 tables are not as manifest_")


@pytest.mark.parametrize("fault", ["5xx:3", "429:1"])
def test_transient_faults_are_retried_and_the_run_succeeds(tmp_path, fault) -> None:
    out = tmp_path / "out"
    with make_server(users=30, fault=fault) as server:
        result = run_etl(
            server.url, out, "--page-size", "10", cache=tmp_path / "cache", runner="local"
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert server.stats()["faults_injected"] >= 4
    (users,) = out.glob("users_[0-9]*.csv")
    assert len(pd.read_csv(users)) == 30


PAGE = "users page {n} from {url}/users?_page={n}&_limit=10: "
COUNT = "/users?_page=1&_limit=1"


@pytest.mark.parametrize(
    ("fault", "page", "message", "asked"),
    [
        ("malformed", 2, PAGE + "response is not JSON", 1),
        ("drift", 3, PAGE + "record id=21 field email: missing", 1),
        ("html", 2, PAGE + "response is an HTML page, not JSON", 1),
        ("empty", None, "users count from {url}" + COUNT + ": the users list is empty", 1),
        # transient: 4 requests (--request-retries 3) in each of 3 task attempts (2 retries)
        (
            "reset",
            2,
            PAGE + "connection failed (connection reset by the server) (tried 4 times)",
            12,
        ),
        ("hang", 2, PAGE + "no answer within 10 s (tried 4 times)", 12),
    ],
    ids=["malformed", "drift", "html", "empty-users", "reset", "hang"],
)
def test_bad_input_fails_clearly_and_touches_nothing(tmp_path, fault, page, message, asked) -> None:
    """With the default retries: a permanent fault's URL is asked once, a transient one's 12
    times; a server that never answers fails the run after about 2¼ minutes (README)."""
    out = tmp_path / "out"
    before = _earlier_output(out)
    with make_server(users=30, fault=fault, fault_page=page) as server:
        started = time.monotonic()
        result = run_etl(
            *(server.url, out, "--page-size", "10"),
            cache=tmp_path / "cache",
            timeout=420,  # longer than any bound below, so they are what fails
            runner="local",
        )
        elapsed = time.monotonic() - started
        counts = requests_by_url(server.log())
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: " + message.format(n=page, url=server.url)), last
    failing = COUNT if page is None else f"/users?_page={page}&_limit=10"
    assert counts[failing] == asked, counts
    assert all(n == 1 for url, n in counts.items() if url != failing), counts
    if fault == "hang":  # 12 requests x the 10 s timeout, plus backoff and retry delays
        assert 120 <= elapsed < 200, elapsed
    else:
        assert elapsed < 90, elapsed
    assert snapshot(out) == before  # byte for byte, and no temporary files left


def test_nothing_is_written_outside_the_output_and_cache_dirs(tmp_path) -> None:
    """A run whose home, temporary folder and working directory are empty folders of its own:
    afterwards files exist only in --output-dir, --cache-dir and Prefect's home (its cache
    records), and Dask's two lock files in TMPDIR; home and the working directory stay empty."""
    sandbox = tmp_path / "sandbox"
    home, tmp, cwd = sandbox / "home", sandbox / "tmp", sandbox / "cwd"
    for folder in (home, tmp, cwd):
        folder.mkdir(parents=True)
    out, cache, prefect_home = sandbox / "out", sandbox / "cache", sandbox / "prefect-home"
    result = run_cli(
        *("run", "--api-url", "bundled", "--bundled-users", "12", "--resources", "all"),
        *("--runner", "dask", "--dask-processes", "--dask-workers", "2"),
        *("--output-dir", str(out), "--cache-dir", str(cache)),
        env={
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "PREFECT_HOME": str(prefect_home),
            "MPLCONFIGDIR": str(home / ".config" / "matplotlib"),
        },
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = {p.relative_to(sandbox).parts[0] for p in sandbox.rglob("*") if not p.is_dir()}
    assert written == {"out", "cache", "prefect-home", "tmp"}
    assert [list(folder.iterdir()) for folder in (home, cwd)] == [[], []]
    # Dask's worker space keeps two empty lock files, shared by every Dask process on the
    # machine (it removes the workers' own folders); nothing of the run's data
    dask_locks = {"dask-scratch-space/global.lock", "dask-scratch-space/purge.lock"}
    assert {str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir()} == dask_locks
    assert all((tmp / lock).stat().st_size == 0 for lock in dask_locks)
    assert len(list(out.glob("*_[0-9]*.csv"))) == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--resources", "users,secrets"],
            (
                "--resources: unknown resource 'secrets': choose from users, posts, comments, "
                "albums, photos, todos or 'all'"
            ),
        ),
        (["--dask-adapt-min", "3", "--dask-adapt-max", "2"], "dask_adapt_min (3) is above"),
        (
            ["--page-size", "many"],
            (
                "error: --page-size: Input should be a valid integer, unable to parse string as "
                "an integer (see placeholder-etl run --help)"
            ),
        ),
        (["--page-size", "0"], "error: --page-size: Input should be greater than or equal to 1"),
        (["--no-such-option"], "error: no such option: --no-such-option"),
        (["--bundled-users", "5"], "error: --bundled-users: only with --api-url bundled"),
    ],
    ids=[
        "resource",
        "adapt-bounds",
        "not-a-number",
        "out-of-bounds",
        "unknown-option",
        "bundled-users-alone",
    ],
)
def test_bad_settings_are_a_usage_error(tmp_path, args, message) -> None:
    """One style for every bad option: a line ``error: --option: why``, exit status 2."""
    result = run_cli("run", *args, "--output-dir", str(tmp_path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no box, no usage block
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_serve_api_rejects_an_unknown_fault() -> None:
    result = run_cli("serve-api", "--port", "0", "--fault", "gremlins", timeout=60)
    assert result.returncode == 2
    assert "gremlins" in result.stderr


def test_help_lists_the_commands() -> None:
    result = run_cli("--help", timeout=60)
    assert result.returncode == 0
    for command in ("run", "verify", "serve", "serve-api", "setup-alerts"):
        assert re.search(rf"\b{command}\b", result.stdout), command


def test_command_line_runs_start_no_heartbeat_thread_unless_asked(monkeypatch) -> None:
    """Prefect joins a flow run's heartbeat thread at its end, up to a second late."""
    from prefect.settings import get_current_settings

    from placeholder_etl.terminal import _no_heartbeat_unless_asked

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    with _no_heartbeat_unless_asked():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == 180
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    with _no_heartbeat_unless_asked():
        assert get_current_settings().flows.heartbeat_frequency is not None


@pytest.mark.parametrize("processes", ["--no-dask-processes", "--dask-processes"])
def test_without_a_prefect_api_the_run_brings_its_own(tmp_path, monkeypatch, processes) -> None:
    """`make run`'s path: no PREFECT_API_URL, so one ephemeral Prefect server for the run,
    shared with the Dask worker processes (they inherit its URL), and stopped at the end."""
    import socket

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    out = tmp_path / "out"
    result = run_etl(
        *("bundled", out, "--verbose", "--bundled-users", "12", processes),
        cache=tmp_path / "cache",
        runner=None,
        env={"PREFECT_HOME": str(tmp_path / "prefect-home")},  # a first start: creates its DB
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith(f"manifest: {out}/manifest_")
    workers = json.loads(next(out.glob("manifest_*.json")).read_text())["workers"]
    assert workers[0].startswith(
        "tcp://127.0.0.1:" if processes == "--dask-processes" else "inproc://"
    )
    announced = re.findall(r"Prefect server: (.*)", result.stdout)
    assert announced[0] == "none configured, starting a temporary one for this run…"
    started = re.match(
        r"temporary, at http://127\.0\.0\.1:(\d+)/api, ready in \d+\.\d s ", announced[1]
    )
    assert started, announced
    assert "in the Prefect UI" not in result.stdout  # the server is gone: no dead link
    with socket.socket() as probe:  # stopped: nothing listens there any more
        assert probe.connect_ex(("127.0.0.1", int(started.group(1)))) != 0


def test_the_run_the_cli_names_carries_its_artifacts_and_progress(tmp_path) -> None:
    """The one flow run: the table and summary artifacts, and progress reaching 100."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    out = tmp_path / "out"
    with make_server(users=300) as server:
        result = run_etl(
            server.url, out, "--page-size", "10", cache=tmp_path / "cache", runner="local"
        )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("progress: 100% · 30/30 pages · 300 rows") for line in lines)
    assert not [line for line in result.stderr.splitlines() if "Task run" in line]  # not verbose
    (named,) = re.findall(r"flow run ([0-9a-f-]{36})", result.stdout)
    (ui,) = [line for line in lines if line.startswith("in the Prefect UI: ")]
    assert ui.endswith(f"/runs/flow-run/{named}")
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[named]))
        )
    by_key = {a.key: a for a in artifacts}
    assert {"placeholder-etl-tables", "placeholder-etl-summary"} <= set(by_key)
    assert by_key["placeholder-etl-progress"].data == 100.0
    # the step after the pages, on the progress artifact and in the log
    assert by_key["placeholder-etl-progress"].description == (
        "Pages all in; assembling tables (2/2): users_flat"
    )
    assembling = [line for line in lines if line.startswith("progress: assembling")]
    assert assembling == [
        "progress: assembling 2 tables",
        "progress: assembling tables (1/2): users",
        "progress: assembling tables (2/2): users_flat",
    ]
    # for people: numbers grouped, sizes in units, steps named, every artifact described
    tables = by_key["placeholder-etl-tables"]
    assert json.loads(tables.data)[0]["rows"] == "300"
    assert re.fullmatch(r"[\d.,]+ (bytes|KiB)", json.loads(tables.data)[0]["size"])
    assert tables.description == f"Tables written from `{server.url}`, stamped " + (
        next(out.glob("manifest_*.json")).stem.removeprefix("manifest_")
    )
    summary = by_key["placeholder-etl-summary"].data
    assert "From `http://127.0.0.1:" in summary  # code, not a link to a server that is gone
    assert "30 pages in 4 tasks" in summary  # 2 slots: about two tasks each
    assert re.search(r"Took [\d.]+ s: counting [\d.]+ s, extracting [\d.]+ s, assembling", summary)
    assert all(a.description for a in artifacts), [a.key for a in artifacts]


def test_every_request_in_flight_has_a_pooled_connection(tmp_path) -> None:
    """--in-flight 32 over a slow API: 32 requests at once, and no connection discarded
    because the pool was smaller ("Connection pool is full")."""
    with make_server(users=640, latency=0.3) as server:
        result = run_etl(
            *(server.url, tmp_path / "out", "--verbose", "--in-flight", "32"),
            *("--page-size", "10", "--pages-per-task", "64"),
            cache=tmp_path / "cache",
            runner="local",
        )
        log = server.log()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Connection pool is full" not in result.stderr
    starts = sorted(entry["t"] for entry in log if "_limit=10" in entry["path"])
    assert len(starts) == 64
    # the 0.3 s latency: requests that overlap were in flight together
    assert max(sum(1 for t in starts if s <= t < s + 0.25) for s in starts) >= 17


def test_without_a_prefect_api_a_server_running_here_is_used(
    tmp_path, monkeypatch, prefect_api_url
) -> None:
    """No PREFECT_API_URL, but a server where `prefect server start` listens: the run uses it
    (no temporary server) and links the run in its UI."""
    from urllib.parse import urlsplit

    where = urlsplit(prefect_api_url)
    monkeypatch.delenv("PREFECT_API_URL")
    env = {"PREFECT_SERVER_API_HOST": where.hostname, "PREFECT_SERVER_API_PORT": str(where.port)}
    result = run_etl("bundled", tmp_path / "out", "--bundled-users", "3", runner="local", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    used = f"http://{where.hostname}:{where.port}/api"
    assert f"Prefect server: {used} (running here; PREFECT_API_URL is not set)" in result.stdout
    assert "temporary" not in result.stdout
    run_id = json.loads(next((tmp_path / "out").glob("manifest_*.json")).read_text())["flow_run_id"]
    assert re.search(rf"in the Prefect UI: http://\S+/runs/flow-run/{run_id}", result.stdout)
