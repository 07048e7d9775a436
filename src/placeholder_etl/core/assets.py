"""The assets a committed run materializes: their keys, upstream assets and metadata.

No Prefect here: :mod:`placeholder_etl.lineage` records each :class:`AssetRecord` as a
Prefect asset materialization once the run has committed.

Keys are stable per table and output location, not per run: ``file:///abs/out/users.csv``,
``s3://bucket/prefix/users.parquet`` (the folder the manifest is in, the table's name and the
format's extension), and ``<folder>/manifest.json`` for the manifest. No file has that name:
each run writes ``users_<stamp>.csv``; the stamp, the stamped file's name and its full path
are in the materialization's metadata, with the rows, bytes, sha256, format, the manifest's
path, the flow run's id and the (redacted) API root.

Upstream: a table's API endpoint, ``<api root>/users`` without user info or query (either may
hold a secret), so ``users`` and ``users_flat`` come from ``https://host/api/users``;
``user_activity`` from the flattened tables it is computed from (:data:`ACTIVITY_INPUTS`),
whose own upstream are their endpoints; the manifest from the run's tables.

Prefect's keys are URIs with a lowercase scheme, at most 512 characters, without blanks nor
any of ``# ? & % " ' < > [ ] { } | \\ ^ ```. A location with one of those (``/tmp/my out``),
or too long, has each replaced by ``_`` and a digest of the whole location added, so two
locations never share a key: ``file:///tmp/my_out~5b1d2c9e0f3a/users.csv``.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import suppress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from placeholder_etl.core.redact import redact
from placeholder_etl.core.resources import TABLES
from placeholder_etl.core.results import RunResult
from placeholder_etl.core.tables import ACTIVITY_INPUTS, SUFFIX
from placeholder_etl.core.urls import is_remote

__all__ = [
    "MAX_KEY_LENGTH",
    "RESTRICTED",
    "AssetRecord",
    "asset_key",
    "asset_records",
    "endpoint_key",
    "folder_uri",
]

#: Prefect's longest asset key (``prefect.types.names.MAX_ASSET_KEY_LENGTH``).
MAX_KEY_LENGTH = 512

#: Characters Prefect refuses in an asset key (``RESTRICTED_ASSET_CHARACTERS``).
RESTRICTED = frozenset("\n\r\t\0 #?&%\"'<>[]{}|\\^`")

#: The manifest's asset name under the output location.
MANIFEST_ASSET = "manifest.json"

_SCHEME = re.compile(r"^[a-z0-9]+://")
_DIGEST = 12

#: The table each table is made from: the resource it was fetched as.
_RESOURCE_OF = {table: resource for resource, tables in TABLES.items() for table in tables}

Metadata = dict[str, str | int | list[str] | None]


@dataclass(frozen=True)
class AssetRecord:
    """One asset a committed run materializes.

    Attributes:
        key: the asset's key (stable per table and output location).
        name, description: what Prefect Cloud shows beside the key.
        upstream: the keys of the assets it was made from.
        metadata: the materialization's metadata (JSON: strings, numbers, lists).
    """

    key: str
    name: str
    description: str
    upstream: tuple[str, ...]
    metadata: Metadata = field(default_factory=dict)


def _valid(key: str) -> bool:
    return (
        len(key) <= MAX_KEY_LENGTH
        and _SCHEME.match(key) is not None
        and not any(c in RESTRICTED or not c.isprintable() for c in key)
    )


def asset_key(location: str, name: str) -> str:
    """The key of ``name`` (a file name or an endpoint, no restricted characters) under
    ``location`` (``scheme://…`` with no trailing ``/``): ``location/name`` when Prefect takes
    it, else the location made safe and told apart by a digest of it."""
    key = f"{location}/{name}"
    if _valid(key):
        return key
    scheme, sep, rest = location.partition("://")
    scheme = re.sub("[^a-z0-9]", "", scheme.lower()) or "unknown"
    if not sep:
        rest = location
    safe = "".join("_" if c in RESTRICTED or not c.isprintable() else c for c in rest)
    digest = hashlib.sha256(location.encode()).hexdigest()[:_DIGEST]
    room = MAX_KEY_LENGTH - len(f"{scheme}://~{digest}/{name}")
    return f"{scheme}://{safe[: max(room, 0)]}~{digest}/{name}"


def folder_uri(path_or_url: str) -> str:
    """An output folder as a URI: ``file://`` and the absolute path of a local folder (as it
    is, blanks and all: :func:`asset_key` makes them safe), an object store's URL as it is;
    no trailing ``/``."""
    if is_remote(path_or_url):
        return path_or_url.rstrip("/")
    path = path_or_url.removeprefix("file://").removeprefix("local://").rstrip("/")
    return f"file://{path}"


def endpoint_key(source: str, resource: str) -> str:
    """The key of ``resource``'s endpoint under the API root ``source``: scheme, host, port
    and path (``https://host:8443/api/users``), never its user info nor its query."""
    parts = urlsplit(source)
    netloc = parts.netloc.rpartition("@")[2]  # what follows the user info, as it is
    if parts.hostname:  # the host lowercased (an IPv6 address in brackets) and the port
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        with suppress(ValueError):  # not a port (a checked root has one): as it is
            netloc = host + (f":{parts.port}" if parts.port else "")
    return asset_key(redact(f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"), resource)


def asset_records(result: RunResult) -> list[AssetRecord]:
    """The run's tables, then its manifest, as the assets the run materialized."""
    manifest = result.manifest
    folder, _, manifest_file = result.manifest_file.rpartition("/")
    location = redact(folder_uri(folder))
    suffix = SUFFIX[manifest.format]
    keys = {table: asset_key(location, f"{table}{suffix}") for table in manifest.tables}
    common: Metadata = {
        "stamp": manifest.created,
        "manifest": redact(result.manifest_file),
        "flow_run_id": manifest.flow_run_id,
        "source": redact(manifest.source),
    }
    records = []
    for table, info in manifest.tables.items():
        if table in _RESOURCE_OF:
            upstream = (endpoint_key(manifest.source, _RESOURCE_OF[table]),)
        else:  # the activity summary: the tables it reads
            upstream = tuple(keys[t] for t in ACTIVITY_INPUTS if t in keys)
        metadata: Metadata = {
            "table": table,
            "file": info.file,
            "path": redact(f"{folder}/{info.file}"),
            "format": manifest.format,
            "rows": info.rows,
            "bytes": info.bytes,
            "sha256": info.sha256,
            **common,
        }
        records.append(
            AssetRecord(
                key=keys[table],
                name=f"{table}{suffix}",
                description=(
                    f"The {table} table placeholder-etl writes to {location}: each run as "
                    f"{table}_<stamp>{suffix}, the newest manifest naming the current one."
                ),
                upstream=upstream,
                metadata=metadata,
            )
        )
    text = manifest.to_json()  # the manifest file's bytes, as the commit wrote them
    records.append(
        AssetRecord(
            key=asset_key(location, MANIFEST_ASSET),
            name=MANIFEST_ASSET,
            description=(
                f"The manifests placeholder-etl writes to {location}: one a run, "
                "manifest_<stamp>.json, naming its tables' files, rows, bytes and sha256."
            ),
            upstream=tuple(keys.values()),
            metadata={
                "file": manifest_file,
                "path": redact(result.manifest_file),
                "format": "json",
                "bytes": len(text),
                "sha256": hashlib.sha256(text).hexdigest(),
                "tables": list(manifest.tables),
                "table_format": manifest.format,
                **common,
            },
        )
    )
    return records
