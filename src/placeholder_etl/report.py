"""The run report: ``notebooks/05-run-report.ipynb`` executed by papermill, rendered to HTML.

:func:`render_report` runs the notebook on a run's manifest in a fresh kernel and writes
``report_<timestamp>.html`` (code hidden) atomically beside the run's files.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from placeholder_etl.core.errors import EtlError
from placeholder_etl.core.settings import environment
from placeholder_etl.core.staging import atomic_write

__all__ = ["render_report"]

REPORT_NOTEBOOK = "05-run-report.ipynb"


class ReportError(EtlError):
    """The report could not be made (the data it reports on is unaffected)."""


def notebooks_dir() -> Path:
    """``$PLACEHOLDER_ETL_NOTEBOOKS``, else the checkout's ``notebooks/`` folder."""
    if explicit := environment().notebooks:
        return Path(explicit)
    return Path(__file__).resolve().parents[2] / "notebooks"


def render_report(manifest: Path, output_dir: Path, timeout: int = 600) -> Path:
    """Execute the report notebook on ``manifest`` and write its HTML into ``output_dir``.

    Returns:
        The path of ``report_<timestamp>.html``.

    Raises:
        ReportError: the notebook is missing or a cell failed (named, with its error).
    """
    import papermill
    from nbconvert import HTMLExporter

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
                parameters={"manifest": str(manifest), "output_dir": str(output_dir)},
                kernel_name="python3",
                cwd=scratch,
                progress_bar=False,
                execution_timeout=timeout,
            )
        except papermill.PapermillExecutionError as exc:
            raise ReportError(
                f"report notebook {notebook.name} failed in cell {exc.exec_count}: "
                f"{exc.ename}: {exc.evalue}"
            ) from None
        exporter = HTMLExporter(
            exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
        )
        html, _ = exporter.from_notebook_node(node)
    target = output_dir / f"report_{stamp}.html"
    with atomic_write(target) as handle:
        handle.write(html.encode())
    return target
