# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""A lock holder in its own process, for the fencing chaos scenario (test_lock_fencing.py).

Run as ``python chaos_fencing.py SPEC`` (SPEC is JSON: the Redis URL through the proxy,
the key prefix, the S3 endpoint and bucket, the lock's TTL). It runs a real pipeline on
Redis locks and S3 storage::

    lock(key="report:{name}") -> hold -> storage_write(fenced=True)

``hold`` writes a first draft with the lock's fence (``current_fence()``), prints
``{"holding": [lock, number]}`` and then obeys the test, one JSON line per command:
``probe`` tries a Redis call and answers what it raised (is this process cut off?), ``go``
lets the pipeline go on to its fenced write. The process then prints how the pipeline
ended: ``{"done": ...}``, or the error's type, message, notes and, for a
``StaleFenceError``, the refused and the recorded fence.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from dcore import (
    DcoreSettings,
    Environment,
    Execute,
    NextFn,
    PipelineContext,
    current_fence,
    use_environment,
)
from dcore.errors import StaleFenceError
from dcore.services import LockInterface, StorageInterface

KEY = "reports/daily.csv"


class Report(PipelineContext):
    name: str
    key: str
    content: bytes


def reply(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


class Hold(Execute[Report]):
    """Under the lock: write a first draft, then wait for the test's ``go``."""

    def __init__(self, storage: StorageInterface, locks: LockInterface) -> None:
        self.storage = storage
        self.locks = locks

    def execute(self, next_fn: NextFn[Report], context: Report) -> Any:
        fence = current_fence()
        assert fence is not None
        self.storage.put_fenced(context.key, b"A: first draft", fence)
        reply({"holding": list(fence)})
        for line in sys.stdin:
            if line.strip() == "go":
                return next_fn(context)
            try:  # any Redis call: does it reach the server?
                self.locks.lock("probe", ttl=1).acquire(blocking=False)
                reply({"probe": None})
            except Exception as exc:
                reply({"probe": type(exc).__name__})
        raise EOFError("the test closed stdin without 'go'")


def stored_key(ctx: Report) -> str:
    return ctx.key


def main() -> None:
    spec = json.loads(sys.argv[1])
    settings = DcoreSettings(
        locks="redis",
        redis_url=spec["redis_url"],
        redis_socket_timeout=0.5,
        key_prefix=spec["prefix"],
        job_store="memory",
        event_bus="memory",
        storage="minio",
        s3_endpoint=spec["s3_endpoint"],
        s3_bucket=spec["bucket"],
        s3_region=spec["region"],
        s3_access_key=spec["access_key"],
        s3_secret_key=spec["secret_key"],
    )
    with Environment(settings) as env, use_environment(env):
        env.registry.register("hold", Hold, replace=True)
        ctx = Report(name="daily", key=KEY, content=b"A: late overwrite")
        pipeline = ctx.create_pipeline(stored_key)
        pipeline.chain(Execute("lock", key="report:{name}", ttl=spec["ttl"], timeout=5))
        pipeline.chain(Execute("hold"))
        pipeline.chain(
            Execute("storage_write", path_field="key", content_field="content", fenced=True)
        )
        try:
            reply({"done": pipeline.run()})
        except Exception as exc:
            outcome: dict[str, Any] = {
                "error": type(exc).__name__,
                "message": str(exc),
                "notes": getattr(exc, "__notes__", []),
            }
            if isinstance(exc, StaleFenceError):
                outcome.update(fence=list(exc.fence), latest=list(exc.latest))
            reply(outcome)


if __name__ == "__main__":
    main()
