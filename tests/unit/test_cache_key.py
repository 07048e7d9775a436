"""A chunk task's cache key is what decides its rows, and nothing about how they are fetched."""

from __future__ import annotations

import inspect

from placeholder_etl.core.results import ChunkJob, ChunkSpec, FetchPolicy
from placeholder_etl.core.settings import ClientSettings

SPEC = ChunkSpec(
    api_url="http://127.0.0.1:3000", resource="users", first_page=1, last_page=4, page_size=10
)
JOB = ChunkJob(spec=SPEC, cache_url="/tmp/cache", keep_formulas=False)
HOW = FetchPolicy(client=ClientSettings(), in_flight=32, max_age=3600.0, flow_host="a")


def _key(job: ChunkJob, how: FetchPolicy) -> str | None:
    from prefect.cache_policies import Inputs

    from placeholder_etl.tasks import extract_chunk_task

    (inputs,) = [p for p in extract_chunk_task.cache_policy.policies if isinstance(p, Inputs)]
    return inputs.compute_key(None, {"job": job, "how": how}, {})  # type: ignore[arg-type]


def test_the_excluded_argument_is_the_tasks_fetch_policy() -> None:
    from placeholder_etl.tasks import NOT_IN_CACHE_KEY, extract_chunk_task

    parameters = inspect.signature(extract_chunk_task.fn).parameters
    assert list(parameters) == ["job", NOT_IN_CACHE_KEY]
    assert parameters[NOT_IN_CACHE_KEY].annotation in (FetchPolicy, "FetchPolicy")


def test_how_a_chunk_is_fetched_leaves_its_key_alone() -> None:
    patient = HOW.model_copy(
        update={"client": ClientSettings(timeout=60, retries=9), "in_flight": 2, "max_age": None}
    )
    assert _key(JOB, HOW) is not None
    assert _key(JOB, patient) == _key(JOB, HOW)
    assert _key(JOB, HOW.model_copy(update={"flow_host": "b"})) == _key(JOB, HOW)


def test_what_decides_the_rows_changes_the_key() -> None:
    key = _key(JOB, HOW)
    for changed in (
        JOB.model_copy(update={"keep_formulas": True}),
        JOB.model_copy(update={"cache_url": "/tmp/other"}),
        JOB.model_copy(update={"spec": SPEC.model_copy(update={"page_size": 20})}),
        JOB.model_copy(update={"spec": SPEC.model_copy(update={"paging": "start"})}),
        JOB.model_copy(update={"spec": SPEC.model_copy(update={"total": 40})}),
    ):
        assert _key(changed, HOW) != key, changed
