"""Soak test: many consecutive runs against a flaky, slow API; nothing may be lost.

Each run gets a fresh bundled server (in this process) with 10 % of requests answering 503
(``5xx-rate:0.1``) and a random latency, and runs the flow with its default retry settings.
The report counts runs that succeeded, retries made (by the HTTP session, from the
manifests) and faults injected (from the server), and rows lost: users expected minus
distinct user ids in the CSV. It must be 0, and every run's output must verify against its
manifest (``verify_output``: every table there, with the recorded size, sha256 and rows);
a run that does not is a failed run, its problems in the report.

    .venv/bin/python benchmarks/soak.py --runs 50 --users 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import verify_problems

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def main() -> int:
    """Run the soak test and write benchmarks/SOAK.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--error-rate", type=float, default=0.1)
    parser.add_argument("--max-latency", type=float, default=0.05)
    parser.add_argument("--runner", default="local", choices=["local", "dask"])
    parser.add_argument("--report", type=Path, default=Path(__file__).with_name("SOAK.md"))
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from placeholder_api.server import make_server
    from placeholder_etl.core.settings import ClusterSettings, FetchSettings
    from placeholder_etl.flow import etl

    rng = random.Random(2026)
    rows = []
    started = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120), tempfile.TemporaryDirectory() as tmp:
        from prefect.settings import get_current_settings

        os.environ["PREFECT_API_URL"] = get_current_settings().api.url or ""
        for run in range(1, args.runs + 1):
            latency = rng.uniform(0, args.max_latency)
            out = Path(tmp) / f"run-{run}"
            with make_server(users=args.users, seed=run, latency=latency,
                             fault=f"5xx-rate:{args.error_rate}") as server:  # fmt: skip
                t0 = time.perf_counter()
                try:
                    manifest = etl(
                        api_url=server.url,
                        output_dir=str(out),
                        fetch=FetchSettings(page_size=args.page_size, cache=False,
                                            cache_dir=str(Path(tmp) / "cache")),
                        cluster=ClusterSettings(runner=args.runner),
                    ).manifest  # fmt: skip
                    error = ""
                except Exception as exc:  # noqa: BLE001 - a failed run is a result here
                    manifest, error = None, f"{type(exc).__name__}: {exc}"
                seconds = time.perf_counter() - t0
                injected = server.stats()["faults_injected"]
            ids: set[int] = set()
            if manifest is not None and (problems := verify_problems(out)):
                manifest, error = None, "; ".join(problems)
            if manifest is not None:
                users_csv = out / manifest.tables["users"].file
                ids = {
                    int(line.split(",", 1)[0]) for line in users_csv.read_text().splitlines()[1:]
                }
            lost = args.users - len(ids & set(range(1, args.users + 1)))
            rows.append({"run": run, "ok": manifest is not None, "seconds": seconds,
                         "latency": latency, "injected": injected,
                         "retries": manifest.retries if manifest else 0,
                         "lost": lost if manifest else args.users, "error": error})  # fmt: skip
            print(f"run {run:3d}: {'ok ' if manifest else 'FAILED'} {seconds:5.1f} s, "
                  f"{injected:3d} 503s injected, lost {rows[-1]['lost']} {error}", flush=True)  # fmt: skip
    total = time.perf_counter() - started
    succeeded = sum(r["ok"] for r in rows)
    lost = sum(r["lost"] for r in rows if r["ok"])
    summary = (
        f"{succeeded}/{len(rows)} runs succeeded; {sum(r['injected'] for r in rows)} faults "
        f"injected; {sum(r['retries'] for r in rows)} request retries recorded; "
        f"{lost} rows lost in successful runs; {total:.0f} s in all"
    )
    print(summary)
    lines = [
        "# Soak test",
        "",
        (
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; `benchmarks/soak.py --runs {args.runs} --users "
            f"{args.users} --page-size {args.page_size} --error-rate {args.error_rate} "
            f"--max-latency {args.max_latency} --runner {args.runner}`"
        ),
        "",
        f"**{summary}.**",
        "",
        "| run | ok | seconds | latency s | 503s injected | retries | rows lost | error |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        *(
            f"| {r['run']} | {'yes' if r['ok'] else 'NO'} | {r['seconds']:.1f} | "
            f"{r['latency']:.3f} | {r['injected']} | {r['retries']} | {r['lost']} | "
            f"{r['error'][:80]} |"
            for r in rows
        ),
    ]
    args.report.write_text("\n".join(lines) + "\n")
    return 0 if succeeded == len(rows) and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
