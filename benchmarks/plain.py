"""The plain baseline: what a competent engineer writes without an orchestrator.

One ``requests.Session``, pages fetched one after another (``?_page=N&_limit=SIZE``) until
a short page or ``X-Total-Count`` records, rows built directly as tuples from the JSON, one
``DataFrame.from_records(...).to_csv(...)``. It writes the same seed table as the flow
(``users_<UTC %Y%m%dT%H%M%SZ>.csv``: ``ID,Name,Username,Email,Address,PhoneNumber,Company``),
byte for byte, so :mod:`bench` can compare the two.

Usage::

    .venv/bin/python benchmarks/plain.py --api-url http://127.0.0.1:3000 --output-dir out
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import requests

COLUMNS = ["ID", "Name", "Username", "Email", "Address", "PhoneNumber", "Company"]


def fetch_rows(api_url: str, page_size: int = 1000) -> list[tuple]:
    """Fetch every user, page by page, as seed-table rows.

    Stops at the first short (or empty) page, or once ``X-Total-Count`` records are in.
    """
    rows: list[tuple] = []
    base = api_url.rstrip("/")
    with requests.Session() as session:
        page = 1
        while True:
            response = session.get(
                f"{base}/users", params={"_page": page, "_limit": page_size}, timeout=30
            )
            response.raise_for_status()
            users = response.json()
            rows.extend(
                (
                    u["id"],
                    u["name"],
                    u["username"],
                    u["email"],
                    f"{u['address']['street']}, {u['address']['suite']}, {u['address']['city']}",
                    u["phone"],
                    u["company"]["name"],
                )
                for u in users
            )
            total = response.headers.get("X-Total-Count")
            if len(users) < page_size or (total is not None and len(rows) >= int(total)):
                return rows
            page += 1


def run_plain(api_url: str, output_dir: Path, page_size: int = 1000) -> Path:
    """Fetch all users from ``api_url`` and write ``users_<UTC timestamp>.csv``.

    Args:
        api_url: root of a json-server-style API.
        output_dir: where the CSV goes (created if missing).
        page_size: records per request.

    Returns:
        The path of the CSV written.
    """
    rows = fetch_rows(api_url, page_size)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"users_{datetime.now(UTC):%Y%m%dT%H%M%SZ}.csv"
    pd.DataFrame.from_records(rows, columns=COLUMNS).to_csv(path, index=False)
    return path


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--api-url``, ``--output-dir``, ``--page-size``; prints the CSV path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-url", default="https://jsonplaceholder.typicode.com")
    parser.add_argument("--output-dir", type=Path, default=Path("output"))
    parser.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args(argv)
    print(run_plain(args.api_url, args.output_dir, args.page_size))


if __name__ == "__main__":
    main()
