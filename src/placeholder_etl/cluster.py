"""Where the Dask tasks run: a LocalCluster, an existing scheduler, or Saturn Cloud's cluster.

:func:`dask_runner_kwargs` turns the flow's settings into ``DaskTaskRunner`` arguments;
:func:`check_workers` makes sure every worker can import this package before any task is sent
(a worker without it would otherwise fail with a deep deserialisation error).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from placeholder_etl.errors import PermanentError
from placeholder_etl.settings import local_slots

__all__ = [
    "PROCESSES_FROM_RECORDS",
    "ClusterKind",
    "WorkerSetupError",
    "check_workers",
    "cluster_threads",
    "dask_runner_kwargs",
    "default_cluster",
    "fit_local_cluster",
    "local_cluster_kwargs",
    "use_processes",
]

ClusterKind = Literal["local", "saturn"]
PACKAGE = "placeholder_etl"

#: From this many records on, a LocalCluster runs its workers as processes, one per core
#: (parsing and CSV writing need the cores). Below it, one worker in the flow's process: worker
#: processes take ~1.5 s to start (each imports Prefect) and ~0.3 s to stop, more than they
#: save on a small run. Measured on 2 cores: 100,000 users 4.9 s in the process vs 6.3 s with
#: processes; 1,000,000 users 29.4 s vs 22 s.
PROCESSES_FROM_RECORDS = 200_000


class WorkerSetupError(PermanentError):
    """Dask workers that cannot run the tasks (the package is missing or another version)."""


def default_cluster() -> ClusterKind:
    """``saturn`` inside a Saturn Cloud resource (``SATURN_BASE_URL`` set), else ``local``."""
    return "saturn" if os.environ.get("SATURN_BASE_URL") else "local"


def dask_runner_kwargs(
    cluster: ClusterKind | None = None,
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    worker_size: str | None = None,
    scheduler_size: str | None = None,
    adapt_min: int | None = None,
    adapt_max: int | None = None,
    processes: bool | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``prefect_dask.DaskTaskRunner``.

    Args:
        cluster: ``local`` (a LocalCluster on this machine) or ``saturn``
            (``dask_saturn.SaturnCluster``); default :func:`default_cluster`.
        address: an existing scheduler (``tcp://host:8786``); wins over ``cluster``.
        workers: worker processes (local) or machines (Saturn).
        threads: threads per worker.
        worker_size, scheduler_size: Saturn instance sizes (``large``, ``xlarge``, …).
        adapt_min, adapt_max: adaptive scaling bounds, passed to ``cluster.adapt``.
        processes: LocalCluster workers as processes (True) or one worker in this process
            (False); None sets up processes, and :func:`fit_local_cluster` may switch to
            this process once the run's size is known (before the cluster starts).
    """
    if address:
        return {"address": address}
    adapt = {
        key: value
        for key, value in (("minimum", adapt_min), ("maximum", adapt_max))
        if value is not None
    }
    kind = cluster or default_cluster()
    if kind == "local":
        kwargs = local_cluster_kwargs(processes is not False, workers, threads)
        cluster_class = "distributed.LocalCluster"
    elif kind == "saturn":
        kwargs = {"n_workers": workers or 2, "shutdown_on_close": False}
        if threads:
            kwargs["nthreads"] = threads
        if worker_size:
            kwargs["worker_size"] = worker_size
        if scheduler_size:
            kwargs["scheduler_size"] = scheduler_size
        cluster_class = "dask_saturn.SaturnCluster"
    else:
        raise ValueError(f"unknown Dask cluster {kind!r}: use 'local' or 'saturn'")
    return {"cluster_class": cluster_class, "cluster_kwargs": kwargs, "adapt_kwargs": adapt}


