"""The dlt peer: what a user might pick instead of the flow, dlt's ``rest_api`` source.

One ``users`` resource paged with a page-number paginator on ``_page`` (``_limit`` = page size,
1000), loaded by a pipeline to the ``filesystem`` destination (a local folder) with
``loader_file_format="csv"``; everything else is dlt's default (one extract thread paging
one request after another, like the plain script; normalize in the process). The pipeline
working directory is a fresh folder under ``--output-dir`` each run, so nothing is reused.

The paginator is dlt's ``PageNumberPaginator`` told to stop like the plain script and the flow
do: at a short page, or once ``X-Total-Count`` records are in (json-server gives a record
count in a header, not a page count in the body, which is what ``total_path`` reads). Without
that it would ask for one more, empty page at the end.

Runs in its own virtual environment (``benchmarks/requirements-dlt.txt``; ``bench.py``
creates ``benchmarks/.venv-dlt``). Prints the folder holding the ``users`` table's CSV files.
``--check N`` then verifies N rows with ids 1..N (``bench.py`` checks outside the timing).

Usage::

    benchmarks/.venv-dlt/bin/python benchmarks/dlt_run.py --api-url URL --output-dir DIR
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

# No anonymous usage reports from a benchmark (and no waiting on a network we may not have).
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
# Plain .csv files like the plain script's and the flow's (the filesystem destination gzips
# them by default).
os.environ.setdefault("NORMALIZE__DATA_WRITER__DISABLE_COMPRESSION", "true")

import dlt
from dlt.sources.helpers.rest_client.paginators import PageNumberPaginator
from dlt.sources.rest_api import rest_api_source

DATASET = "placeholder"
PIPELINE = "placeholder_users"


class JsonServerPaginator(PageNumberPaginator):
    """``_page=1, 2, ...``; stops at a short page or once ``X-Total-Count`` records are in."""

    def __init__(self, page_size: int) -> None:
        """Pages of ``page_size`` records, numbered from 1."""
        super().__init__(base_page=1, page_param="_page", total_path=None)
        self.page_size = page_size
        self.records = 0

    def init_request(self, request: Any) -> None:
        """First page: reset the record count too."""
        self.records = 0
        super().init_request(request)

    def update_state(self, response: Any, data: list[Any] | None = None) -> None:
        """Next page number, unless this page was short or the total is reached."""
        super().update_state(response, data)
        received = len(data or [])
        self.records += received
        total = response.headers.get("X-Total-Count")
        if received < self.page_size or (total is not None and self.records >= int(total)):
            self._has_next_page = False


def run_dlt(api_url: str, output_dir: Path, page_size: int = 1000) -> Path:
    """Load every user from ``api_url`` as CSV under ``output_dir``; the users table's folder."""
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    source = rest_api_source(
        {
            "client": {"base_url": api_url.rstrip("/") + "/"},
            "resources": [
                {
                    "name": "users",
                    "endpoint": {
                        "path": "users",
                        "params": {"_limit": page_size},
                        "paginator": JsonServerPaginator(page_size),
                        "data_selector": "$",
                    },
                }
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name=PIPELINE,
        destination=dlt.destinations.filesystem(bucket_url=(output_dir / "data").as_uri()),
        dataset_name=DATASET,
        pipelines_dir=str(output_dir / "pipelines"),
    )
    info = pipeline.run(source, loader_file_format="csv")
    info.raise_on_failed_jobs()
    return output_dir / "data" / DATASET / "users"


def check(table_dir: Path, users: int) -> list[str]:
    """Problems with the users table: not ``users`` rows, or ids other than 1..users."""
    ids: list[int] = []
    for path in sorted(table_dir.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            ids += [int(row["id"]) for row in csv.DictReader(handle)]
    problems = []
    if len(ids) != users:
        problems.append(f"{len(ids)} rows, expected {users}")
    if sorted(ids) != list(range(1, users + 1)):
        problems.append(f"ids are not 1..{users}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--api-url``, ``--output-dir``, ``--page-size``, ``--check N``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--check", type=int, metavar="N", help="verify N rows, ids 1..N")
    args = parser.parse_args(argv)
    table_dir = run_dlt(args.api_url, args.output_dir, args.page_size)
    print(table_dir, flush=True)
    if args.check is not None:
        problems = check(table_dir, args.check)
        for problem in problems:
            print(f"dlt_run: {problem}", file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
