"""A task runner chosen inside the flow run, once its parameters and the run's size are known.

Prefect fixes a flow's task runner when the flow is decorated, before any parameter arrives;
this flow's runner depends on its ``cluster`` parameter (threads, a LocalCluster shaped for
the number of records, a scheduler address, Saturn Cloud). :class:`ChosenAtStart` is the
flow's task runner: it holds nothing until the flow calls :meth:`ChosenAtStart.use` with the
real runner (:func:`placeholder_etl.cluster.make_task_runner`), then hands every submission
to it. So one flow run does the whole job, and deployments still choose the runner with a
parameter.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Self

from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

__all__ = ["ChosenAtStart"]


class ChosenAtStart(TaskRunner[PrefectFuture[Any]]):
    """Delegates to the task runner given to :meth:`use` (threads if none was given)."""

    def __init__(self) -> None:
        self._runner: TaskRunner[Any] | None = None
        self._stack = ExitStack()
        super().__init__()

    @property
    def name(self) -> str:
        """The chosen runner's name."""
        return self._runner.name if self._runner is not None else "chosen-at-start"

    @property
    def runner(self) -> TaskRunner[Any]:
        """The runner in use; a thread pool when the flow submits before choosing."""
        if self._runner is None:
            self.use(ThreadPoolTaskRunner())
        assert self._runner is not None
        return self._runner

    def use(self, runner: TaskRunner[Any]) -> TaskRunner[Any]:
        """Start ``runner`` and send every task submitted from now on to it.

        Raises:
            RuntimeError: a runner was chosen already.
        """
        if self._runner is not None:
            raise RuntimeError(f"the task runner was chosen already ({self._runner.name})")
        self._runner = self._stack.enter_context(runner)
        return self._runner

    def duplicate(self) -> Self:
        """A fresh, unchosen runner (Prefect duplicates the flow's runner for every run)."""
        return type(self)()

    def submit(
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Any = None,
        dependencies: Any = None,
    ) -> PrefectFuture[Any]:
        """Submit to the chosen runner."""
        return self.runner.submit(task, parameters, wait_for, dependencies)

    def map(self, task: Any, parameters: dict[str, Any], wait_for: Any = None) -> Any:
        """Map with the chosen runner (a DaskTaskRunner maps on its own client)."""
        return self.runner.map(task, parameters, wait_for)

    def __enter__(self) -> Self:
        super().__enter__()
        self._stack.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._stack.__exit__(*exc_info)
        finally:
            super().__exit__(*exc_info)
