"""The names a run's committed files get: one rule, used wherever a name is made or read."""

from __future__ import annotations

__all__ = ["MANIFEST", "final_name", "manifest_name", "stamp_of_manifest", "stamp_order"]

#: The manifest's key: ``manifest_<stamp>.json``.
MANIFEST = "manifest"


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
