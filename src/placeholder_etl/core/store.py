"""Where files live: a local folder or any fsspec URL (``s3://bucket/prefix``, ``gs://``, ...).

One :class:`Store` wraps an fsspec filesystem and a root. Writes are atomic either way: on a
local disk through a temporary name in the same folder and a rename, on an object store
because an object appears only when its upload completes. Credentials come the standard way
(the AWS/GCS/Azure environment variables and profiles fsspec reads, ``AWS_ENDPOINT_URL`` for
S3-compatible stores) or from ``storage_options``; they are never part of a Store's URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from placeholder_etl.core.atomic import atomic_write
from placeholder_etl.core.errors import PermanentError
from placeholder_etl.core.redact import redact_url
from placeholder_etl.core.urls import is_remote, local_path

__all__ = ["Store", "StoreError"]

#: The fsspec package that brings each common object store, for the error message.
_PACKAGES = {
    "s3": "s3fs: pip install 'placeholder-etl[s3]'",
    "s3a": "s3fs: pip install 'placeholder-etl[s3]'",
    "gs": "gcsfs: pip install gcsfs",
    "gcs": "gcsfs: pip install gcsfs",
    "az": "adlfs: pip install adlfs",
    "abfs": "adlfs: pip install adlfs",
    "abfss": "adlfs: pip install adlfs",
}


class StoreError(PermanentError):
    """A folder URL that cannot be used: an unknown scheme, or its package is missing."""


@dataclass
class Store:
    """A folder on a filesystem fsspec knows.

    Attributes:
        url: the folder as given (``s3://etl/run``, ``output``), for messages.
        fs: the fsspec filesystem.
        root: the folder's path on ``fs`` (absolute for a local disk, ``bucket/prefix`` for S3).
    """

    url: str
    fs: Any
    root: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> Store:
        """The store at ``url``.

        Raises:
            StoreError: an unknown scheme, or the filesystem's package is not installed.
        """
        import fsspec

        options = dict(storage_options or {})
        if not is_remote(url):
            url = str(Path(local_path(url)).expanduser().resolve())
        else:
            options.setdefault("use_listings_cache", False)  # list what is there now
        try:
            fs, root = fsspec.core.url_to_fs(url, **options)
        except ValueError as exc:
            raise StoreError(f"{redact_url(url)}: {exc} (fsspec knows no such scheme)") from None
        except ImportError as exc:
            scheme = url.split("://", 1)[0]
            package = _PACKAGES.get(scheme, str(exc))
            raise StoreError(f"{redact_url(url)}: needs {package}") from None
        return cls(url=url, fs=fs, root=root.rstrip("/"), storage_options=options)

    @property
    def local(self) -> bool:
        """Whether this is a folder on this machine's disk."""
        return "file" in _protocols(self.fs)

    def path(self, *parts: str) -> str:
        """A path under the root."""
        return "/".join([self.root, *(p.strip("/") for p in parts if p)])

    def child(self, *parts: str) -> Store:
        """The store of a subfolder."""
        url = self.url.rstrip("/") + "/" + "/".join(parts)
        return Store(
            url=url, fs=self.fs, root=self.path(*parts), storage_options=self.storage_options
        )

    def url_of(self, path: str) -> str:
        """``path`` as a URL (a plain path on a local disk)."""
        if self.local:
            return path
        return f"{_protocols(self.fs)[0]}://{path}"

    # -- reading

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(path))

    def size(self, path: str) -> int | None:
        """The size of the file at ``path`` (one HEAD on an object store); None: no such file."""
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type") == "file" else None

    def cat(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def open_read(self, path: str) -> IO[bytes]:
        return self.fs.open(path, "rb")

    def listing(self, folder: str) -> dict[str, dict[str, Any]]:
        """Files directly in ``folder`` (a path) by name, with ``size`` and ``mtime`` (seconds)."""
        try:
            entries = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return {}
        found = {}
        for entry in entries:
            if entry.get("type") != "file":
                continue
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            found[name] = {"size": entry.get("size", 0), "mtime": _mtime(entry)}
        return found

    def folders(self, folder: str) -> list[str]:
        """Names of the subfolders directly in ``folder``."""
        try:
            entries = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return []
        return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] != "file"]

    # -- writing

    def put(self, path: str, data: bytes, exclusive: bool = False, sync: bool = True) -> None:
        """Write ``path`` whole, atomically; ``exclusive`` fails if it exists.

        ``sync=False`` skips fsync on a local disk (the file is still whole or absent for any
        reader and through a killed process, not through a power cut).

        Raises:
            FileExistsError: ``exclusive`` and ``path`` exists.
        """
        if self.local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(Path(path), exclusive=exclusive, sync=sync) as handle:
                handle.write(data)
            return
        with self.open_write(path, exclusive=exclusive) as handle:
            handle.write(data)

    @contextmanager
    def open_write(self, path: str, exclusive: bool = False) -> Iterator[IO[bytes]]:
        """Write ``path`` atomically: nothing appears under its name unless the block ends well.

        Local: a temporary name in the same folder, fsynced, renamed (``exclusive``: linked,
        which fails if the name exists). Object store: an upload completed on exit (a
        multipart upload for big files, bounded memory), discarded if the block raises;
        ``exclusive`` uploads with ``If-None-Match: *`` where the store supports it.

        Raises:
            FileExistsError: ``exclusive`` and ``path`` exists.
        """
        if self.local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(Path(path), exclusive=exclusive) as handle:
                yield handle
            return
        if exclusive:
            buffer = _Buffer()
            yield buffer
            self._put_exclusive(path, buffer.getvalue())
            return
        handle = self.fs.open(path, "wb")
        try:
            yield handle
        except BaseException:
            if hasattr(handle, "discard"):
                handle.discard()  # abort the upload: nothing appears
            raise
        handle.close()

    def _put_exclusive(self, path: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            raise
        except OSError:
            # S3-compatible stores answer 412 in ways s3fs does not always map
            if self.exists(path):
                raise FileExistsError(self.url_of(path)) from None
            raise

    def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file (or a folder with ``recursive``); a missing one is fine."""
        with suppress(FileNotFoundError):
            self.fs.rm(path, recursive=recursive)

    def copy(self, source: str, dest: str) -> None:
        """Copy within the store (server-side on an object store)."""
        self.fs.copy(source, dest)


class _Buffer:
    """A write-only byte buffer with a file's ``write``."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self._chunks)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _mtime(entry: dict[str, Any]) -> float:
    """Modification time of an ``ls`` entry, in seconds since the epoch."""
    for key in ("mtime", "LastModified", "last_modified", "updated"):
        value = entry.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        return float(value)
    return 0.0
