"""The JSONPlaceholder resources: names, sizes relative to users, and parent links.

One source of truth for the client, the bundled server and the transforms.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RESOURCES", "RESOURCE_NAMES", "Resource", "resolve_resources"]


@dataclass(frozen=True, slots=True)
class Resource:
    """One JSONPlaceholder collection.

    Attributes:
        name: the collection's path segment, e.g. ``"posts"``.
        per_user: records per user in the real dataset (posts: 10 per user).
        parent: the collection a record belongs to (``"users"`` for posts), if any.
        parent_key: the field holding the parent's id (``"userId"``), if any.
    """

    name: str
    per_user: int
    parent: str | None = None
    parent_key: str | None = None

    def count(self, users: int) -> int:
        """Number of records of this resource in a dataset of ``users`` users."""
        return self.per_user * users


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("users", 1),
        Resource("posts", 10, "users", "userId"),
        Resource("comments", 50, "posts", "postId"),  # 5 per post
        Resource("albums", 10, "users", "userId"),
        Resource("photos", 500, "albums", "albumId"),  # 50 per album
        Resource("todos", 20, "users", "userId"),
    )
}
RESOURCE_NAMES: tuple[str, ...] = tuple(RESOURCES)


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
