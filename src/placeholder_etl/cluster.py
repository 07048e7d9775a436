"""Where the tasks run: threads, a LocalCluster, an existing scheduler, or Saturn Cloud's cluster.

:func:`make_task_runner` turns the ``cluster`` settings and the run's size into a task runner;
:func:`task_runner_for` starts it inside the flow run, once the records are counted, and
:func:`check_workers` makes sure every worker can import this package before any task is sent
(a worker without it would otherwise fail with a deep deserialisation error).

The runner is used directly, as a context manager inside the flow run (``runner.map(task,
parameters)``): Prefect's ``ThreadPoolTaskRunner`` copies the caller's context and
prefect-dask's client serialises it, so the task runs belong to the flow run as if the flow's
own runner had submitted them. The flow's own runner (Prefect's default thread pool) runs only
the count.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.settings import ClusterKind, ClusterSettings, environment, local_slots
from placeholder_etl.progress import relaying

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

__all__ = [
    "PROCESSES_FROM_RECORDS",
    "WorkerSetupError",
    "check_workers",
    "dashboard_link",
    "dask_runner_kwargs",
    "local_cluster_kwargs",
    "task_runner_for",
    "use_processes",
    "warm_up_in_background",
]

PACKAGE = "placeholder_etl"

#: From this many records on, a LocalCluster runs its workers as processes, one per core
#: (parsing and CSV writing need the cores). Below it, one worker in the flow's process:
#: starting worker processes (each imports Prefect) costs more than they save on a small run.
#: The crossover is measured by ``benchmarks/bench.py`` (see benchmarks/RESULTS.md).
PROCESSES_FROM_RECORDS = 200_000


class WorkerSetupError(PermanentError):
    """Dask workers that cannot run the tasks (the package is missing or another version)."""


def default_cluster() -> ClusterKind:
    """``saturn`` inside a Saturn Cloud resource (``SATURN_BASE_URL`` set), else ``local``."""
    return "saturn" if environment().saturn_base_url else "local"


def make_task_runner(cluster: ClusterSettings, records: int | None = None) -> TaskRunner[Any]:
    """The task runner for a run of ``records`` records (None: unknown).

    Threads (``runner="local"``), or a ``DaskTaskRunner`` (:func:`dask_runner_kwargs`); the
    Dask cluster starts on the first submission.
    """
    if cluster.runner == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=cluster.slots)
    from prefect_dask import DaskTaskRunner

    from placeholder_etl.prefect_api import export_api_url

    export_api_url()
    quiet_dask_logs()
    return DaskTaskRunner(**dask_runner_kwargs(cluster, records))


@contextmanager
def task_runner_for(
    cluster: ClusterSettings, totals: Mapping[str, int | None]
) -> Iterator[tuple[TaskRunner[Any], int]]:
    """Start the task runner for a run of this size; on Dask, start and check the cluster.

    Yields:
        The runner, and its task slots: the cluster's worker threads (Dask) or the thread
        pool's size.
    """
    from prefect import get_run_logger

    known = None not in totals.values()
    records = sum(t for t in totals.values() if t is not None) if known else None
    with make_task_runner(cluster, records) as runner:
        client = getattr(runner, "client", None)  # a DaskTaskRunner starts its cluster here
        if client is None:
            yield runner, cluster.slots
            return
        workers = check_workers(client)
        get_run_logger().info(
            "Dask cluster: %d workers, %d threads, dashboard %s",
            len(workers),
            cluster_threads(client),
            dashboard_link(client),
        )
        with relaying(client):  # what the tasks on the workers say after the pages
            yield runner, cluster_threads(client)


def warm_up_in_background(cluster: ClusterSettings) -> None:
    """Pay one-time costs while the records are counted: Arrow's first page, Dask's import."""

    def warm_up() -> None:
        from placeholder_etl.core import fastpath

        fastpath.warm_up()
        if cluster.runner == "dask":
            import prefect_dask  # noqa: F401

    threading.Thread(target=warm_up, daemon=True, name="warm-up").start()


def quiet_dask_logs() -> None:
    """Dask's scheduler and workers log every connection at INFO; keep warnings and errors.

    Unless the command line is verbose, also the nanny's notice that it killed a worker
    process that was still shutting down when the cluster closed (it always is, and harmless).
    """
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # inherited by workers
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if environment().console != "verbose":
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)


def dask_runner_kwargs(cluster: ClusterSettings, records: int | None = None) -> dict[str, Any]:
    """Keyword arguments for ``prefect_dask.DaskTaskRunner``.

    ``dask_address`` connects to an existing scheduler; else ``dask_cluster`` (default
    :func:`default_cluster`) picks a LocalCluster shaped for ``records``
    (:func:`use_processes`) or Saturn Cloud's ``SaturnCluster``; ``dask_adapt_min`` and
    ``dask_adapt_max`` are passed to the cluster's ``adapt``.
    """
    if cluster.dask_address:
        return {"address": cluster.dask_address}
    adapt = {
        key: value
        for key, value in (("minimum", cluster.dask_adapt_min), ("maximum", cluster.dask_adapt_max))
        if value is not None
    }
    kind = cluster.dask_cluster or default_cluster()
    if kind == "local":
        # an adaptive cluster adds and removes worker processes
        processes = use_processes(records, cluster.processes if not adapt else True)
        kwargs = local_cluster_kwargs(processes, cluster.dask_workers, cluster.dask_threads)
        cluster_class = "distributed.LocalCluster"
    else:
        kwargs = {"n_workers": cluster.dask_workers or 2, "shutdown_on_close": False}
        optional = {
            "nthreads": cluster.dask_threads,
            "worker_size": cluster.dask_worker_size,
            "scheduler_size": cluster.dask_scheduler_size,
        }
        kwargs |= {key: value for key, value in optional.items() if value}
        cluster_class = "dask_saturn.SaturnCluster"
    return {"cluster_class": cluster_class, "cluster_kwargs": kwargs, "adapt_kwargs": adapt}


def local_cluster_kwargs(
    processes: bool, workers: int | None = None, threads: int | None = None
) -> dict[str, Any]:
    """``LocalCluster`` arguments: worker processes, or one worker in this process.

    Processes: ``workers`` (default one per core), which prepare themselves and import the
    tasks while they start (``preload``: :func:`placeholder_etl.runtime.dask_setup`) rather
    than on their first task. In this process: one worker. Either way
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
        "preload": ["placeholder_etl.runtime"],
    }


