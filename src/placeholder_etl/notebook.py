"""Small helpers that keep the notebooks thin: an API to talk to, and recorded values.

- :func:`open_api` returns the API a notebook reads: the one at ``api_url``, or, when that is
  empty, the bundled server started for this kernel (stopped by :meth:`NotebookApi.close`).
- :func:`show` displays a chart with its title as alternative text.
- :func:`record` shows a value and tags it in the notebook's outputs, so the papermill tests
  (and anyone reading an executed notebook) can find it by name with :func:`recorded`.
"""

from __future__ import annotations

import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["is_recorded", "open_api", "output_path", "record", "recorded", "show"]

_TAG = "placeholder_etl"


@dataclass
class NotebookApi:
    """The API a notebook works against; ``close()`` stops the bundled server if it started one."""

    url: str
    _server: AbstractContextManager[str] | None = field(default=None, repr=False)

    @property
    def bundled(self) -> bool:
        """Whether this kernel started the bundled server."""
        return self._server is not None

    def close(self) -> None:
        """Stop the bundled server (no-op for an external API)."""
        if self._server is not None:
            self._server.__exit__(None, None, None)
            self._server = None


def open_api(api_url: str = "", users: int = 10, seed: int = 0) -> NotebookApi:
    """The API at ``api_url``, or the bundled server with ``users`` users when it is empty."""
    if api_url:
        return NotebookApi(api_url.rstrip("/"))
    from placeholder_api.server import bundled_server

    server = bundled_server(users=users, seed=seed)
    return NotebookApi(server.__enter__(), server)


def output_path(output_dir: str) -> Path:
    """``output_dir`` as a Path, or a fresh temporary directory when it is empty."""
    if output_dir:
        return Path(output_dir).expanduser()
    return Path(tempfile.mkdtemp(prefix="placeholder-etl-notebook-"))


def show(figure: Any) -> None:
    """Display a matplotlib figure with its title as the image's alternative text (kept by the
    HTML report, read by screen readers), and close it."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    alt = " ".join(ax.get_title() for ax in figure.axes if ax.get_title())
    display(figure, metadata={"image/png": {"alt": alt or "chart"}})
    plt.close(figure)


def record(name: str, value: Any) -> Any:
    """Display ``value`` (JSON-able) tagged with ``name``; returns it unchanged."""
    from IPython.display import display

    display(
        {"application/json": {"name": name, "value": value}, "text/plain": f"{name}: {value!r}"},
        raw=True,
        metadata={"application/json": {_TAG: name}},
    )
    return value


def is_recorded(output: dict[str, Any]) -> bool:
    """Whether a cell output is a value :func:`record` showed (the run report leaves them out)."""
    data = output.get("data", {}).get("application/json")
    tagged = output.get("metadata", {}).get("application/json", {}).get(_TAG)
    return isinstance(data, dict) and bool(tagged)


def recorded(notebook: str | Path) -> dict[str, Any]:
    """Values :func:`record` left in an executed notebook, by name."""
    import nbformat

    values: dict[str, Any] = {}
    for cell in nbformat.read(str(notebook), as_version=4).cells:
        for output in cell.get("outputs", []):
            if is_recorded(output):
                data = output["data"]["application/json"]
                values[data["name"]] = data["value"]
    return values
