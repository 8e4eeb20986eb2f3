"""A fenced writer in its own process, for the cross-process fencing contract.

Usage: ``python fenced_writer.py SPEC`` where SPEC is JSON: ``storage`` (``{"kind":
"local", "root": ...}`` or ``{"kind": "s3", "endpoint_url": ..., "bucket": ..., ...}``),
``key``, ``lock``, ``number`` and ``writes``. It builds the storage, prints ``ready``,
waits for a line on stdin (so two writers start together, without sleeping), then
writes ``<lock>:<number>:<i>`` up to ``writes`` times, stopping at the first
``StaleFenceError`` (a refused holder stays refused). It prints one JSON line: every
attempt as ``[start_ns, end_ns, "ok" | "stale"]`` on the system-wide monotonic clock,
which both writers and the test share on one host.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from dcore.errors import StaleFenceError
from dcore.services.fencing import Fence
from dcore.services.storage import StorageInterface


def build(spec: dict[str, Any]) -> StorageInterface:
    options = dict(spec)
    kind = options.pop("kind")
    if kind == "local":
        from dcore.backends.local import LocalFileStorage

        return LocalFileStorage(**options)
    from dcore.backends.s3 import S3Storage

    return S3Storage(**options)


def main() -> None:
    spec = json.loads(sys.argv[1])
    storage = build(spec["storage"])
    fence = Fence(spec["lock"], spec["number"])
    attempts: list[tuple[int, int, str]] = []
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(spec["writes"]):
        start = time.monotonic_ns()
        try:
            storage.put_fenced(spec["key"], f"{fence.lock}:{fence.number}:{i}".encode(), fence)
        except StaleFenceError:
            attempts.append((start, time.monotonic_ns(), "stale"))
            break
        attempts.append((start, time.monotonic_ns(), "ok"))
    print(json.dumps(attempts), flush=True)


if __name__ == "__main__":
    main()
