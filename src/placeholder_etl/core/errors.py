"""Errors the pipeline raises, classified so retries only happen where they can help.

Every error carries one readable sentence that names the cause and where it happened
(resource, page, URL, record, field). They take a single message argument, so they
pickle cleanly across Dask workers and Prefect result storage.
"""

from __future__ import annotations

__all__ = ["ContractError", "EtlError", "PermanentError", "TransientError"]


class EtlError(Exception):
    """Base class; ``transient`` says whether trying again may succeed."""

    transient: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class TransientError(EtlError):
    """A fault that may go away: connection errors, timeouts, 429, 5xx."""

    transient = True


class PermanentError(EtlError):
    """A fault that will not go away by retrying: 4xx, a body that is not a JSON list, no users."""


class ContractError(PermanentError):
    """A record that breaks the documented shape of its resource."""


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` is worth retrying (unknown errors are treated as transient)."""
    return not isinstance(exc, EtlError) or exc.transient
