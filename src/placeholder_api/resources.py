"""The JSONPlaceholder collections this server offers: names, sizes per user, parents."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RESOURCES", "Resource"]


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
