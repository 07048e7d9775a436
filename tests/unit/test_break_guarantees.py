"""``tests/break_guarantees.py`` stays runnable: every mutation still finds its source text."""

from __future__ import annotations

from tests.break_guarantees import MUTATIONS
from tests.helpers import ROOT


def test_every_mutation_edits_exactly_one_place_and_names_existing_tests() -> None:
    stale = []
    for mutation in MUTATIONS:
        for path, old, _new in [(mutation.file, mutation.old, mutation.new), *mutation.also]:
            found = (ROOT / path).read_text().count(old) if (ROOT / path).exists() else 0
            if found != 1:
                stale.append(f"{mutation.name}: {path} has its text {found} times")
        for test in mutation.tests:
            path, _, name = test.partition("::")
            text = (ROOT / path).read_text() if (ROOT / path).exists() else ""
            if not text or (name and f"def {name.split('[')[0]}(" not in text):
                stale.append(f"{mutation.name}: no test {test}")
    assert len(MUTATIONS) > 20
    assert stale == []
