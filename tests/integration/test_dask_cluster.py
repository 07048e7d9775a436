"""The flow on an existing Dask cluster: real `dask scheduler` and `dask worker` processes."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from distributed import Client

from placeholder_api.server import make_server
from placeholder_etl.cluster import WorkerSetupError, dashboard_link, local_cluster_kwargs
from tests.dask_cluster import running_cluster, start_cluster, stop_cluster
from tests.helpers import listening_sockets, process_tree, run_etl, run_flow

pytestmark = pytest.mark.usefixtures("prefect_api_url")

START_WORKER = "from distributed.cli.dask_worker import main; sys.argv[0] = 'dask-worker'; main()"
#: A worker that cannot import the package, and one with another version of it.
WITHOUT_PACKAGE = "import sys; sys.modules['placeholder_etl'] = None; " + START_WORKER
OTHER_VERSION = (
    "import sys, placeholder_etl; placeholder_etl.__version__ = '0.0.1-other'; " + START_WORKER
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[str, set[str]]]:
    """A real cluster of one scheduler and two worker processes; yields (address, workers)."""
    with running_cluster(tmp_path_factory.mktemp("dask")) as found:
        yield found


def test_tasks_run_on_the_external_workers_and_match_a_local_run(api, tmp_path, cluster) -> None:
    address, workers = cluster
    common = {"page_size": 5, "pages_per_task": 1, "cache": False}
    on_cluster = run_flow(
        api.url,
        tmp_path / "dask",
        tmp_path / "cache",
        runner="dask",
        dask_address=address,
        **common,
    ).manifest
    local = run_flow(
        api.url, tmp_path / "local", tmp_path / "cache", runner="local", **common
    ).manifest
    assert set(on_cluster.workers) <= workers
    assert len(set(on_cluster.workers)) == 2  # five tasks spread over both workers
    assert on_cluster.tables["users"].sha256 == local.tables["users"].sha256
    dask_csv = tmp_path / "dask" / on_cluster.tables["users"].file
    local_csv = tmp_path / "local" / local.tables["users"].file
    assert dask_csv.read_bytes() == local_csv.read_bytes()


def test_the_cli_takes_the_scheduler_from_the_environment(api, tmp_path, cluster) -> None:
    address, workers = cluster
    result = run_etl(
        api.url, tmp_path / "out", "--verbose", runner=None, env={"DASK_SCHEDULER_ADDRESS": address}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Dask cluster: 2 workers, 4 threads" in result.stderr
    manifest = next((tmp_path / "out").glob("manifest_*.json")).read_text()
    assert any(worker in manifest for worker in workers)


@pytest.mark.parametrize(
    ("worker_code", "answer"),
    [(WITHOUT_PACKAGE, "missing: ModuleNotFoundError"), (OTHER_VERSION, ": 0.0.1-other")],
    ids=["missing", "other-version"],
)
def test_workers_that_cannot_run_the_tasks_are_refused_clearly(
    api, tmp_path, worker_code, answer
) -> None:
    address, processes = start_cluster(tmp_path, workers=1, worker_code=worker_code)
    try:
        with pytest.raises(WorkerSetupError) as caught:
            run_flow(
                api.url, tmp_path / "out", tmp_path / "cache", runner="dask", dask_address=address
            )
    finally:
        stop_cluster(processes)
    message = str(caught.value)
    assert message.startswith("Dask workers cannot run the tasks (tcp://127.0.0.1:")
    assert answer in message
    assert "pip install -e ." in message
    assert api.stats()["requests"] == 1  # the count: no page was fetched
    assert not (tmp_path / "out").exists()


def test_workers_on_other_machines_ship_their_parts_back(api, tmp_path, cluster, monkeypatch):
    """Workers that share no disk with the flow return their rows in the result; the flow
    writes them under ``<cache>/received``, a folder only shipping writes, and the tables
    come from there: with every page file gone, a cached rerun still writes the same tables
    without fetching a page."""
    address, _ = cluster
    cache = tmp_path / "cache"
    monkeypatch.setenv("PLACEHOLDER_ETL_SHIP_PARTS", "1")  # every worker counts as remote
    common = {"page_size": 5, "pages_per_task": 2, "runner": "dask", "dask_address": address}
    shipped = run_flow(api.url, tmp_path / "dask", cache, **common).manifest
    received = sorted((cache / "received").rglob("*.csv"))
    assert len(received) == 2 * shipped.chunks  # users and users_flat of every chunk
    for page in [p for p in (cache / "pages").rglob("*") if p.is_file()]:
        page.unlink()
    api.reset_stats()
    again = run_flow(api.url, tmp_path / "again", cache, **common).manifest
    assert api.stats()["requests"] == 1  # the count: the rows came from what was shipped
    assert again.cached_chunks == again.chunks
    local = run_flow(
        api.url, tmp_path / "local", tmp_path / "other", cache=False, page_size=5, runner="local"
    )
    for table in ("users", "users_flat"):
        assert shipped.tables[table].sha256 == local.manifest.tables[table].sha256
        assert again.tables[table].sha256 == local.manifest.tables[table].sha256


def test_a_worker_killed_mid_run_loses_no_rows(tmp_path) -> None:
    """SIGKILL one of two workers while it runs a task: Dask reruns that task on the other,
    which fetches only the pages that were not checkpointed yet."""
    address, processes = start_cluster(tmp_path, workers=2)
    scheduler, victim = processes[0], processes[1]
    try:
        with Client(address, timeout=30) as client:
            pids = client.run(os.getpid)  # worker address -> its process id
        doomed = process_tree(victim.pid)
        (victim_address,) = [a for a, pid in pids.items() if pid in doomed]
        with make_server(users=3000, latency=0.1) as server:
            held: list[list[str]] = []

            def kill_while_it_works() -> None:
                with Client(address, timeout=30) as watcher:
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        tasks = watcher.processing().get(victim_address, [])
                        if tasks and server.stats()["requests"] >= 8:
                            held.append(list(tasks))
                            os.killpg(victim.pid, signal.SIGKILL)  # the nanny and its worker
                            return
                        time.sleep(0.05)

            killer = threading.Thread(target=kill_while_it_works)
            killer.start()
            manifest = run_flow(
                *(server.url, tmp_path / "out", tmp_path / "cache"),
                runner="dask",
                dask_address=address,
                page_size=100,
                pages_per_task=5,
                in_flight=2,
                cache=False,
            ).manifest
            killer.join()
            pages = server.stats()["pages"]["users"]
        assert held, "the victim never held a task"
        assert victim.poll() is not None
        # its tasks ran again on the other worker, reusing the pages they had finished: only
        # the pages in flight (2 task threads x 2 requests) were fetched twice (page 1 is
        # also the count)
        twice = [n for n, hits in pages.items() if hits > 1 and n != "1"]
        assert len(twice) <= 2 * 2, twice
        users = (tmp_path / "out" / manifest.tables["users"].file).read_text()
        ids = [int(line.split(",", 1)[0]) for line in users.splitlines()[1:]]
        assert ids == list(range(1, 3001))  # every row, once, in order
        assert victim_address not in manifest.workers
    finally:
        stop_cluster([scheduler, *processes[1:]])


@pytest.mark.parametrize("processes", [False, True])
def test_local_clusters_listen_on_loopback_only(processes) -> None:
    from distributed import LocalCluster

    me = os.getpid()
    before = listening_sockets(process_tree(me))  # other tests' servers in this process
    with (
        LocalCluster(**local_cluster_kwargs(processes, workers=1)) as cluster,
        Client(cluster) as client,
    ):
        opened = listening_sockets(process_tree(me)) - before
        assert cluster.scheduler_address.startswith("tcp://" if processes else "inproc://")
        link = dashboard_link(client)  # what the flow logs
        assert link.startswith("http://127.0.0.1:"), link
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(link, timeout=30) as page:
            assert page.status == 200
            assert b"Dask" in page.read()
    assert opened  # at least the dashboard
    assert {ip for ip, _ in opened} == {"127.0.0.1"}


def test_the_default_cluster_fits_the_run(api, tmp_path) -> None:
    """A small run gets one worker in the flow's process; asking gives worker processes."""
    common = {"runner": "dask", "cache": False}
    cache = tmp_path / "cache"
    small = run_flow(api.url, tmp_path / "auto", cache, **common).manifest
    assert len(small.workers) == 1
    assert small.workers[0].startswith("inproc://")
    procs = run_flow(
        api.url, tmp_path / "procs", cache, dask_processes=True, dask_threads=1, **common
    ).manifest
    assert procs.workers
    assert all(w.startswith("tcp://127.0.0.1:") for w in procs.workers)
    assert small.tables["users"].sha256 == procs.tables["users"].sha256
