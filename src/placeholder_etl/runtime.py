"""What a process running the ETL sets up once: applied when a run starts, never on import.

:func:`prepare_process` is called by the CLI before it imports Prefect, by the flow as it
starts and by every Dask worker process LocalCluster starts (this module is its preload:
:func:`dask_setup`). Importing the package changes nothing global.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from typing import Any

from placeholder_etl.core.http import RetriesAreCounted

__all__ = ["dask_setup", "prepare_process"]

_lock = threading.Lock()
_prepared = False


class _ThreadTimeoutNotice(logging.Filter):
    """Drop Prefect's per-task notice that timeouts cannot interrupt a worker thread.

    Every blocking call here has its own deadline (the request timeout), so the task's
    ``timeout_seconds`` is a backstop and the notice on every task run is noise.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout of %s seconds configured")


def prepare_process() -> None:
    """Set up this process for a run; calling it again does nothing.

    - jsonschema (imported by Prefect) is told ``rfc3987_syntax`` is absent: building its
      grammar (only used to check the "iri" string format, installed with Jupyter) costs
      about 1.8 s of a 4-8 s import, and nothing here validates IRIs. Effective only before
      Prefect is imported.
    - urllib3's per-retry warning is shown as INFO (the client counts retries itself) and
      Prefect's per-task notice that a timeout cannot interrupt a thread is dropped.
    - Arrow uses the system allocator: its default (mimalloc) keeps what pages freed, a
      100,000-user run peaked at ~500 MiB with it, ~260 MiB without, at the same speed. An
      explicit ``ARROW_DEFAULT_MEMORY_POOL`` still wins.
    """
    global _prepared
    with _lock:
        if _prepared:
            return
        _prepared = True
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
        logging.getLogger("urllib3.connectionpool").addFilter(RetriesAreCounted())
        logging.getLogger("prefect.task_runs").addFilter(_ThreadTimeoutNotice())
        if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
            import pyarrow as pa

            pa.set_memory_pool(pa.system_memory_pool())


def dask_setup(worker: Any) -> None:
    """Dask's preload hook: prepare the worker process, then import the tasks while it starts."""
    prepare_process()
    importlib.import_module("placeholder_etl.flow")
