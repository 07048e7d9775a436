"""The ``placeholder-api`` command: serve generated JSONPlaceholder data in the foreground."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from placeholder_api.server import FAULT_MODES, serve

__all__ = ["main", "parser"]


def _non_negative(kind: type[int | float]):
    def parse(text: str) -> int | float:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def parser() -> argparse.ArgumentParser:
    """The command line of ``placeholder-api``."""
    faults = "\n".join(f"  {text}" for text in FAULT_MODES.values())
    cli = argparse.ArgumentParser(
        prog="placeholder-api",
        description="Serve generated JSONPlaceholder-compatible data "
        "(paging, filters, nested routes, faults).",
        epilog=f"faults (--fault MODE[:ARG]):\n{faults}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    cli.add_argument("--port", type=int, default=3000, help="port; 0 picks a free one (3000)")
    cli.add_argument("--users", type=_non_negative(int), default=10, help="users to generate (10)")
    cli.add_argument("--seed", type=int, default=0, help="seed of the generated data (0)")
    cli.add_argument(
        "--latency",
        type=_non_negative(float),
        default=0.0,
        help="seconds added to every response (0)",
    )
    cli.add_argument("--fault", default="none", help="fault to inject: MODE[:ARG] (none)")
    cli.add_argument("--fault-resource", help="only inject the fault on this resource")
    cli.add_argument("--fault-page", type=int, help="only inject the fault on this page number")
    return cli


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and serve until SIGTERM or SIGINT."""
    args = parser().parse_args(argv)
    serve(
        host=args.host,
        port=args.port,
        users=args.users,
        seed=args.seed,
        latency=args.latency,
        fault=args.fault,
        fault_resource=args.fault_resource,
        fault_page=args.fault_page,
    )
