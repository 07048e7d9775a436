"""Requests per second an API server answers for pages of 1,000 users.

``wrk`` (Debian package ``wrk``) when it is installed, else a small asyncio client in this
file (keep-alive connections, each answer read whole and dropped; on 2 cores it shares them
with the server, so it understates a fast server more than wrk does). Both cycle through
``/users?_page=N&_limit=1000`` for N = 1..pages.

``bench.py`` calls :func:`probe` on the API server it uses and writes the figures into
``RESULTS.md``. As a command it starts the fast server (with ``--bundled`` the bundled one
too, with ``--json-server BIN`` a real json-server over the same users) and prints a table::

    .venv/bin/python benchmarks/throughput.py --users 100000 --bundled \\
        --json-server /tmp/js/node_modules/.bin/json-server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fast_server
import orjson

_WRK_SCRIPT = """
local pages, limit, n = 100, 1000, 0
function init(args)
  pages = tonumber(args[1]); limit = tonumber(args[2])
end
function request()
  n = n % pages + 1
  return wrk.format("GET", "/users?_page=" .. n .. "&_limit=" .. limit)
end
"""


def probe(
    url: str, pages: int, connections: int = 1, seconds: float = 5.0, limit: int = 1000
) -> dict[str, Any]:
    """Ask ``url`` for pages 1..``pages`` in turn, over ``connections`` connections.

    Returns:
        ``{"req_s", "mib_s", "tool", "connections"}``.
    """
    if shutil.which("wrk"):
        return _wrk(url, pages, connections, seconds, limit)
    return asyncio.run(_client(url, pages, connections, seconds, limit))


def _wrk(url: str, pages: int, connections: int, seconds: float, limit: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_WRK_SCRIPT)
        script.flush()
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s"]
        cmd += [script.name, url, "--", str(pages), str(limit)]
        text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", text)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", text)
    if errors or rate is None or transfer is None:
        raise RuntimeError(f"wrk: {errors.group(0) if errors else 'no rate'}\n{text}")
    scale = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1, "GB": 1024}.get(transfer.group(2), 0.0)
    return {
        "req_s": float(rate.group(1)),
        "mib_s": float(transfer.group(1)) * scale,
        "tool": "wrk -t1",
        "connections": connections,
    }


async def _client(
    url: str, pages: int, connections: int, seconds: float, limit: int
) -> dict[str, Any]:
    split = urlsplit(url)
    deadline = time.perf_counter() + seconds
    done = {"requests": 0, "bytes": 0}

    async def connection(page: int) -> None:
        reader, writer = await asyncio.open_connection(split.hostname, split.port)
        try:
            while time.perf_counter() < deadline:
                page = page % pages + 1
                request = f"GET /users?_page={page}&_limit={limit} HTTP/1.1\r\nHost: x\r\n\r\n"
                writer.write(request.encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if not head.startswith(b"HTTP/1.1 200") or length is None:
                    raise RuntimeError(f"unexpected answer: {head[:80]!r}")
                await reader.readexactly(int(length.group(1)))
                done["requests"] += 1
                done["bytes"] += len(head) + int(length.group(1))
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(i * pages // connections) for i in range(connections)))
    elapsed = time.perf_counter() - started
    return {
        "req_s": done["requests"] / elapsed,
        "mib_s": done["bytes"] / elapsed / 2**20,
        "tool": "asyncio client",
        "connections": connections,
    }


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def json_server(binary: str, users: int, workdir: Path) -> Iterator[str]:
    """A real json-server (``BIN --port P db.json``) over the same users, from fakedata."""
    fakedata, _ = fast_server._data_modules()
    db = workdir / "db.json"
    db.write_bytes(orjson.dumps({"users": fakedata.make_records("users", 1, users + 1, 0)}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, "--quiet", "--port", str(port), str(db)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/users?_page=1&_limit=1", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"json-server did not start ({binary})") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait()


@contextlib.contextmanager
def _server(name: str, users: int, workdir: Path, binary: str | None) -> Iterator[str]:
    if name == "fast_server":
        with fast_server.running(users) as (url, _):
            yield url
    elif name == "bundled server":
        with fast_server.bundled_server(users=users) as url:
            yield url
    else:
        assert binary is not None
        with json_server(binary, users, workdir) as url:
            yield url


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (5)")
    parser.add_argument("--connections", default="1,4,16", help="comma list (1,4,16)")
    parser.add_argument("--bundled", action="store_true", help="also the bundled server")
    parser.add_argument("--json-server", metavar="BIN", help="also this json-server executable")
    args = parser.parse_args(argv)
    names = ["fast_server"]
    names += ["bundled server"] if args.bundled else []
    names += ["json-server"] if args.json_server else []
    print(f"{args.users:,} users, pages of 1,000 (_page=1..{max(1, args.users // 1000)})")
    print("| server | connections | requests/s | MiB/s | client |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            with _server(name, args.users, Path(work), args.json_server) as url:
                for connections in (int(c) for c in args.connections.split(",")):
                    got = probe(url, max(1, args.users // 1000), connections, args.seconds)
                    print(
                        f"| {name} | {connections} | {got['req_s']:,.0f} | {got['mib_s']:,.0f} "
                        f"| {got['tool']} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
