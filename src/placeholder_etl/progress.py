"""How far a run is: pages and rows done, rate, ETA, then the step after the pages — on the
flow run and in a terminal.

While the chunk tasks run, the flow counts the page checkpoints written so far (one listing
per resource, wherever the pages are: this process, Dask workers, an object store) and
reports a :class:`Snapshot` about once a second: to a Prefect progress artifact on the flow
run (``placeholder-etl-progress``, reaching 100 when the pages are all in), and to every
listener registered with :func:`listening` (the command line's progress bar). After the
pages, :func:`phase` says what the run is doing (assembling tables, rendering the report):
in the flow run's log, on the artifact and to the listeners.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from placeholder_etl.core.pages import count_done
from placeholder_etl.core.results import ChunkSpec
from placeholder_etl.core.store import Store
from placeholder_etl.core.text import plural

__all__ = ["Phase", "Snapshot", "assembling", "listening", "phase", "relaying", "track"]

ARTIFACT_KEY = "placeholder-etl-progress"
#: The Dask event topic of the phases said in tasks on Dask workers (:func:`relaying`).
PHASE_TOPIC = "placeholder-etl-phase"
_listeners: list[Callable[[Snapshot | Phase], None]] = []
_lock = threading.Lock()
_artifacts: dict[str, Any] = {}  # flow run id: its progress artifact's id


@dataclass(frozen=True, slots=True)
class Phase:
    """A step after the pages, for people: ``assembling tables (3/8)``."""

    text: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Progress at one moment.

    Attributes:
        pages, total_pages: pages done, and planned (None: the API sent no totals).
        rows: rows in the pages done.
        seconds: since the pages started.
        final: the last snapshot of the run's pages.
        revalidated: pages done that the API answered ``304 Not Modified`` (no body).
    """

    pages: int
    total_pages: int | None
    rows: int
    seconds: float
    final: bool = False
    revalidated: int = 0

    @property
    def percent(self) -> float | None:
        """Pages done in percent (None when the total is unknown)."""
        if not self.total_pages:
            return 100.0 if self.final else None
        return min(100.0, 100.0 * self.pages / self.total_pages)

    @property
    def rate(self) -> float:
        """Rows per second so far."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (None: unknown)."""
        if not self.total_pages or not self.pages or self.final:
            return None
        return self.seconds * (self.total_pages - self.pages) / self.pages

    def line(self) -> str:
        """One plain line: ``40% · 400/1,000 pages · 400,000 rows · 80,000 rows/s · ETA 8 s``
        (``· 300 revalidated`` after the pages when a ``304`` renewed some)."""
        pages = plural(self.total_pages or self.pages, "page")
        if self.total_pages:
            pages = f"{self.pages:,}/{pages}"
        parts = [pages, plural(self.rows, "row"), f"{self.rate:,.0f} rows/s"]
        if self.revalidated:
            parts.insert(1, f"{self.revalidated:,} revalidated")
        if self.percent is not None:
            parts.insert(0, f"{self.percent:.0f}%")
        if self.eta is not None:
            parts.append(f"ETA {self.eta:,.0f} s")
        return " · ".join(parts)


@contextmanager
def listening(listener: Callable[[Snapshot | Phase], None]) -> Iterator[None]:
    """Call ``listener`` with every snapshot of the runs in this process, inside the block."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def _tell(news: Snapshot | Phase) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(news)


def phase(text: str) -> None:
    """Say what the run does now that the pages are in: in the flow run's log, as the progress
    artifact's description, and to the listeners.

    In a task on a Dask worker (the tables of an object-store output), the log line is the
    task run's; the artifact and the listeners are told through a Dask event that the
    flow's process relays (:func:`relaying`). Outside any run, the line goes to this
    module's logger.
    """
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError
    from prefect.runtime import flow_run

    try:
        logger = get_run_logger()
    except MissingContextError:
        logger = logging.getLogger(__name__)
    logger.info("%s", text)
    run_id = str(flow_run.get_id() or "")
    worker = _dask_worker()
    if worker is not None:
        worker.log_event(PHASE_TOPIC, {"flow_run": run_id, "text": text})
        return
    _show(run_id, text)


def _show(run_id: str, text: str) -> None:
    """Put a phase on the flow run's progress artifact (if this process made one) and tell
    the listeners."""
    from prefect.artifacts import update_progress_artifact

    artifact = _artifacts.get(run_id)
    if artifact is not None:
        update_progress_artifact(artifact, 100.0, description=f"Pages all in; {text}")
    _tell(Phase(text))


def assembling(table: str, number: int, count: int) -> None:
    """The phase while the tables are written: ``assembling tables (3/8): posts``."""
    phase(f"assembling tables ({number}/{count}): {table}")


def _dask_worker() -> Any:
    """The Dask worker running this task, or None."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


