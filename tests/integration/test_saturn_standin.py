"""``dask_saturn.SaturnCluster`` against the Saturn API stand-in and a real Dask scheduler/worker.

The scheduler and the worker are real processes on loopback; only Saturn's HTTP API (which would
start them on Kubernetes) is faked, by :mod:`tests.saturn_standin`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import distributed
import pytest
from distributed.security import Security
from prefect import flow, task

from tests.integration.saturn_standin import CertificateAuthority, StandIn, TLSFiles, saturn_api

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token"
SIZES = {"n_workers": 1, "worker_size": "large", "scheduler_size": "large", "nthreads": 2}
STARTUP_TIMEOUT = 45.0

# a scheduler or worker that never comes up fails the test, not the whole suite's budget
pytestmark = pytest.mark.timeout(120)


@dataclass
class Dask:
    """A real ``dask scheduler`` and one ``dask worker``, as subprocesses."""

    address: str
    worker_address: str
    processes: Sequence[subprocess.Popen]


def _tls_args(files: TLSFiles | None) -> list[str]:
    if files is None:
        return []
    return [
        *("--tls-ca-file", str(files.ca_file)),
        *("--tls-cert", str(files.cert)),
        *("--tls-key", str(files.key)),
    ]


def _log(directory: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in directory.glob("*.log"))


def _stop(processes: Sequence[subprocess.Popen]) -> None:
    for process in processes:  # the worker first, so it doesn't try to reconnect
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def _scheduler_address(scheduler_file: Path) -> str | None:
    """The address in a ``--scheduler-file``, once it is completely written."""
    try:
        return json.loads(scheduler_file.read_text())["address"]
    except (OSError, ValueError, KeyError):
        return None


def start_dask(directory: Path, ca: CertificateAuthority | None = None) -> Dask:
    """Start a scheduler and a worker on 127.0.0.1 (``tls://`` when ``ca`` is given)."""
    directory.mkdir(parents=True, exist_ok=True)
    scheduler_file = directory / "scheduler.json"
    scheduler_tls = ca.write_files(directory / "tls", "scheduler") if ca else None
    worker_tls = ca.write_files(directory / "tls", "worker") if ca else None
    # The worker unpickles this module's Prefect task, so it must import `tests.*`; it also needs
    # PREFECT_API_URL (exported by the `prefect_api_url` fixture) before it starts.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "DASK_LOGGING__DISTRIBUTED": "warning"}
    common = ["--host", "127.0.0.1", "--no-dashboard"]
    commands = {
        "scheduler": [
            *("-m", "distributed.cli.dask_scheduler", "--port", "0"),
            *("--scheduler-file", str(scheduler_file)),
            *(["--protocol", "tls"] if ca else []),
            *_tls_args(scheduler_tls),
        ],
        "worker": [
            *("-m", "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file)),
            *("--no-nanny", "--nthreads", "2", "--name", "standin-worker"),
            *("--local-directory", str(directory / "worker")),
            *_tls_args(worker_tls),
        ],
    }
    processes: list[subprocess.Popen] = []
    try:
        for name, args in commands.items():
            with (directory / f"{name}.log").open("wb") as log:
                processes.insert(
                    0,
                    subprocess.Popen(
                        [sys.executable, *args, *common],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=directory,
                    ),
                )
            if name == "scheduler":
                deadline = time.monotonic() + STARTUP_TIMEOUT
                while (address := _scheduler_address(scheduler_file)) is None:
                    assert processes[0].poll() is None, _log(directory)
                    assert time.monotonic() < deadline, _log(directory)
                    time.sleep(0.05)
        security = Security()
        if ca is not None:
            cert, key = ca.issue("test-client")
            security = Security(
                tls_ca_file=ca.ca_pem.decode(),
                tls_client_cert=cert.decode(),
                tls_client_key=key.decode(),
                require_encryption=True,
            )
        with distributed.Client(address, security=security, timeout=STARTUP_TIMEOUT) as client:
            client.wait_for_workers(1, timeout=STARTUP_TIMEOUT)
            [worker_address] = client.scheduler_info()["workers"]
    except BaseException:
        _stop(processes)
        raise
    return Dask(address, worker_address, processes)


@pytest.fixture(scope="module")
def dask_tcp(prefect_api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dask]:
    """A plain-``tcp://`` scheduler and worker shared by this module's tests."""
    assert os.environ["PREFECT_API_URL"] == prefect_api_url
    dask = start_dask(tmp_path_factory.mktemp("dask-tcp"))
    try:
        # not the default client: DaskTaskRunner would use it instead of its own cluster
        with distributed.Client(
            dask.address, timeout=STARTUP_TIMEOUT, set_as_default=False
        ) as client:
            # Importing Prefect's task engine takes the worker several seconds: do it in one of
            # its threads while the tests before the Prefect one run. (A builtin, so that
            # unpickling the call does not import anything in the worker's event loop.)
            warm_up = client.submit(exec, "import prefect.task_engine", pure=False)
            yield dask
            del warm_up
    finally:
        _stop(dask.processes)


@pytest.fixture
def saturn_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Point dask_saturn at a stand-in: ``saturn_env(standin, internal=True)``."""
    for name in ("SATURN_RESOURCE_TYPE", "SATURN_VERSION", "PREFECT__CONTEXT__FLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)

    def point(standin: StandIn, *, internal: bool = True) -> None:
        for name, value in standin.env(internal=internal).items():
            monkeypatch.setenv(name, value)

    return point


def assert_authorized(standin: StandIn) -> None:
    """Every request carried the token and dask_saturn's version header."""
    assert standin.requests
    for request in standin.requests:
        assert request.authorization == f"token {TOKEN}", request
        assert request.headers.get("X-Dask-Saturn-Version") == "0.4.4", request


def test_saturn_cluster_runs_on_the_real_scheduler(dask_tcp: Dask, saturn_env) -> None:
    from dask_saturn import SaturnCluster

    with saturn_api(dask_tcp.address, TOKEN) as standin:
        saturn_env(standin)
        cluster = SaturnCluster(
            n_workers=2, worker_size="large", scheduler_size="large", nthreads=2
        )
        assert cluster.scheduler_address == dask_tcp.address
        assert cluster.name == standin.cluster_id
        assert cluster.dashboard_link.startswith(standin.url)
        assert cluster.shutdown_on_close is False
        assert cluster.status == "running"
        assert "workers=1, threads=2" in repr(cluster)  # via GET .../scheduler_info

        with distributed.Client(cluster) as client:
            assert client.submit(lambda: 1 + 1).result(timeout=30) == 2
            ran_on = client.submit(lambda: distributed.get_worker().address).result(timeout=30)
            assert ran_on == dask_tcp.worker_address

        cluster.scale(3)
        cluster.adapt(minimum=1, maximum=4)
        assert standin.n_workers == 3
        assert standin.adapt_bounds == (1, 4)
        assert not standin.calls("POST", f"{standin.cluster_path}/close")
        cluster.close()
        assert cluster.status == "closed"

    assert_authorized(standin)
    [create] = standin.calls("POST", "/api/dask_clusters")
    assert create.json == {
        "n_workers": 2,
        "worker_size": "large",
        "scheduler_size": "large",
        "nthreads": 2,
    }
    assert create.query == {}  # an internal client: no ?is_external, no certificate
    assert not standin.calls("POST", f"{standin.cluster_path}/csr")
    assert standin.calls("GET", "/api/dask_clusters/info")
    assert standin.calls("GET", f"{standin.cluster_path}/info")
    assert [r.json for r in standin.calls("POST", f"{standin.cluster_path}/scale")] == [{"n": 3}]
    assert len(standin.calls("POST", f"{standin.cluster_path}/close")) == 1


@pytest.mark.parametrize(
    ("kwargs", "resource_type", "closes"),
    [
        pytest.param({}, None, False, id="default-keeps-cluster"),
        pytest.param({"shutdown_on_close": True}, None, True, id="shutdown_on_close"),
        pytest.param({}, "PrefectCloudFlowRun", True, id="prefect-resource-forces-close"),
    ],
)
def test_context_manager_closes_only_with_shutdown_on_close(
    dask_tcp: Dask,
    saturn_env,
    monkeypatch: pytest.MonkeyPatch,
    kwargs: dict,
    resource_type: str | None,
    closes: bool,
) -> None:
    from dask_saturn import SaturnCluster

    with saturn_api(dask_tcp.address, TOKEN) as standin:
        saturn_env(standin)
        if resource_type:
            monkeypatch.setenv("SATURN_RESOURCE_TYPE", resource_type)
        with SaturnCluster(**SIZES, **kwargs) as cluster:
            assert cluster.shutdown_on_close is closes
        assert bool(standin.calls("POST", f"{standin.cluster_path}/close")) is closes
        assert standin.status == ("closed" if closes else "running")


def test_external_client_gets_its_tls_certificate_from_saturn(tmp_path: Path, saturn_env) -> None:
    """Outside Saturn (``SATURN_IS_INTERNAL`` unset), dask_saturn asks for a client certificate."""
    from dask_saturn import SaturnCluster

    ca = CertificateAuthority()
    dask = start_dask(tmp_path / "dask-tls", ca)
    try:
        assert dask.address.startswith("tls://127.0.0.1:")
        with saturn_api(dask.address, TOKEN, ca=ca) as standin:
            saturn_env(standin, internal=False)
            cluster = SaturnCluster(**SIZES)
            assert cluster.security.require_encryption
            with distributed.Client(cluster) as client:
                ran_on = client.submit(lambda: distributed.get_worker().address).result(30)
            assert ran_on == dask.worker_address
            cluster.close()
    finally:
        _stop(dask.processes)

    assert_authorized(standin)
    [create] = standin.calls("POST", "/api/dask_clusters")
    [info] = standin.calls("GET", f"{standin.cluster_path}/info")
    assert create.query == info.query == {"is_external": ["true"]}
    [csr] = standin.calls("POST", f"{standin.cluster_path}/csr")
    assert csr.body.startswith(b"-----BEGIN CERTIFICATE REQUEST-----")
    [signed] = ca.signed
    assert signed.subject.rfc4514_string() == f"CN=Dask Client {standin.cluster_id}"


def test_external_client_refuses_a_plain_tcp_scheduler(dask_tcp: Dask, saturn_env) -> None:
    """External clients require encryption: a ``tcp://`` address only works from inside."""
    from dask_saturn import SaturnCluster

    with saturn_api(dask_tcp.address, TOKEN, ca=CertificateAuthority()) as standin:
        saturn_env(standin, internal=False)
        cluster = SaturnCluster(**SIZES)  # only logs that its worker plugin failed
        with pytest.raises(RuntimeError, match="encryption required"):
            # not the default client: a failed one lingers until collected, and
            # distributed.get_client() (DaskTaskRunner calls it) would find it
            distributed.Client(cluster, timeout=5, set_as_default=False)


def test_pending_cluster_is_polled_until_ready(dask_tcp: Dask, saturn_env) -> None:
    from dask_saturn import SaturnCluster

    with saturn_api(dask_tcp.address, TOKEN, pending_polls=1, warnings=["spot"]) as standin:
        saturn_env(standin)
        cluster = SaturnCluster(**SIZES, scheduler_service_wait_timeout=1)
        assert cluster.scheduler_address == dask_tcp.address
    assert len(standin.calls("POST", "/api/dask_clusters")) == 2


@pytest.mark.parametrize(
    ("standin_kwargs", "cluster_kwargs", "token", "message"),
    [
        pytest.param({}, {}, "wrong", "Invalid or missing Saturn token", id="bad-token"),
        pytest.param({}, {"worker_size": "huge"}, TOKEN, "not a valid option", id="bad-size"),
        pytest.param({"errors": ["no quota"]}, {}, TOKEN, "no quota", id="error-status"),
        pytest.param({"pending_polls": 9}, {}, TOKEN, "Retry in a few minutes", id="timeout"),
    ],
)
# a SaturnCluster that failed in __init__ has no cluster_url: Cluster.__del__ then reads
# .status == "closed" (a str, not Status.closed) and warns that the cluster is unclosed
@pytest.mark.filterwarnings("ignore:unclosed cluster:ResourceWarning")
def test_saturn_api_errors_raise(
    saturn_env,
    monkeypatch: pytest.MonkeyPatch,
    standin_kwargs: dict,
    cluster_kwargs: dict,
    token: str,
    message: str,
) -> None:
    from dask_saturn import SaturnCluster

    with saturn_api("tcp://127.0.0.1:9", TOKEN, **standin_kwargs) as standin:
        saturn_env(standin)
        monkeypatch.setenv("SATURN_TOKEN", token)
        with pytest.raises(ValueError, match=message):
            SaturnCluster(**{**SIZES, **cluster_kwargs}, scheduler_service_wait_timeout=0)
    assert not standin.calls("GET", f"{standin.cluster_path}/info")


def test_missing_saturn_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from dask_saturn import SaturnCluster

    monkeypatch.delenv("SATURN_BASE_URL", raising=False)
    with pytest.raises(RuntimeError, match="SATURN_BASE_URL"):
        SaturnCluster()
    monkeypatch.setenv("SATURN_BASE_URL", "http://127.0.0.1:9/")
    monkeypatch.delenv("SATURN_TOKEN", raising=False)
    with pytest.raises(RuntimeError, match="SATURN_TOKEN"):
        SaturnCluster()


@task
def where_am_i() -> str:
    """The address of the Dask worker running this task."""
    return distributed.get_worker().address


@flow(name="saturn-standin")
def on_saturn() -> str:
    """Run one task through the flow's task runner."""
    return where_am_i.submit().result()


@pytest.mark.usefixtures("prefect_api_url")
def test_prefect_dask_task_runner_on_saturn_cluster(dask_tcp: Dask, saturn_env) -> None:
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(
        cluster_class="dask_saturn.SaturnCluster",
        cluster_kwargs={**SIZES, "shutdown_on_close": True},
    )
    with saturn_api(dask_tcp.address, TOKEN) as standin:
        saturn_env(standin)
        assert on_saturn.with_options(task_runner=runner)() == dask_tcp.worker_address
    assert_authorized(standin)
    [create] = standin.calls("POST", "/api/dask_clusters")
    assert create.json == SIZES
    assert len(standin.calls("POST", f"{standin.cluster_path}/close")) == 1
    assert standin.status == "closed"


@pytest.mark.usefixtures("prefect_api_url")
def test_the_etl_flow_runs_on_saturn_by_default_inside_saturn(
    dask_tcp: Dask, saturn_env, tmp_path: Path
) -> None:
    """Inside a Saturn resource (SATURN_BASE_URL set) `--runner dask` means SaturnCluster."""
    from placeholder_api.server import make_server
    from tests.helpers import run_flow

    with make_server(users=12) as api, saturn_api(dask_tcp.address, TOKEN) as standin:
        saturn_env(standin)
        manifest = run_flow(
            *(api.url, tmp_path / "out", tmp_path / "cache"),
            runner="dask",
            dask_workers=1,
            cache=False,
            page_size=1000,
            dask_worker_size="large",
            dask_scheduler_size="large",
        ).manifest
    assert manifest.workers == [dask_tcp.worker_address]
    assert manifest.tables["users"].rows == 12
    assert_authorized(standin)
    [create] = standin.calls("POST", "/api/dask_clusters")
    assert create.json["n_workers"] == 1
    assert create.json["worker_size"] == "large"
