"""Every configuration a user can choose, run end to end through the command line and verified.

Four choices: the runner (threads; Dask in the flow's process, the default under 200,000
records; Dask worker processes; an existing ``dask scheduler`` with two ``dask worker``
processes), the output (a local folder; S3 on SeaweedFS), the format (CSV; Parquet) and the
page cache (on; off). The eight runs below hold every pair of values together (a pairwise
covering array: each runner with both outputs, both formats and both cache settings; each
output with both formats and both cache settings; each format with both cache settings).
Each run's output is checked with ``placeholder-etl verify`` (every table there with its
manifest's size, sha256 and rows) and its users table against the seed transform; a run with
the cache on is run again and must reuse every page and write the same bytes. Then a run on
Dask is killed (SIGKILL) and resumed, to either output.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import fsspec
import pandas as pd
import pytest
import requests

from placeholder_api.server import make_server
from placeholder_etl.core.resources import RESOURCE_NAMES, tables_of
from placeholder_etl.core.results import Manifest
from tests.dask_cluster import running_cluster
from tests.helpers import kill_group, run_cli, seed_transform

pytestmark = pytest.mark.usefixtures("prefect_api_url")

#: (runner, output, format, cache): every pair of values appears in some row.
MATRIX = [
    ("threads", "local", "csv", "on"),
    ("threads", "s3", "parquet", "off"),
    ("dask", "local", "parquet", "off"),
    ("dask", "s3", "csv", "on"),
    ("dask-processes", "local", "csv", "off"),
    ("dask-processes", "s3", "parquet", "on"),
    ("dask-external", "local", "parquet", "on"),
    ("dask-external", "s3", "csv", "off"),
]


def test_the_matrix_holds_every_pair() -> None:
    """The rows above are pairwise: no two choices' values are left untried together."""
    values = [sorted({row[i] for row in MATRIX}) for i in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            seen = {(row[i], row[j]) for row in MATRIX}
            assert seen == {(a, b) for a in values[i] for b in values[j]}, (i, j)


@pytest.fixture(scope="module")
def dask_external(s3, tmp_path_factory) -> Iterator[tuple[str, set[str]]]:
    """A scheduler and two worker processes started by hand (after ``s3``: the workers find
    the store through the AWS_* variables they inherit). Yields (address, worker addresses)."""
    with running_cluster(tmp_path_factory.mktemp("dask")) as found:
        yield found


def runner_options(runner: str, address: str) -> tuple[str, ...]:
    """The command-line options of a runner (none: the CLI's default, Dask in-process)."""
    return {
        "threads": ("--runner", "local"),
        "dask": (),
        "dask-processes": ("--dask-workers", "2"),  # implies worker processes
        "dask-external": ("--dask-address", address),
    }[runner]


def check_workers(manifest: Manifest, runner: str, external: set[str]) -> None:
    """The run ran where the configuration says (the manifest records each chunk's worker)."""
    workers = set(manifest.workers)
    if runner == "threads":
        assert not any("://" in w for w in workers), workers
    elif runner == "dask":
        assert all(w.startswith("inproc://") for w in workers), workers
    elif runner == "dask-processes":
        assert all(w.startswith("tcp://127.0.0.1:") for w in workers), workers
        assert not workers & external
    else:
        assert workers <= external, workers


def users_frame(url: str, manifest: Manifest) -> pd.DataFrame:
    """The committed users table, as text, whatever its format."""
    with fsspec.open(f"{url}/{manifest.tables['users'].file}", "rb") as handle:
        if manifest.format == "csv":
            return pd.read_csv(handle, dtype=str, keep_default_na=False)
        return pd.read_parquet(handle).astype(str)


def verified(output: str) -> Manifest:
    """``placeholder-etl verify OUTPUT`` passes; the newest manifest."""
    checked = run_cli("verify", output, timeout=120)
    assert checked.returncode == 0, checked.stderr
    manifest = Manifest.latest(output)
    assert checked.stdout.startswith(f"ok: {len(manifest.tables)} tables"), checked.stdout
    return manifest


@pytest.mark.parametrize(
    ("runner", "output", "fmt", "cache"), MATRIX, ids=["-".join(row) for row in MATRIX]
)
def test_a_configuration_runs_end_to_end_and_its_output_verifies(
    runner, output, fmt, cache, s3, bucket, dask_external, tmp_path
) -> None:
    address, external = dask_external
    out = f"s3://{bucket}/run" if output == "s3" else str(tmp_path / "out")
    args = ["run", "--output-dir", out, *runner_options(runner, address), "--format", fmt]
    args += ["--resources", "all"]
    if cache == "off":
        args.append("--no-cache")
    elif output == "local":
        args += ["--cache-dir", str(tmp_path / "cache")]
    # else the default cache of an object-store output: on the store, beside the tables
    with make_server(users=25, seed=7) as server:
        args += ["--api-url", server.url]
        first = run_cli(*args, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        # table by table, wherever the tables are written (a Dask worker for s3)
        said = r"^progress: assembling tables \((\d)/8\): (\w+)$"
        tables = re.findall(said, first.stdout, re.MULTILINE)
        assert tables == [(str(k), t) for k, t in enumerate(tables_of(RESOURCE_NAMES), 1)]
        manifest = verified(out)
        assert manifest.format == fmt
        assert len(manifest.tables) == 8  # six resources, users twice, the activity summary
        check_workers(manifest, runner, external)
        expected = pd.read_csv(
            io.StringIO(seed_transform(requests.get(f"{server.url}/users", timeout=10).json())),
            dtype=str,
            keep_default_na=False,
        )
        pd.testing.assert_frame_equal(users_frame(out, manifest), expected)
        if cache == "off":
            assert manifest.pages_reused == 0
            return
        time.sleep(1.1)  # the second run gets a stamp of its own
        again = run_cli(*args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = verified(out)
    assert rerun.created != manifest.created
    assert rerun.pages_fetched == 0
    assert rerun.pages_reused == manifest.pages
    assert {k: t.sha256 for k, t in rerun.tables.items()} == {
        k: t.sha256 for k, t in manifest.tables.items()
    }


def _pages_done(cache: str) -> int:
    fs, root = fsspec.core.url_to_fs(cache)
    try:
        return sum(".done." in path for path in fs.find(root))
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("output", ["local", "s3"])
def test_a_killed_dask_run_resumes_and_verifies(output, s3, bucket, tmp_path) -> None:
    """SIGKILL while pages are being written on the default (Dask) runner; the rerun fetches
    only what the kill left unfinished and writes verified tables."""
    out = f"s3://{bucket}/run" if output == "s3" else str(tmp_path / "out")
    cache = f"s3://{bucket}/cache" if output == "s3" else str(tmp_path / "cache")
    args = ["run", "--output-dir", out, "--cache-dir", cache, "--page-size", "100"]
    args += ["--in-flight", "2"]
    with make_server(users=20_000, latency=0.05) as server:
        run = subprocess.Popen(
            [sys.executable, "-m", "placeholder_etl", *args, "--api-url", server.url],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 180
            while _pages_done(cache) < 10:  # the run is writing pages
                assert time.monotonic() < deadline, "the run made no progress"
                assert run.poll() is None, "the run ended before it could be killed"
                time.sleep(0.2)
        finally:
            kill_group(run)
        done = _pages_done(cache)
        assert done < 200
        server.reset_stats()
        rerun = run_cli(*args, "--api-url", server.url, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        fetched = server.stats()["requests"]
    manifest = verified(out)
    assert manifest.tables["users"].rows == 20_000
    assert manifest.pages_reused >= done
    assert fetched <= 1 + 200 - done  # the count, and only the pages the kill left unfinished
    fs, root = fsspec.core.url_to_fs(out)
    assert len([name for name in fs.ls(root) if "manifest_" in name]) == 1
