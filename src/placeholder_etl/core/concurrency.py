"""Concurrency helpers for fetching pages: an adaptive window and an ordered, bounded map."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["InFlight", "ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


class InFlight:
    """How many requests to keep in flight: enough to hide the API's latency, at most ``cap``.

    Little's law: to keep ``cores`` busy with pages that each wait ``wait`` seconds for the
    API and then take ``work`` seconds of CPU, about ``cores * (wait + work) / work`` pages
    must be on their way. Fetchers :meth:`record` both (``work`` as the thread's CPU time,
    which contention does not inflate; moving averages); the window
    grows while latency dominates and shrinks when the work is CPU-bound, so a fast API is
    not flooded with threads that only contend for the cores, and a slow one gets up to
    ``cap`` requests at once — never more (a real API's limit, see ``--in-flight``).
    """

    def __init__(self, cap: int, cores: int = 2) -> None:
        self.cap, self.cores = max(1, cap), max(1, cores)
        self.size = self.cap  # until the first pages say otherwise
        self._wait: float | None = None
        self._work: float | None = None
        self._pages = 0

    def __int__(self) -> int:
        return self.size

    def record(self, wait: float, work: float) -> None:
        """One page took ``wait`` seconds from the API and ``work`` seconds to process.

        The first page's work is left out: it also pays one-time costs (Arrow's first call,
        the chunk's first files), often 20 times a page's, and the moving average would
        take dozens of pages to forget it while the window stayed shut (seen: 4 requests in
        flight instead of 32 at 200 ms of latency).
        """
        self._wait = wait if self._wait is None else 0.7 * self._wait + 0.3 * wait
        self._pages += 1
        if self._pages == 1:
            return
        self._work = work if self._work is None else 0.7 * self._work + 0.3 * work
        busy = max(self._work, 1e-4)
        wanted = math.ceil(self.cores * (self._wait + busy) / busy)
        self.size = max(1, min(self.cap, wanted))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], in_flight: int | InFlight) -> Iterator[R]:
    """Like ``map`` over a thread pool, in order, with at most ``in_flight`` calls pending.

    ``in_flight`` may be an :class:`InFlight`, whose size is read before every submission.
    Unlike ``Executor.map`` it does not submit everything up front, so memory stays bounded
    by the window however many items there are.
    """
    cap = in_flight.cap if isinstance(in_flight, InFlight) else in_flight
    with ThreadPoolExecutor(max_workers=cap, thread_name_prefix="fetch") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                while len(pending) >= int(in_flight):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