@contextmanager
def relaying(client: Any) -> Iterator[None]:
    """Show the phases that this flow run's tasks say on ``client``'s workers, inside the
    block: on the progress artifact and to the listeners, in the order said.

    Dask calls the handler on its client's event loop, where no Prefect API call may block:
    one thread of this block's own (with the flow's context) shows them.
    """
    from prefect.runtime import flow_run

    run_id = str(flow_run.get_id() or "")
    said: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def relay(event: tuple[float, dict[str, str]]) -> None:
        _, news = event
        if news.get("flow_run") == run_id:  # a shared scheduler: other runs' phases too
            said.put(news["text"])

    def show() -> None:
        while (text := said.get()) is not None:
            try:
                _show(run_id, text)
            except Exception:  # progress is for people: never the run's failure
                logging.getLogger(__name__).debug("phase not shown: %s", text, exc_info=True)

    shower = threading.Thread(
        target=contextvars.copy_context().run, args=(show,), daemon=True, name="phases"
    )
    shower.start()
    client.subscribe_topic(PHASE_TOPIC, relay)
    try:
        yield
    finally:
        client.unsubscribe_topic(PHASE_TOPIC)
        said.put(None)
        shower.join(timeout=10)


#: Seconds between two looks at the futures while waiting for them.
_POLL = 0.05


def track(
    futures: Any,
    cache: Store,
    chunks: list[ChunkSpec],
    total_pages: int | None,
    keep_formulas: bool,
    max_age: float | None = None,
    interval: float = 1.0,
) -> None:
    """Report progress until every future in ``futures`` is done (it does not raise).

    Pages count once checkpointed and younger than ``max_age`` seconds (the cache's
    lifetime; stale pages count once a ``304`` renews them).

    Updates the flow run's progress artifact at most every ``2 * interval`` seconds, and the
    listeners every ``interval`` seconds.
    """
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.runtime import flow_run

    started, since = time.monotonic(), time.time() - 1.0  # 1 s: the store's clock may lag
    artifact = create_progress_artifact(
        0.0, key=ARTIFACT_KEY, description="Pages fetched, checked and written"
    )
    _artifacts[flow_run.get_id() or ""] = artifact
    last_artifact = 0.0

    def snapshot(final: bool = False) -> Snapshot:
        done = count_done(cache, chunks, keep_formulas, max_age, since)
        seconds = time.monotonic() - started
        return Snapshot(done.pages, total_pages, done.rows, seconds, final, done.revalidated)

    while not _wait(futures, interval):
        now = snapshot()
        _tell(now)
        if now.percent is not None and time.monotonic() - last_artifact >= 2 * interval:
            update_progress_artifact(artifact, now.percent)
            last_artifact = time.monotonic()
    final = snapshot(final=True)
    _tell(final)
    update_progress_artifact(artifact, 100.0 if final.percent is None else final.percent)


def _wait(futures: Any, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for every future; whether they are all done.

    Asks the executor (a thread pool or Dask), not the Prefect API, and only whether each
    future is done: never for its result with a timeout. A Dask future's ``result(timeout)``
    that times out while the client is gathering cancels the gather that every other
    waiter of that client shares, and the flow's own ``result()`` then dies of the
    cancellation (distributed 2026.8: the shared ``_gather_future`` is awaited unshielded).
    """
    deadline = time.monotonic() + timeout
    pending = [future.wrapped_future for future in futures]
    while True:
        pending = [wrapped for wrapped in pending if not wrapped.done()]
        if not pending:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(_POLL, left))
