"""One rule for "is this output or cache on an object store?", used by every caller."""

from __future__ import annotations

import pytest

from placeholder_etl.core.settings import FetchSettings, RunSettings
from placeholder_etl.core.store import Store
from placeholder_etl.core.urls import is_remote, local_path


@pytest.mark.parametrize(
    ("url", "remote"),
    [
        ("output", False),
        ("/abs/output", False),
        ("file:///abs/output", False),
        ("local:///abs/output", False),
        ("s3://bucket/run", True),
        ("gs://bucket/run", True),
        ("memory://bucket/run", True),
    ],
)
def test_is_remote_tells_object_stores_from_local_folders(url, remote) -> None:
    assert is_remote(url) is remote


def test_local_path_drops_the_local_schemes() -> None:
    assert local_path("file:///abs/out") == "/abs/out"
    assert local_path("local:///abs/out") == "/abs/out"
    assert local_path("out") == "out"


def test_store_and_settings_agree_on_what_is_remote(tmp_path) -> None:
    for url in (str(tmp_path / "out"), f"file://{tmp_path}/out", "memory://bucket/out"):
        assert Store.open(url).local is not is_remote(url)
        beside = FetchSettings().cache_url(url).startswith(url.rstrip("/") + "/")
        assert beside is is_remote(url)
    with pytest.raises(ValueError, match="local CSV output"):
        RunSettings(output_dir="memory://bucket/out", output={"report": True})
