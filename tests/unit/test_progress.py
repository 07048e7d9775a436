"""The phases after the pages: said in the flow's process, on a Dask worker, outside a run."""

from __future__ import annotations

import logging

import pytest

from placeholder_etl import progress
from placeholder_etl.progress import PHASE_TOPIC, Phase, assembling, listening, phase, relaying


class FakeWorker:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def log_event(self, topic: str, msg: dict) -> None:
        self.events.append((topic, msg))


class FakeClient:
    def __init__(self) -> None:
        self.handlers: dict = {}

    def subscribe_topic(self, topic, handler) -> None:
        self.handlers[topic] = handler

    def unsubscribe_topic(self, topic) -> None:
        del self.handlers[topic]


@pytest.fixture
def heard() -> list:
    news: list = []
    with listening(news.append):
        yield news


def test_outside_a_run_a_phase_is_logged_and_told(heard) -> None:
    logged: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("placeholder_etl.progress")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assembling("posts", 3, 8)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert heard == [Phase("assembling tables (3/8): posts")]
    assert logged == ["assembling tables (3/8): posts"]


def test_on_a_dask_worker_a_phase_is_an_event_the_flows_process_relays(heard, monkeypatch) -> None:
    """The worker's listeners are not the terminal's: the flow's client relays the event,
    its own run's only (a shared scheduler carries other runs' events too)."""
    from prefect import artifacts
    from prefect.runtime import flow_run

    worker, client = FakeWorker(), FakeClient()
    monkeypatch.setattr(progress, "_dask_worker", lambda: worker)
    monkeypatch.setattr(flow_run, "get_id", lambda: "run-1")
    monkeypatch.setitem(progress._artifacts, "run-1", "artifact-1")
    shown: list = []
    monkeypatch.setattr(
        artifacts, "update_progress_artifact", lambda *args, **kw: shown.append((args, kw))
    )
    phase("assembling tables (1/2): users")
    assert heard == []  # not in this process
    assert worker.events == [
        (PHASE_TOPIC, {"flow_run": "run-1", "text": "assembling tables (1/2): users"})
    ]
    with relaying(client):
        relay = client.handlers[PHASE_TOPIC]
        relay((0.0, {"flow_run": "run-2", "text": "another run's"}))
        for _, event in worker.events:
            relay((0.0, event))
    assert client.handlers == {}  # unsubscribed at the end
    assert heard == [Phase("assembling tables (1/2): users")]
    description = "Pages all in; assembling tables (1/2): users"  # the flow run's artifact too
    assert shown == [(("artifact-1", 100.0), {"description": description})]