def local_cluster_kwargs(
    processes: bool, workers: int | None = None, threads: int | None = None
) -> dict[str, Any]:
    """``LocalCluster`` arguments: worker processes, or one worker in this process.

    Processes: ``workers`` (default one per core), which import the tasks while they start
    (``preload``) rather than on their first task. In this process: one worker. Either way
    ``threads`` task threads per worker, default 1: parsing and writing hold the GIL, so
    more task threads in one process only contend for it (each task keeps its own requests
    in flight). Everything listens on 127.0.0.1 only.
    """
    if not processes:
        return {
            "n_workers": 1,
            "threads_per_worker": threads or 1,
            "processes": False,
            "dashboard_address": "127.0.0.1:0",
            "worker_dashboard_address": "127.0.0.1:0",
        }
    return {
        "n_workers": workers or local_slots(),
        "threads_per_worker": threads or 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
        "preload": ["placeholder_etl.flow"],
    }


def use_processes(records: int | None, processes: bool | None = None) -> bool:
    """Whether a run of ``records`` (None: unknown) gets LocalCluster worker processes.

    ``processes`` (the ``--dask-processes`` option) decides when given; else runs from
    :data:`PROCESSES_FROM_RECORDS` records on, or of unknown size, get processes.
    """
    if processes is not None:
        return processes
    return records is None or records >= PROCESSES_FROM_RECORDS


def fit_local_cluster(
    task_runner: Any, records: int | None, processes: bool | None, threads: int | None = None
) -> None:
    """Before a ``DaskTaskRunner`` starts its LocalCluster, shape it for the run's size.

    With ``processes`` None (automatic) the runner was set up with worker processes
    (:func:`dask_runner_kwargs`); a run of fewer than :data:`PROCESSES_FROM_RECORDS` records
    gets one worker of ``threads`` threads in this process instead. The runner creates its
    cluster on first use, so this is called after counting and before the first task is
    submitted. Runners that connect to a scheduler, start another kind of cluster, scale
    adaptively or have started already are left alone.
    """
    if (
        processes is not None
        or use_processes(records)
        or getattr(task_runner, "cluster_class", None) != "distributed.LocalCluster"
        or not getattr(task_runner, "cluster_kwargs", {}).get("processes")
        or getattr(task_runner, "adapt_kwargs", None)
        or getattr(task_runner, "_client", None) is not None
    ):
        return
    task_runner.cluster_kwargs = local_cluster_kwargs(False, threads=threads)


def _probe() -> str:
    """Run on each worker: this package's version there, or why it cannot be imported."""
    try:
        module = __import__(PACKAGE)
    except Exception as exc:  # noqa: BLE001 - any import failure is the answer
        return f"missing: {type(exc).__name__}: {exc}"
    return str(getattr(module, "__version__", "unknown"))


def check_workers(client: Any) -> list[str]:
    """Check every worker can import this package, in the version the client has.

    Returns:
        The workers' addresses.

    Raises:
        WorkerSetupError: naming the workers and how to install the package on them.
    """
    import cloudpickle

    # By value: a worker without the package could not even unpickle a reference to it.
    cloudpickle.register_pickle_by_value(__import__(__name__, fromlist=["_probe"]))
    try:
        answers = client.run(_probe)
    finally:
        cloudpickle.unregister_pickle_by_value(__import__(__name__, fromlist=["_probe"]))
    mine = _version()
    bad = {addr: ans for addr, ans in answers.items() if ans != mine}
    if bad:
        detail = "; ".join(f"{addr}: {ans}" for addr, ans in sorted(bad.items()))
        raise WorkerSetupError(
            f"Dask workers cannot run the tasks ({detail}; this client has placeholder-etl "
            f"{mine}). Install the same version on every worker: `pip install -e .` from this "
            "checkout in the workers' environment (on Saturn Cloud: the recipe's start script "
            "or environment.yml), then restart the workers."
        )
    return sorted(answers)


def cluster_threads(client: Any) -> int:
    """Worker threads in the cluster (at least 1)."""
    return max(1, sum(client.nthreads().values()))


def _version() -> str:
    import placeholder_etl

    return str(getattr(placeholder_etl, "__version__", "unknown"))
