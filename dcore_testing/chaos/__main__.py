"""``python -m dcore_testing.chaos``: run the embedded server standalone.

Prints the bound API URL as the first line on stdout (so ``--port 0`` is usable
from scripts), then serves until SIGINT/SIGTERM. Flags mirror toxiproxy-server's
``-host``, ``-port``, ``-seed`` and ``-config``.

Extra flags (differences from the real server, DIFFERENCES.md): ``--allow-remote``
lets proxies listen on and dial non-loopback addresses; ``--max-body-bytes``,
``--max-connections``, ``--read-timeout``, ``--idle-timeout`` and
``--write-timeout`` set the API's HTTP limits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from .http import HttpLimits
from .registry import ApiError
from .server import serve

_DEFAULTS = HttpLimits()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dcore_testing.chaos",
        description="Embedded Toxiproxy-compatible server (HTTP API on --host:--port).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="API bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8474, help="API port; 0 picks a free one")
    parser.add_argument("--seed", type=int, default=None, help="make toxic randomness reproducible")
    parser.add_argument("--config", default=None, help="JSON file of proxies to populate at start")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="let proxies listen on and dial non-loopback addresses (default: loopback only)",
    )
    limits = parser.add_argument_group("HTTP API limits")
    limits.add_argument(
        "--max-body-bytes",
        type=int,
        default=_DEFAULTS.max_body_bytes,
        help="larger request bodies get 413 (default %(default)s)",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=_DEFAULTS.max_connections,
        help="further API connections get 503 (default %(default)s)",
    )
    for name, what in (
        ("read", "to read a request, from its first byte"),
        ("idle", "a keep-alive connection may wait for its next request"),
        ("write", "to write a response"),
    ):
        limits.add_argument(
            f"--{name}-timeout",
            type=float,
            default=getattr(_DEFAULTS, f"{name}_timeout"),
            help=f"seconds {what} (default %(default)s)",
        )
    return parser


def _limits(parser: argparse.ArgumentParser, args: argparse.Namespace) -> HttpLimits:
    try:
        return HttpLimits(
            max_body_bytes=args.max_body_bytes,
            max_connections=args.max_connections,
            read_timeout=args.read_timeout,
            idle_timeout=args.idle_timeout,
            write_timeout=args.write_timeout,
        )
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))


async def _main(args: argparse.Namespace, limits: HttpLimits) -> int:
    try:
        running = await serve(
            args.host,
            args.port,
            seed=args.seed,
            config=args.config,
            allow_remote=args.allow_remote,
            limits=limits,
        )
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
    parser = _parser()
    args = parser.parse_args(argv)
    return asyncio.run(_main(args, _limits(parser, args)))


if __name__ == "__main__":
    sys.exit(main())
