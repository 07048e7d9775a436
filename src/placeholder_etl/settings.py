"""Defaults that depend on the machine: cache location, parallelism."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir", "local_slots"]


def default_cache_dir() -> Path:
    """``$PLACEHOLDER_ETL_CACHE_DIR``, else ``$XDG_CACHE_HOME/placeholder-etl``."""
    if explicit := os.environ.get("PLACEHOLDER_ETL_CACHE_DIR"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "placeholder-etl"


def local_slots() -> int:
    """Cores this process may use (at least 1)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
