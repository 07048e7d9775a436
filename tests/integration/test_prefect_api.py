"""The temporary Prefect server a run starts when no API is configured."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from placeholder_etl.prefect_api import TemporaryServer


def test_a_temporary_server_answers_and_is_gone_after_stop(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))  # a first start: creates its DB
    server = TemporaryServer()
    try:
        assert server.wait() > 0
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(f"{server.url}/health", timeout=10) as health:
            assert health.read() == b"true"
        with pytest.raises(urllib.error.HTTPError, match="404"):  # no UI is served
            no_proxy.open(f"{server.url.removesuffix('/api')}/", timeout=10)
    finally:
        server.stop()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0


def test_a_server_that_does_not_answer_in_time_is_stopped_and_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    server = TemporaryServer()
    with pytest.raises(RuntimeError, match=r"^the temporary Prefect server did not start: \S"):
        server.wait(timeout=0.2)  # it takes seconds to import
    assert server._process.poll() is not None  # stopped, not left running
