"""The JSONPlaceholder resources the pipeline knows, and the tables each one becomes."""

from __future__ import annotations

__all__ = ["ACTIVITY_TABLE", "RESOURCE_NAMES", "TABLES", "resolve_resources", "tables_of"]

#: The six collections of a JSONPlaceholder API, in the order tables are written.
RESOURCE_NAMES: tuple[str, ...] = ("users", "posts", "comments", "albums", "photos", "todos")

#: Output tables of each resource: ``users`` is the seed's table, the rest are flattened.
TABLES: dict[str, tuple[str, ...]] = {
    name: (("users", "users_flat") if name == "users" else (name,)) for name in RESOURCE_NAMES
}

#: The per-user summary written when every resource is loaded.
ACTIVITY_TABLE = "user_activity"


def resolve_resources(requested: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Turn ``"users"``, ``"all"``, ``"users,posts"`` or a list into known resource names.

    Order follows :data:`RESOURCE_NAMES`; duplicates are dropped.

    Raises:
        ValueError: a name is not a JSONPlaceholder resource (this also rejects
            anything that looks like a path, so no name can write outside the output dir).
    """
    items = requested.split(",") if isinstance(requested, str) else list(requested)
    names = {item.strip() for item in items if item.strip()}
    if "all" in names:
        return RESOURCE_NAMES
    unknown = sorted(names - set(RESOURCE_NAMES))
    if unknown:
        raise ValueError(
            f"unknown resource {', '.join(map(repr, unknown))}: "
            f"choose from {', '.join(RESOURCE_NAMES)} or 'all'"
        )
    if not names:
        raise ValueError("no resource given: choose from " + ", ".join(RESOURCE_NAMES))
    return tuple(n for n in RESOURCE_NAMES if n in names)


def tables_of(resources: tuple[str, ...] | list[str]) -> list[str]:
    """The tables a run of ``resources`` writes: theirs, and the activity summary with all six."""
    tables = [table for name in resources for table in TABLES[name]]
    return [*tables, ACTIVITY_TABLE] if set(resources) == set(RESOURCE_NAMES) else tables
