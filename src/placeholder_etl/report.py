"""The run report: ``notebooks/05-run-report.ipynb`` executed by papermill, rendered to HTML.

The notebook is installed with the package (:func:`notebooks_dir`), so ``--report`` works from
a wheel as well as from a checkout.

:func:`render_report` runs the notebook on a run's manifest in a fresh kernel and writes
``report_<timestamp>.html`` atomically beside the run's files: code hidden, and so are the
values the notebook records for its tests and the cells tagged ``remove_cell`` (notes for
people who open the notebook itself).

The notebook's numbers come from here, so they are tested without a kernel: :func:`headline`
(the run at a glance, from the manifest), :func:`activity_per_user` (streamed from the tables,
whatever their size) and :func:`sample_rows` (a bounded random sample for scatter plots).
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from placeholder_etl.core.atomic import atomic_write
from placeholder_etl.core.errors import EtlError
from placeholder_etl.core.results import Manifest
from placeholder_etl.core.settings import environment
from placeholder_etl.core.text import duration, reused, size
from placeholder_etl.core.transform import ACTIVITY_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["activity_per_user", "headline", "render_report", "sample_rows"]

REPORT_NOTEBOOK = "05-run-report.ipynb"
#: cells with this tag are left out of the HTML report (they talk to notebook users)
HIDDEN_TAG = "remove_cell"
#: the columns :func:`activity_per_user` returns, when the run has their tables (the order
#: of the pipeline's ``user_activity`` table)
ACTIVITY_MEASURES = ACTIVITY_COLUMNS[2:]  # without user_id and name


class ReportError(EtlError):
    """The report could not be made (the data it reports on is unaffected)."""


def notebooks_dir() -> Path:
    """``$PLACEHOLDER_ETL_NOTEBOOKS``, else the package's ``notebooks/`` folder.

    The package's report notebook is installed with it (package data); in a checkout it is a
    link to ``notebooks/05-run-report.ipynb``, the copy people edit.
    """
    if explicit := environment().notebooks:
        return Path(explicit)
    return Path(__file__).with_name("notebooks")


def render_report(
    manifest: Path, output_dir: Path, timeout: int = 600, flow_run_url: str | None = None
) -> Path:
    """Execute the report notebook on ``manifest`` and write its HTML into ``output_dir``;
    the flow run's id links to ``flow_run_url`` when given (its page in the Prefect UI).

    Returns:
        The path of ``report_<timestamp>.html``.

    Raises:
        ReportError: the notebook is missing or a cell failed (named, with its error).
    """
    import papermill

    notebook = notebooks_dir() / REPORT_NOTEBOOK
    if not notebook.is_file():
        raise ReportError(f"report notebook {notebook} not found (set PLACEHOLDER_ETL_NOTEBOOKS)")
    stamp = manifest.stem.removeprefix("manifest_")
    with tempfile.TemporaryDirectory(prefix="placeholder-etl-report-") as scratch:
        executed = Path(scratch) / REPORT_NOTEBOOK
        try:
            node = papermill.execute_notebook(
                str(notebook),
                str(executed),
                parameters={
                    "manifest": str(manifest),
                    "output_dir": str(output_dir),
                    "flow_run_url": flow_run_url or "",
                },
                kernel_name="python3",
                cwd=scratch,
                progress_bar=False,
                execution_timeout=timeout,
                # the kernel's own notices (e.g. "running over TCP without encryption": it
                # listens on 127.0.0.1 only) would reach the terminal's stderr
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
        except papermill.PapermillExecutionError as exc:
            raise ReportError(
                f"report notebook {notebook.name} failed in cell {exc.exec_count}: "
                f"{exc.ename}: {exc.evalue}"
            ) from None
        html = _to_html(node, title=f"Run report {stamp} · placeholder-etl")
    target = output_dir / f"report_{stamp}.html"
    with atomic_write(target) as handle:
        handle.write(html.encode())
    return target


def _to_html(node, title: str) -> str:
    """The executed notebook as HTML for readers: no code, no prompts, no recorded values, no
    cells tagged :data:`HIDDEN_TAG`, no stderr (warnings, logs); ``title`` in the browser's
    tab, each chart's alternative text from :func:`placeholder_etl.notebook.show`."""
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    from placeholder_etl.notebook import is_recorded

    for cell in node.cells:
        if cell.cell_type == "code":
            cell.outputs = [
                _with_alt_text(output)
                for output in cell.outputs
                if not is_recorded(output)
                and not (output.output_type == "stream" and output.name == "stderr")
            ]
    node.metadata["title"] = title
    exporter = HTMLExporter(
        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    hidden = {HIDDEN_TAG, "parameters", "injected-parameters"}  # the last two: input only
    exporter.register_preprocessor(
        TagRemovePreprocessor(remove_cell_tags=hidden, enabled=True), enabled=True
    )
    html, _ = exporter.from_notebook_node(node)
    return html


def _with_alt_text(output: Any) -> Any:
    """A PNG output as an ``<img>`` with its alternative text (nbconvert's template has none)."""
    alt = output.get("metadata", {}).get("image/png", {}).get("alt")
    if "image/png" not in output.get("data", {}) or not alt:
        return output
    png = output.data["image/png"].strip()
    output.data = {"text/html": f'<img src="data:image/png;base64,{png}" alt="{escape(alt)}">'}
    return output


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def headline(manifest: Manifest, flow_run_url: str | None = None) -> str:
    """The run at a glance, as Markdown: where from, when, how long, retries, cache hits, and
    the rows of every table; the flow run's id a link to ``flow_run_url`` when given (its
    page in the Prefect UI; none for a server that is gone: the id as text)."""
    timings = manifest.timings
    workers = len(manifest.workers)
    took = (
        f"{duration(timings.total_s)}: counting {duration(timings.count_s)}, "
        f"extracting {duration(timings.extract_s)}, loading {duration(timings.load_s)}"
    )
    pages = f"{manifest.pages:,} in {manifest.chunks:,} tasks on {workers} worker" + (
        "s" if workers != 1 else ""
    )
    facts = [
        ("Source", f"`{manifest.source}`"),
        ("Resources", ", ".join(manifest.resources)),
        ("Started", f"{_when(manifest.started)} (files stamped `{manifest.created}`)"),
        ("Duration", took),
        ("Pages", pages),
        ("Retries", f"{manifest.retries:,} request retries"),
        (
            "Cache hits",
            (
                f"{reused(manifest.pages_reused, manifest.pages_revalidated, manifest.pages)}, "
                f"{manifest.cached_chunks:,} of {manifest.chunks:,} tasks from cache"
            ),
        ),
        ("Prefect flow run", _flow_run(manifest.flow_run_id, flow_run_url)),
    ]
    # the source in code style: a bundled API is gone by the time anyone reads this
    heading = f"# Run report: {', '.join(manifest.resources)} from `{manifest.source}`"
    lines = [heading, "", "| | |", "| --- | --- |"]
    lines += [f"| **{name}** | {value} |" for name, value in facts]
    lines += ["", "| table | rows | size | file |", "| --- | ---: | ---: | --- |"]
    lines += [
        f"| {name} | {info.rows:,} | {size(info.bytes)} | `{info.file}` |"
        for name, info in manifest.tables.items()
    ]
    return "\n".join(lines)


def _flow_run(flow_run_id: str | None, url: str | None) -> str:
    if not flow_run_id:
        return "`none`"
    return f"`{flow_run_id}` ([open in the Prefect UI](<{url}>))" if url else f"`{flow_run_id}`"


def _stream(path: Path, columns: list[str], chunk_rows: int):
    import pandas as pd

    yield from pd.read_csv(path, usecols=columns, chunksize=chunk_rows)


def _counts(path: Path, key: str, chunk_rows: int, owner: pd.Series | None = None) -> pd.Series:
    """How often each value of ``key`` occurs in a table (mapped through ``owner`` first: a
    comment's post to the post's user), read ``chunk_rows`` rows at a time."""
    import pandas as pd

    total = pd.Series(dtype="int64")
    for chunk in _stream(path, [key], chunk_rows):
        values = chunk[key] if owner is None else chunk[key].map(owner)
        total = total.add(values.value_counts(), fill_value=0)
    return total.astype("int64")


def activity_per_user(
    folder: Path, manifest: Manifest, chunk_rows: int = 1_000_000
) -> pd.DataFrame | None:
    """One row per user (index ``user_id``) with the :data:`ACTIVITY_MEASURES` the run's tables
    allow; None without ``users_flat``.

    Reads the run's ``user_activity`` table when it wrote one; otherwise counts from the
    tables it has, ``chunk_rows`` rows at a time, keeping only the counts and the id columns
    of posts and albums (to credit comments and photos to users).
    """
    import pandas as pd

    tables = {name: folder / info.file for name, info in manifest.tables.items()}
    if "user_activity" in tables:
        columns = ["user_id", *ACTIVITY_MEASURES]
        return pd.read_csv(tables["user_activity"], usecols=columns).set_index("user_id")
    if "users_flat" not in tables:
        return None
    users = pd.read_csv(tables["users_flat"], usecols=["id"])["id"].rename("user_id")
    frame = pd.DataFrame(index=pd.Index(users))

    def add(name: str, counts: pd.Series) -> None:
        frame[name] = counts.reindex(frame.index, fill_value=0).astype("int64")

    for parent, child, made, received in [
        ("posts", "comments", "posts_written", "comments_received"),
        ("albums", "photos", "albums", "photos"),
    ]:
        if parent not in tables:
            continue
        owner = pd.read_csv(tables[parent], usecols=["id", "user_id"]).set_index("id")["user_id"]
        add(made, owner.value_counts())
        if child in tables:
            add(received, _counts(tables[child], f"{parent[:-1]}_id", chunk_rows, owner))
        del owner
    if "todos" in tables:
        todos, done = pd.Series(dtype="int64"), pd.Series(dtype="int64")
        for chunk in _stream(tables["todos"], ["user_id", "completed"], chunk_rows):
            todos = todos.add(chunk["user_id"].value_counts(), fill_value=0)
            finished = chunk.loc[chunk["completed"].astype(bool), "user_id"]
            done = done.add(finished.value_counts(), fill_value=0)
        add("todos", todos)
        add("todos_done", done)
        ratio = frame["todos_done"] / frame["todos"].where(frame["todos"] > 0)
        frame["todos_done_ratio"] = ratio.fillna(0.0).round(4)  # as in user_activity
    return frame[[c for c in ACTIVITY_MEASURES if c in frame]]


def sample_rows(
    path: Path, rows: int, size: int, columns: list[str], seed: int = 0
) -> pd.DataFrame:
    """At most ``size`` rows of a table of ``rows`` rows, picked at random (the same ones for
    the same ``seed``), without holding more than those in memory."""
    import numpy as np
    import pandas as pd

    if rows <= size:
        return pd.read_csv(path, usecols=columns)
    keep = np.zeros(rows + 1, dtype=bool)
    keep[0] = True  # the header
    keep[np.random.default_rng(seed).choice(np.arange(1, rows + 1), size, replace=False)] = True
    return pd.read_csv(path, usecols=columns, skiprows=lambda i: i > rows or not keep[i])