def use_processes(records: int | None, processes: bool | None = None) -> bool:
    """Whether a run of ``records`` (None: unknown) gets LocalCluster worker processes.

    ``processes`` (the ``--dask-processes`` option) decides when given; else runs from
    :data:`PROCESSES_FROM_RECORDS` records on, or of unknown size, get processes.
    """
    if processes is not None:
        return processes
    return records is None or records >= PROCESSES_FROM_RECORDS


def _probe() -> str:
    """Run on each worker: this package's version there, or why it cannot be imported.

    A worker that has the package is prepared for the run (:func:`prepare_process`): external
    workers are started without this package's preload.
    """
    try:
        module = __import__(PACKAGE)
        runtime = __import__(f"{PACKAGE}.runtime", fromlist=["prepare_process"])
    except Exception as exc:  # noqa: BLE001 - any import failure is the answer
        return f"missing: {type(exc).__name__}: {exc}"
    runtime.prepare_process()
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


def dashboard_link(client: Any) -> str:
    """The Dask dashboard's address, as it really listens.

    An in-process cluster's scheduler has an ``inproc://`` address named after the machine's
    IP, so Dask's own link names that IP, while the dashboard listens on 127.0.0.1 only.
    """
    if not str(client.scheduler.address).startswith("inproc://"):
        return str(client.dashboard_link)
    port = client.scheduler_info()["services"]["dashboard"]
    return f"http://127.0.0.1:{port}/status"


def cluster_threads(client: Any) -> int:
    """Worker threads in the cluster (at least 1)."""
    return max(1, sum(client.nthreads().values()))


def _version() -> str:
    import placeholder_etl

    return str(getattr(placeholder_etl, "__version__", "unknown"))
