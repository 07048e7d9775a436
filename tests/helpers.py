"""Helpers shared by the tests: run the CLI or the flow, snapshot folders, the seed's oracle."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None, cwd: Path | None = None
):
    """Run ``placeholder-etl ARGS`` in a subprocess of its own process group (in ``cwd``).

    On timeout the whole group (Dask workers, servers it started) is killed before the
    ``TimeoutExpired`` is raised, so nothing outlives the test.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "placeholder_etl", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise
    finally:
        kill_group(proc)  # anything the command left running in its group
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_etl(
    api_url: str,
    out: Path,
    *options: str,
    cache: Path | None = None,
    runner: str | None = None,
    **kwargs: Any,
):
    """``placeholder-etl run`` from ``api_url`` into ``out``, then ``options``.

    ``cache`` is the page cache folder (None: ``--no-cache``); ``runner`` the task runner
    (None: the CLI's default, Dask; a test that wants threads names ``"local"``). Keywords
    are :func:`run_cli`'s.
    """
    return run_cli(
        *("run", "--api-url", api_url, "--output-dir", str(out)),
        *(("--runner", runner) if runner else ()),
        *(("--cache-dir", str(cache)) if cache else ("--no-cache",)),
        *options,
        **kwargs,
    )


#: The tutorial's users table header, written out (not read from the code under test).
SEED_HEADER = ["ID", "Name", "Username", "Email", "Address", "PhoneNumber", "Company"]


def make_command(*args: str, directory: Path = ROOT) -> list[str]:
    """``make -C directory ARGS`` with this interpreter's environment as the Makefile's VENV.

    ``-o`` marks the install stamp as up to date: the targets run without reinstalling (a fresh
    clone would otherwise build a venv of its own, and an editable install would be re-pointed).
    """
    venv = Path(sys.prefix)
    stamp = venv / ".installed"
    return [
        "make",
        "--no-print-directory",
        "-C",
        str(directory),
        f"VENV={venv}",
        "-o",
        str(stamp),
        *args,
    ]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group (it must have been started in a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_flow(api_url: str, out: Path | str, cache_dir: Path | str, **options: Any):
    """Run the flow in this process with the CLI's option names (``page_size=10``...).

    The runner is the CLI's default (Dask) unless the test names one (``runner="local"``:
    threads); the other defaults suit a small test: 10 records a page, one page a task,
    short retry delays. ``cache_dir`` "" keeps the default cache. Returns the flow's
    :class:`~placeholder_etl.core.results.RunResult`.
    """
    from placeholder_etl.flow import etl
    from placeholder_etl.options import settings_from_options

    defaults = {"page_size": 10, "pages_per_task": 1, "retry_delay": 0.05}
    settings = settings_from_options(
        defaults
        | options
        | {"api_url": api_url, "output_dir": str(out), "cache_dir": str(cache_dir)}
    )
    return etl(**settings.flow_parameters())


def run_logs(flow_run_id: str | None = None) -> str:
    """The log lines a flow run sent to the Prefect API (the latest run when no id is given),
    as the UI shows them. Prefect's queued logs are sent first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, LogSort

    from placeholder_etl.prefect_api import drain

    drain()
    with get_client(sync_client=True) as client:
        if flow_run_id is None:
            (latest,) = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
            flow_run_id = str(latest.id)
        else:
            client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
            sort=LogSort.TIMESTAMP_ASC,
        )
    return "\n".join(log.message for log in logs)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes (to prove nothing changed)."""
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def gaps_by_url(log: list[dict]) -> dict[str, list[float]]:
    """Seconds between successive requests to each URL, from the API server's request log."""
    times: dict[str, list[float]] = {}
    for entry in log:
        times.setdefault(entry["path"], []).append(entry["t"])
    return {path: [b - a for a, b in itertools.pairwise(t)] for path, t in times.items()}


def requests_by_url(log: list[dict]) -> dict[str, int]:
    """How many times each URL was requested, from the API server's request log."""
    counts: dict[str, int] = {}
    for entry in log:
        counts[entry["path"]] = counts.get(entry["path"], 0) + 1
    return counts


def seed_transform(users: list[dict]) -> str:
    """The original tutorial's transform and load, as it was written (the oracle)."""
    rows = []
    for user in users:
        rows.append(
            {
                "ID": user["id"],
                "Name": user["name"],
                "Username": user["username"],
                "Email": user["email"],
                "Address": f"{user['address']['street']}, {user['address']['suite']}, "
                f"{user['address']['city']}",
                "PhoneNumber": user["phone"],
                "Company": user["company"]["name"],
            }
        )
    return pd.DataFrame(rows).to_csv(index=False)


def listening_sockets(pids: set[int]) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket the processes ``pids`` listen on."""
    import psutil

    found = set()
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return found


def process_tree(pid: int) -> set[int]:
    """``pid`` and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        return {pid} | {child.pid for child in root.children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


class WebhookReceiver:
    """A Slack-style webhook endpoint on loopback that keeps every JSON body it is sent."""

    def __init__(self, status: int = 200) -> None:
        received: list[dict] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/T000/B000/secret"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[dict]:
        """Wait until ``count`` messages arrived (or time out); return them all."""
        import time

        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return list(self.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
