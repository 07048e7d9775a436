"""The in-flight window: enough requests to hide the API's latency, never more than the cap."""

from __future__ import annotations

from placeholder_etl.core.concurrency import InFlight, ordered_map


def test_a_slow_first_page_does_not_shut_the_window() -> None:
    window = InFlight(cap=32, cores=2)
    window.record(wait=0.2, work=0.4)  # the first page: one-time costs
    assert int(window) == 32
    window.record(wait=0.2, work=0.02)  # Little's law: 2 x (0.2 + 0.02) / 0.02
    assert int(window) == 22


def test_cpu_bound_pages_narrow_it_and_latency_never_passes_the_cap() -> None:
    busy = InFlight(cap=32, cores=2)
    for _ in range(20):
        busy.record(wait=0.001, work=0.02)
    assert int(busy) == 3
    slow = InFlight(cap=32, cores=2)
    for _ in range(5):
        slow.record(wait=2.0, work=0.001)
    assert int(slow) == 32


def test_ordered_map_keeps_the_order_and_the_window() -> None:
    import threading
    import time

    running, most = 0, 0
    lock = threading.Lock()

    def slow_square(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01 * (n % 3))
        with lock:
            running -= 1
        return n * n

    assert list(ordered_map(slow_square, range(20), 4)) == [n * n for n in range(20)]
    assert 1 < most <= 4
