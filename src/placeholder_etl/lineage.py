"""A committed run's tables and manifest as Prefect assets: one materialization each.

Called by the flow after the commit, so only a committed run records materializations: a run
that fails before records none. Each asset gets a materializing task run of its own
(``materialize users.csv``), since a task's upstream assets are those of every asset it
materializes: its key, upstream keys and metadata come from
:func:`~placeholder_etl.core.assets.asset_records`. When the task ends, Prefect emits a
``prefect.asset.materialization.succeeded`` event for the asset (the metadata is its
payload, the upstream assets and the flow and task runs its related resources) and a
``prefect.asset.referenced`` event for each upstream asset. Prefect Cloud draws the assets
and their lineage from those events; an open-source server keeps them in its event feed.

The tasks run in the flow's process, after the tables were written: the task only adds the
metadata. One that fails is logged and Prefect records a failed materialization; the run,
already committed, stays completed.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.cache_policies import NO_CACHE

from placeholder_etl.core.assets import AssetRecord, asset_records
from placeholder_etl.core.results import RunResult
from placeholder_etl.core.text import plural

__all__ = ["record_lineage"]


def _add_metadata(key: str, metadata: dict[str, Any]) -> None:
    """The materializing task's body: the asset is already written; its metadata is added."""
    add_asset_metadata(key, metadata)


def _materialize(record: AssetRecord) -> Any:
    """A task materializing ``record``'s asset with its upstream assets (built per asset:
    ``@materialize`` takes the assets when the task is made)."""
    asset = Asset(
        key=record.key,
        properties=AssetProperties(name=record.name, description=record.description),
    )
    return materialize(
        asset,
        name="materialize-asset",
        task_run_name=f"materialize {record.name}",
        asset_deps=list(record.upstream),
        cache_policy=NO_CACHE,  # a cached state records no materialization
    )(_add_metadata)


def record_lineage(result: RunResult) -> None:
    """Materialize the run's tables, then its manifest, as Prefect assets."""
    logger = get_run_logger()
    records = asset_records(result)
    failed = []
    for record in records:
        state = _materialize(record)(record.key, record.metadata, return_state=True)
        if not state.is_completed():
            failed.append(record.name)
            logger.warning("asset %s: its materialization was not recorded", record.key)
    location = records[-1].key.rpartition("/")[0]
    logger.info(
        "recorded %s under %s",
        plural(len(records) - len(failed), "asset materialization"),
        location,
    )
