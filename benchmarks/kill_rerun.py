"""SIGKILL a big run mid-way, check nothing was lost, rerun, count the pages reused.

    .venv/bin/python benchmarks/kill_rerun.py --users 300000 --kill-after 20

1. a small good run writes the "previous" users CSV;
2. a run of ``--users`` users (default CLI settings, bundled server with ``--latency``) is
   killed with SIGKILL (its whole process group) after ``--kill-after`` seconds;
3. the output dir must be byte for byte as before (no partial file under a final name);
4. the rerun must write every row, and the pages it did not have to fetch again were reused
   from the cache of the killed run;
5. the outputs of the good run and the rerun must verify against their manifests
   (``verify_output``: every table there, with the recorded size, sha256 and rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import verify_problems

ROOT = Path(__file__).resolve().parents[1]


def _complete(out: Path, new_names: set[str]) -> str | bool:
    """Whether files the killed run managed to commit are whole (their manifest's sha256)."""
    manifests = [n for n in new_names if n.startswith("manifest_")]
    tables = [n for n in new_names if not n.startswith("manifest_")]
    if not new_names:
        return "none (killed before its commit)"
    if not manifests:
        return False  # tables without their manifest: a partial commit
    manifest = json.loads((out / manifests[0]).read_text())
    return all(
        hashlib.sha256((out / info["file"]).read_bytes()).hexdigest() == info["sha256"]
        for info in manifest["tables"].values()
    ) and len(tables) == len(manifest["tables"])


def main() -> int:
    """Run the scenario and print what happened."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--kill-after", type=float, default=20.0)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()

    from placeholder_api.server import make_server

    with tempfile.TemporaryDirectory() as tmp:
        out, cache = Path(tmp) / "out", Path(tmp) / "cache"
        base = [sys.executable, "-m", "placeholder_etl", "run", "--output-dir", str(out),
                "--cache-dir", str(cache)]  # fmt: skip
        with make_server(users=1000) as small:
            subprocess.run([*base, "--api-url", small.url, "--no-cache"], check=True,
                           capture_output=True)  # fmt: skip
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        earlier = verify_problems(out)
        with make_server(users=args.users, latency=args.latency) as server:
            run = subprocess.Popen([*base, "--api-url", server.url], start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(args.kill_after)
            finished_first = run.poll() is not None
            if not finished_first:
                os.killpg(run.pid, signal.SIGKILL)
            run.wait()
            fetched = server.stats()["requests"]
            after = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix != ".tmp"}
            unchanged = all(after.get(name) == data for name, data in before.items())
            complete = _complete(out, set(after) - set(before))
            killed_temps = sorted(p.name for p in out.glob(".*.tmp"))
            server.reset_stats()
            started = time.perf_counter()
            rerun = subprocess.run([*base, "--api-url", server.url], capture_output=True,
                                   text=True, check=False)  # fmt: skip
            rerun_s = time.perf_counter() - started
            refetched = server.stats()["requests"]
        leftovers = sorted(p.name for p in out.glob(".*.tmp"))
        pages = -(-args.users // 1000) + 1
        rerun_problems = verify_problems(out)  # the newest manifest: the rerun's
        newest = max(out.glob("manifest_*.json"), key=lambda p: p.stat().st_mtime)
        users = out / json.loads(newest.read_text())["tables"]["users"]["file"]
        rows = len(users.read_text().splitlines()) - 1
        print(
            f"killed after {args.kill_after:g} s: {'no (it had finished)' if finished_first else 'yes'}"
        )
        print(f"requests before the kill: {fetched} of {pages}")
        print(f"earlier files unchanged: {unchanged}; files the killed run committed: "
              f"{complete}; its temp files: {killed_temps}; left after the rerun: {leftovers}")  # fmt: skip
        print(f"rerun: exit {rerun.returncode}, {rerun_s:.1f} s, {refetched} requests "
              f"({pages - refetched} of {pages} reused from the cache), {rows} rows written")  # fmt: skip
        print(
            f"previous users CSV untouched: {all((out / n).read_bytes() == b for n, b in before.items())}"
        )
        print(f"outputs verify: earlier {'; '.join(earlier) or 'yes'}; rerun "
              f"{'; '.join(rerun_problems) or 'yes'}")  # fmt: skip
        ok = unchanged and complete is not False and rerun.returncode == 0
        ok = ok and rows == args.users and not leftovers and not earlier and not rerun_problems
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
