"""Where a run's tables go: the interface both outputs (a folder, an object store) implement.

A run stages each table under a temporary name (:meth:`Output.open_table`), then commits them
together with the manifest (:meth:`Output.commit`): nothing appears under a final name
until the whole run has succeeded, and the manifest comes last. A failed run removes what it
staged (:meth:`Output.abort`); a killed run's leftovers are removed by the next run
(:meth:`Output.remove_leftovers`). The outputs hold no state that changes: a copy sent to a
Dask worker stages tables the flow's copy commits (what was staged travels as
:class:`~placeholder_etl.core.results.StagedTable`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, ClassVar, Self

from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.names import make_tag
from placeholder_etl.core.results import StagedTable
from placeholder_etl.core.store import Store

__all__ = ["CommitError", "Output", "check_published"]

SizeOf = Callable[[str], "int | None"]
#: Called with the commit's stamp; returns the manifest's bytes.
ManifestFor = Callable[[str], bytes]


class CommitError(PermanentError):
    """A table the commit was about to name in a manifest is missing or has the wrong size."""


def check_published(finals: Mapping[str, tuple[str, StagedTable]], size_of: SizeOf) -> None:
    """Check every table under its final name has the size it was written with.

    Args:
        finals: table -> (its final path, what was staged).
        size_of: the size of a path (None: it does not exist).

    Raises:
        CommitError: naming the first table that is missing or short.
    """
    for table, (final, staged) in finals.items():
        size = size_of(final)
        if size is None:
            raise CommitError(
                f"{table}: {final} is missing after the commit; nothing was committed"
            )
        if size != staged.bytes:
            raise CommitError(
                f"{table}: {final} holds {size:,} bytes after the commit, {staged.bytes:,} were "
                "written; nothing was committed"
            )


@dataclass(frozen=True)
class Output(ABC):
    """A run's output: tables staged under temporary names, committed with a manifest.

    Used as a context manager: a block that raises aborts (removes this run's staged files).

    Args:
        run_tag: a unique tag of this run (:func:`~placeholder_etl.core.names.make_tag`),
            part of every temporary name.
    """

    run_tag: str = field(default_factory=make_tag, kw_only=True)

    #: Whether tables are assembled by a task on the task runner (no rows pass through the
    #: flow's process) rather than by the flow's own process.
    assembles_on_runner: ClassVar[bool]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        """Abort (remove this run's staged files) when the block raised."""
        if exc_type is not None:
            self.abort()

    @property
    @abstractmethod
    def store(self) -> Store:
        """The output as a store (to read staged and committed files back)."""

    def staged_path(self, key: str, suffix: str = ".csv") -> str:
        """Where the staged file of ``key`` is written (and read back before the commit).

        Raises:
            ValueError: ``key`` is not letters, digits and underscores (it could name a
                file outside the output).
        """
        if not key.replace("_", "").isalnum():
            raise ValueError(f"output name {key!r} must be letters, digits and underscores")
        return self._temp_path(key, suffix)

    @abstractmethod
    def _temp_path(self, key: str, suffix: str) -> str:
        """The staged file of a checked ``key``."""

    @abstractmethod
    def open_table(self, key: str, suffix: str = ".csv") -> AbstractContextManager[IO[bytes]]:
        """Write the staged file of ``key`` (complete and durable when the block ends)."""

    @abstractmethod
    def commit(self, tables: Mapping[str, StagedTable], manifest: ManifestFor | None = None) -> str:
        """Pick a stamp, put every staged table under its final name, check them, write the
        manifest last.

        Args:
            tables: what was staged (:meth:`open_table`), by table name.
            manifest: called with the chosen stamp; its bytes become ``manifest_<stamp>.json``,
                written last, once every table is checked under its final name.

        Returns:
            The stamp of the committed files.

        Raises:
            CommitError: a table is missing or short under its final name (nothing of the
                commit stays under a final name; the manifest is not written).
        """

    @abstractmethod
    def abort(self) -> None:
        """Remove this run's staged files; final names are left as they were."""

    @abstractmethod
    def remove_leftovers(self) -> list[str]:
        """Remove what killed runs left (half-done commits, staged files); return what went."""
