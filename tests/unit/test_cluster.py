"""Which task runner and Dask cluster a run gets, from its settings and its size."""

from __future__ import annotations

import pytest

from placeholder_etl.cluster import PROCESSES_FROM_RECORDS, dask_runner_kwargs, use_processes
from placeholder_etl.core.settings import ClusterSettings


def kwargs(records: int | None = 10, **settings) -> dict:
    return dask_runner_kwargs(ClusterSettings(**settings), records)


def test_an_address_connects_to_an_existing_scheduler() -> None:
    assert kwargs(dask_address="tcp://h:8786") == {"address": "tcp://h:8786"}


def test_local_and_saturn_clusters() -> None:
    local = kwargs(dask_cluster="local", dask_workers=3, dask_adapt_min=1, dask_adapt_max=4)
    assert local["cluster_class"] == "distributed.LocalCluster"
    assert local["cluster_kwargs"]["n_workers"] == 3
    assert local["adapt_kwargs"] == {"minimum": 1, "maximum": 4}
    saturn = kwargs(
        dask_cluster="saturn",
        dask_workers=4,
        dask_worker_size="xlarge",
        dask_scheduler_size="large",
    )
    assert saturn["cluster_class"] == "dask_saturn.SaturnCluster"
    assert saturn["cluster_kwargs"] == {
        "n_workers": 4,
        "shutdown_on_close": False,
        "worker_size": "xlarge",
        "scheduler_size": "large",
    }


def test_saturn_is_the_default_inside_saturn(monkeypatch) -> None:
    monkeypatch.setenv("SATURN_BASE_URL", "http://127.0.0.1:1")
    assert kwargs()["cluster_class"] == "dask_saturn.SaturnCluster"
    monkeypatch.delenv("SATURN_BASE_URL")
    assert kwargs()["cluster_class"] == "distributed.LocalCluster"


def test_processes_are_for_big_runs_or_when_asked() -> None:
    assert not use_processes(10)
    assert not use_processes(PROCESSES_FROM_RECORDS - 1)
    assert use_processes(PROCESSES_FROM_RECORDS)
    assert use_processes(None)  # unknown size: assume big
    assert use_processes(10, processes=True)
    assert not use_processes(10**9, processes=False)


@pytest.mark.parametrize(
    ("records", "settings", "processes"),
    [
        (10, {}, False),
        (PROCESSES_FROM_RECORDS, {}, True),
        (None, {}, True),
        (10, {"dask_processes": True}, True),
        (10, {"dask_workers": 2}, True),  # asking for workers is asking for processes
        (10**7, {"dask_processes": False}, False),
        (10, {"dask_adapt_max": 3}, True),  # adaptive scaling adds and removes processes
    ],
)
def test_the_local_cluster_is_shaped_for_the_run(records, settings, processes) -> None:
    cluster = kwargs(records, **settings)["cluster_kwargs"]
    assert cluster["processes"] is processes
    if not processes:
        assert cluster["n_workers"] == 1
    assert cluster["dashboard_address"] == "127.0.0.1:0"


def test_threads_per_worker_default_to_one_and_can_be_set() -> None:
    assert kwargs()["cluster_kwargs"]["threads_per_worker"] == 1
    assert kwargs(dask_threads=3)["cluster_kwargs"]["threads_per_worker"] == 3
