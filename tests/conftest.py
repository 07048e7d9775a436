"""Shared fixtures, and the suite's isolation from the machine it runs on.

Tiers, by folder (and marker): ``tests/unit`` (no servers, no Dask, no kernels; ``make
test-quick``), ``tests/integration`` (loopback servers, a Prefect server, Dask processes),
``tests/e2e`` (the command line, notebooks in kernels, deployments through a worker).

Before Prefect is imported anywhere, the session gets a Prefect home and a page cache of its
own (removed at the end), no Prefect API or key from outside, and no telemetry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_SCRATCH = Path(tempfile.mkdtemp(prefix="placeholder-etl-tests-"))
os.environ["PREFECT_HOME"] = str(_SCRATCH / "prefect-home")
os.environ["PLACEHOLDER_ETL_CACHE_DIR"] = str(_SCRATCH / "cache")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DASK_LOGGING__DISTRIBUTED"] = "warning"
_FROM_OUTSIDE = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_PROFILE",
    "DASK_SCHEDULER_ADDRESS",
    "SATURN_BASE_URL",
    "PLACEHOLDER_ETL_API_URL",
    "PLACEHOLDER_ETL_OUTPUT_DIR",
    "PLACEHOLDER_ETL_NOTIFY_WEBHOOK",
)
for _name in _FROM_OUTSIDE:
    os.environ.pop(_name, None)

from placeholder_api.server import make_server
from tests.helpers import WebhookReceiver
from tests.s3server import weed_server

TIERS = ("unit", "integration", "e2e")


def pytest_configure(config: pytest.Config) -> None:
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: tests in tests/{tier}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier (its folder)."""
    for item in items:
        for tier in TIERS:
            if f"tests/{tier}/" in item.nodeid or f"tests{os.sep}{tier}{os.sep}" in item.nodeid:
                item.add_marker(getattr(pytest.mark, tier))


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """A real Prefect API server (SQLite) for the whole session, also exported to children."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    # Prefect configures logging once per process, at its first run, replacing the root
    # logger's handlers: done here, before a test's call phase, so caplog sees every run.
    ensure_logging_setup()
    with prefect_test_harness(server_startup_timeout=120):
        url = get_current_settings().api.url
        assert url, "the Prefect test harness did not set an API URL"
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def s3() -> Iterator:
    """SeaweedFS (``weed mini``) on free loopback ports, its AWS_* variables exported for the
    session: the flow, Dask workers and CLI subprocesses find the store the standard way.

    One server for the session: fsspec keeps one S3 filesystem per set of options, and the
    endpoint comes from the environment, so a second server on other ports would be
    reached through the first one's cached filesystem."""
    with weed_server() as server:
        saved = {name: os.environ.get(name) for name in server.env}
        os.environ.update(server.env)
        try:
            yield server
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@pytest.fixture
def bucket(s3) -> str:
    """A fresh, empty bucket."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def api() -> Iterator:
    """The bundled API server with 25 users, on a free loopback port."""
    with make_server(users=25, seed=7) as server:
        yield server


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A page cache of this test's own."""
    return tmp_path / "cache"


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    """A local webhook receiver."""
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()
