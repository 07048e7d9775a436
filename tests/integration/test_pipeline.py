"""The pipeline's steps without Prefect, against the bundled API over loopback."""

from __future__ import annotations

from placeholder_etl.core import extract
from placeholder_etl.core.extract import extract_chunk, render_page
from placeholder_etl.core.results import ChunkSpec
from placeholder_etl.core.store import Store


def test_a_chunk_freezes_old_objects_only_while_it_runs(api, tmp_path, monkeypatch) -> None:
    """Pages skip rescanning Prefect's objects, but nothing stays frozen (kernels run on)."""
    import gc

    frozen_while_writing: list[int] = []
    render = render_page

    def spy(*args, **kwargs):
        frozen_while_writing.append(gc.get_freeze_count())
        return render(*args, **kwargs)

    monkeypatch.setattr(extract, "render_page", spy)
    spec = ChunkSpec(api_url=api.url, resource="users", first_page=1, last_page=2, page_size=5)
    result = extract_chunk(spec, Store.open(str(tmp_path / "cache")))
    assert result.rows == 10
    assert frozen_while_writing
    assert min(frozen_while_writing) > 0
    assert gc.get_freeze_count() == 0
