"""What a person reads: counts with the right plural, the progress line."""

from __future__ import annotations

import pytest

from placeholder_etl.core.text import plural
from placeholder_etl.progress import Snapshot


@pytest.mark.parametrize(
    ("count", "words", "text"),
    [
        (1, ("page",), "1 page"),
        (0, ("page",), "0 pages"),
        (1000, ("row",), "1,000 rows"),
        (1, ("retry", "retries"), "1 retry"),
        (2, ("retry", "retries"), "2 retries"),
    ],
)
def test_counts_take_the_right_plural(count, words, text) -> None:
    assert plural(count, *words) == text


def test_the_progress_line_reads_as_english() -> None:
    assert Snapshot(1, 1, 1, 2.0, final=True).line() == "100% · 1/1 page · 1 row · 0 rows/s"
    assert Snapshot(400, 1000, 40_000, 10.0).line() == (
        "40% · 400/1,000 pages · 40,000 rows · 4,000 rows/s · ETA 15 s"
    )
    assert Snapshot(1, None, 10, 1.0).line() == "1 page · 10 rows · 10 rows/s"
