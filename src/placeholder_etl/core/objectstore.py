"""A run's output on an object store: staged objects, published with the manifest last.

An object store has no rename and no lock, so a run (1) writes its tables under
``_placeholder_etl/staging/<run tag>/``, where nothing is final, (2) claims its stamp by
creating ``_placeholder_etl/runs/<stamp>.json`` only if it does not exist (``If-None-Match``:
two runs never share a stamp), (3) copies every table to its final name
``<table>_<stamp>.<ext>`` (a server-side copy) and checks each copy's size (one HEAD each),
(4) writes ``manifest_<stamp>.json`` last, also only if absent: the manifest is the commit
marker, and (5) removes its staging and its claim. A reader trusts a stamp only once its
manifest exists: before that, final names of the stamp may exist (during step 3), but no
manifest names them. A run that fails removes its staging (and any final names it had
copied); a killed run's staging and claim are removed by the next run
(:func:`remove_dead_runs`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, ClassVar

from placeholder_etl.core.atomic import run_is_gone
from placeholder_etl.core.names import final_name, manifest_name, utc_stamp
from placeholder_etl.core.output import ManifestFor, Output, check_published
from placeholder_etl.core.results import StagedTable
from placeholder_etl.core.store import Store

__all__ = ["ObjectStoreOutput"]

#: The folder of an object-store output that holds runs' staging and stamp claims.
CONTROL = "_placeholder_etl"


@dataclass(frozen=True)
class ObjectStoreOutput(Output):
    """A run's tables on an object store, staged, then published with the manifest last.

    The tables may be written anywhere (a Dask worker writes them from the page cache, so the
    flow's process never holds rows).

    Args:
        output: the output folder on the store.
        run_tag: this run's tag, the name of its staging folder.
    """

    output: Store

    #: Tables are assembled by a task on the task runner: no rows pass through the flow.
    assembles_on_runner: ClassVar[bool] = True

    @property
    def store(self) -> Store:
        """The output folder."""
        return self.output

    def _staging_folder(self) -> str:
        return self.output.path(CONTROL, "staging", self.run_tag)

    def _temp_path(self, key: str, suffix: str) -> str:
        return f"{self._staging_folder()}/{key}{suffix}"

    @contextmanager
    def open_table(self, key: str, suffix: str = ".csv") -> Iterator[IO[bytes]]:
        """Write the staged object of ``key`` (it appears only if the block ends well)."""
        with self.output.open_write(self.staged_path(key, suffix)) as handle:
            yield handle

    def remove_leftovers(self) -> list[str]:
        """Remove dead runs' staging and unfinished stamp claims."""
        return remove_dead_runs(self.output)

    def commit(self, tables: Mapping[str, StagedTable], manifest: ManifestFor | None = None) -> str:
        """Claim a stamp, publish every staged table, check them, write the manifest last
        (see :meth:`Output.commit`; what was published is removed again on an error)."""
        claim, stamp = self._claim()
        published: list[str] = []
        try:
            finals = {}
            for key, staged in tables.items():
                final = self.output.path(final_name(key, stamp, staged.suffix))
                published.append(final)
                self.output.copy(staged.path, final)
                finals[key] = (final, staged)
            check_published(finals, self.output.size)
            if manifest is not None:
                final = self.output.path(manifest_name(stamp))
                self.output.put(final, manifest(stamp), exclusive=True)
        except BaseException:
            for final in published:  # nothing of a failed commit stays under a final name
                self.output.remove(final)
            self.output.remove(claim)
            raise
        self.abort()
        self.output.remove(claim)
        return stamp

    def _claim(self) -> tuple[str, str]:
        body = f'{{"run": "{self.run_tag}"}}\n'.encode()
        base = stamp = utc_stamp()
        for n in itertools.count(2):
            claim = self.output.path(CONTROL, "runs", f"{stamp}.json")
            taken = self.output.exists(self.output.path(manifest_name(stamp)))
            if not taken:
                try:
                    self.output.put(claim, body, exclusive=True)
                    return claim, stamp
                except FileExistsError:
                    pass
            stamp = f"{base}-{n}"
        raise AssertionError("unreachable")  # pragma: no cover

    def abort(self) -> None:
        """Remove this run's staged objects; final names are left as they were."""
        self.output.remove(self._staging_folder(), recursive=True)


def remove_dead_runs(store: Store, older_than: float = 86_400.0) -> list[str]:
    """Remove what killed runs left in an object-store output: staging and stamp claims.

    A run is dead when its tag names a process that is gone
    (:func:`~placeholder_etl.core.atomic.run_is_gone`). For a dead run's unfinished claim,
    the final names of that stamp (a kill during the publish) are removed too: no manifest
    names them.

    Returns:
        What was removed, as URLs.
    """
    removed = []
    staging = store.path(CONTROL, "staging")
    for tag in store.folders(staging):
        listing = store.listing(f"{staging}/{tag}")
        newest = max((info["mtime"] for info in listing.values()), default=0.0)
        if run_is_gone(tag, newest, older_than):
            store.remove(f"{staging}/{tag}", recursive=True)
            removed.append(store.url_of(f"{staging}/{tag}"))
    runs = store.path(CONTROL, "runs")
    finals = store.listing(store.root)
    for name, info in store.listing(runs).items():
        stamp = name.removesuffix(".json")
        tag = _claim_tag(store, f"{runs}/{name}")
        if manifest_name(stamp) in finals or not run_is_gone(tag, info["mtime"], older_than):
            continue
        for final in finals:
            if final.rsplit(".", 1)[0].endswith(f"_{stamp}"):
                store.remove(store.path(final))
                removed.append(store.url_of(store.path(final)))
        store.remove(f"{runs}/{name}")
        removed.append(store.url_of(f"{runs}/{name}"))
    return removed


def _claim_tag(store: Store, path: str) -> str:
    try:
        return str(json.loads(store.cat(path)).get("run", ""))
    except (FileNotFoundError, ValueError):
        return ""
