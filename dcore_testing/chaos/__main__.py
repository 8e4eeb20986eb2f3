"""``python -m dcore_testing.chaos``: run the embedded server standalone.

Prints the bound API URL as the first line on stdout (so ``--port 0`` is usable
from scripts), then serves until SIGINT/SIGTERM. Flags mirror toxiproxy-server's
``-host``, ``-port``, ``-seed`` and ``-config``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from .registry import ApiError
from .server import serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dcore_testing.chaos",
        description="Embedded Toxiproxy-compatible server (HTTP API on --host:--port).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="API bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8474, help="API port; 0 picks a free one")
    parser.add_argument("--seed", type=int, default=None, help="make toxic randomness reproducible")
    parser.add_argument("--config", default=None, help="JSON file of proxies to populate at start")
    return parser


async def _main(args: argparse.Namespace) -> int:
    try:
        running = await serve(args.host, args.port, seed=args.seed, config=args.config)
    except (OSError, ApiError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(running.url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_main(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
