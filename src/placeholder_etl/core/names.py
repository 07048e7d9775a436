"""The names a run makes: committed files' names, stamps, run tags and table formats.

One rule each, used wherever a name is made or read.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "MANIFEST",
    "TableFormat",
    "final_name",
    "make_tag",
    "manifest_name",
    "pid_of_tag",
    "stamp_of_manifest",
    "stamp_order",
    "utc_stamp",
]

#: The manifest's key: ``manifest_<stamp>.json``.
MANIFEST = "manifest"

#: The file formats a table is written in.
TableFormat = Literal["csv", "parquet"]


def final_name(key: str, stamp: str, suffix: str) -> str:
    """A committed file's name: ``users_20261125T005503Z.csv``."""
    return f"{key}_{stamp}{suffix}"


def manifest_name(stamp: str) -> str:
    """The manifest of the run stamped ``stamp``: ``manifest_20261125T005503Z.json``."""
    return final_name(MANIFEST, stamp, ".json")


def stamp_of_manifest(name: str) -> str | None:
    """The stamp of a manifest's file name (None: not a manifest's name)."""
    prefix, suffix = f"{MANIFEST}_", ".json"
    if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix + suffix):
        return name[len(prefix) : -len(suffix)]
    return None


def stamp_order(stamp: str) -> tuple[str, int]:
    """Sort key of stamps: ``20261125T005503Z`` < ``20261125T005503Z-2`` < ``…-10``."""
    base, _, n = stamp.partition("-")
    return base, int(n) if n.isdigit() else 1


def utc_stamp() -> str:
    """The run timestamp used in file names: ``20261125T005503Z``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _host_label() -> str:
    """This host's name with the characters a tag uses as separators replaced."""
    return socket.gethostname().replace(".", "_").replace("-", "_")


def make_tag() -> str:
    """A tag unique to this process and call: ``<host>-<pid>-<random>``.

    Temporary names carry it, so the next run can tell a dead process's leftovers (removed)
    from a live run's files (kept).
    """
    return f"{_host_label()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def pid_of_tag(tag: str) -> int | None:
    """The process id in a tag made on this host (None: another host's tag, or not a tag)."""
    host, _, rest = tag.partition("-")
    pid = rest.partition("-")[0]
    return int(pid) if host == _host_label() and pid.isdigit() else None
