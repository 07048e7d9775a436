"""Failure notifications: a Slack-compatible webhook message when a flow run fails or crashes.

Two ways, for two kinds of failure:

- **Client side** (:func:`notify_failure`, a flow ``on_failure``/``on_crashed`` hook): the run's
  own process posts ``{"text": ...}`` to ``$PLACEHOLDER_ETL_NOTIFY_WEBHOOK`` once the run has
  failed for good (after retries), naming the flow and run, the failed task, the error's last
  line and the run's UI link. A message that cannot be delivered is logged; it never hides or
  replaces the run's own error.
- **Server side** (:func:`install_failure_automation`): a Prefect automation that sends a
  notification block on ``prefect.flow-run.Failed``/``Crashed`` events, for failures the
  process cannot report itself (killed, out of memory, a lost worker machine).

The webhook URL is a secret: it is read from the environment (or kept in the block's secret
values), never passed as a flow parameter, and never logged.
"""

from __future__ import annotations

import logging
import time
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from placeholder_etl.core.redact import redact
from placeholder_etl.core.settings import environment

__all__ = [
    "BLOCK_NAME",
    "WEBHOOK_ENV",
    "failure_text",
    "install_failure_automation",
    "notify_failure",
    "post_webhook",
]

WEBHOOK_ENV = "PLACEHOLDER_ETL_NOTIFY_WEBHOOK"
BLOCK_NAME = "placeholder-etl-failure-webhook"
AUTOMATION_FILE = Path(__file__).resolve().parents[2] / "automations" / "notify-on-failure.yaml"
logger = logging.getLogger("placeholder_etl.notify")


def failure_text(
    flow: str, run: str, state: str, failed_task: str | None, error: str, ui_url: str | None
) -> str:
    """The message: what failed, where, why, and where to look (secrets hidden)."""
    lines = [f":rotating_light: Flow run `{flow}/{run}` {state.lower()}."]
    if failed_task:
        lines.append(f"Failed task: `{failed_task}`")
    lines.append(f"Error: {error}")
    if ui_url:
        lines.append(f"<{ui_url}|Open the run in Prefect>")
    return redact("\n".join(lines))


def post_webhook(url: str, text: str, timeout: float = 10.0) -> bool:
    """POST ``{"text": text}`` to ``url``; log (never raise) when it cannot be delivered."""
    host = urlsplit(url).hostname or "the webhook"  # the full URL is a secret: name the host
    try:
        response = requests.post(url, json={"text": text}, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as exc:
        reason = type(exc).__name__
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            reason = f"HTTP {exc.response.status_code}"
        logger.error("could not deliver the failure notification to %s: %s", host, reason)
        return False
    return True


def _last_line(state: Any) -> str:
    exc = state.result(raise_on_failure=False) if state is not None else None
    text = str(exc) if isinstance(exc, BaseException) else str(getattr(state, "message", ""))
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def _failed_task(flow_run_id: Any, wait: float = 10.0) -> str | None:
    """The name of a failed task run of this flow run, from the Prefect API.

    Task run states reach the API as events, a moment after the task failed, while this hook
    runs as soon as the flow fails: the API is asked again for up to ``wait`` seconds.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    failed_states = TaskRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED])
    deadline = time.monotonic() + wait
    with get_client(sync_client=True) as client:
        while True:
            failed = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=failed_states)),
            )
            if failed or time.monotonic() > deadline:
                return failed[0].name if failed else None
            time.sleep(0.5)


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect flow hook: post the failure to ``$PLACEHOLDER_ETL_NOTIFY_WEBHOOK`` if it is set."""
    secret = environment().notify_webhook
    if secret is None or not secret.get_secret_value():
        return
    url = secret.get_secret_value()
    try:
        failed_task = _failed_task(flow_run.id)
    except Exception:
        logger.warning("could not look up the failed task", exc_info=True)
        failed_task = None
    from prefect.utilities.urls import url_for

    text = failure_text(
        flow=flow.name,
        run=flow_run.name,
        state=state.name,
        failed_task=failed_task,
        error=_last_line(state),
        ui_url=url_for("flow-run", obj_id=flow_run.id),
    )
    if post_webhook(url, text):
        logger.info("failure notification sent to %s", urlsplit(url).hostname)


def install_failure_automation(
    webhook_url: str, automation_file: Path = AUTOMATION_FILE
) -> tuple[str, str]:
    """Create (or replace) the webhook block and the failure automation on the Prefect API.

    The URL goes into the block's secret values, so the UI and API show it masked.

    Returns:
        The block document id and the automation id.
    """
    import yaml
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name=BLOCK_NAME,
        url="{{webhook_url}}",
        json_data={"text": "{{subject}}\n{{body}}"},
        secrets={"webhook_url": webhook_url},
    )
    block_id = block.save(BLOCK_NAME, overwrite=True, _sync=True)
    spec = yaml.safe_load(automation_file.read_text())
    for action in spec["actions"]:
        if action["type"] == "send-notification":
            action["block_document_id"] = str(block_id)
    with suppress(ValueError):  # replace an earlier one; ValueError: there was none
        Automation.read(name=spec["name"], _sync=True).delete(_sync=True)
    automation = Automation.model_validate(spec).create(_sync=True)
    return str(block_id), str(automation.id)
