"""Which output a run writes to: a local folder or an object store, chosen by its URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from placeholder_etl.core.folder import FolderOutput
from placeholder_etl.core.objectstore import ObjectStoreOutput
from placeholder_etl.core.output import Output
from placeholder_etl.core.store import Store

__all__ = ["open_output"]


def open_output(output_dir: str, storage_options: dict[str, Any] | None = None) -> Output:
    """The output of a run's tables in ``output_dir``: a local folder (renamed into place
    under a lock) or an object store (published with the manifest last).

    Raises:
        NotADirectoryError: ``output_dir`` is a file; StoreError: an unknown scheme or a
            missing filesystem package.
    """
    store = Store.open(output_dir, storage_options)
    if not store.local:
        return ObjectStoreOutput(store)
    folder = Path(store.root)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"output dir {folder} is a file")
    return FolderOutput(folder)
