"""A lost update, found by the simulator: two uploads append to one index object.

``index_update`` reads ``index.json``, appends the new file and writes it back. Two
workers doing that at once can both read the old index, and the second write loses
the first file. With the ``lock`` stage around it the read-modify-write is exclusive.

Run it across seeds::

    dcore explore examples.sim.race:unlocked_uploads --seeds 200
"""

from __future__ import annotations

import json
from typing import Any

from dcore import (
    Dispatch,
    Execute,
    NextFn,
    Pipeline,
    PipelineContext,
    core_function,
    default_registry,
    register_plugin,
)
from dcore.errors import ObjectNotFoundError
from dcore.services.storage import StorageInterface
from dcore_testing.invariants import InvariantViolation
from dcore_testing.sim import SimEnvironment

INDEX_KEY = "index.json"


class UploadContext(PipelineContext):
    file_path: str
    file_content: bytes = b""


@register_plugin("index_update", registry=default_registry(), replace=True)
class IndexUpdate(Execute[UploadContext]):
    """Read-modify-write of the index object: not safe without a lock."""

    def __init__(self, storage: StorageInterface, key: str = INDEX_KEY) -> None:
        self.storage = storage
        self.key = key

    def execute(self, next_fn: NextFn[UploadContext], context: UploadContext) -> Any:
        try:
            index = json.loads(self.storage.get(self.key))
        except ObjectNotFoundError:
            index = []
        index.append(context.file_path)
        self.storage.put(self.key, json.dumps(index).encode())
        return next_fn(context)


@core_function
def finalize(context: UploadContext) -> str:
    return context.file_path


def upload_pipeline(context: UploadContext, *, locked: bool) -> Pipeline[UploadContext]:
    pipeline = context.create_pipeline(core_fn=finalize)
    pipeline.chain(Dispatch, plugin="schedule_job")
    pipeline.chain(Execute, plugin="storage_write", prefix="uploads/")
    if locked:
        pipeline.chain(Execute, plugin="lock", key="index", ttl=30, timeout=60)
    pipeline.chain(Execute, plugin="index_update")
    return pipeline


def upload(sim: SimEnvironment, count: int = 2, *, locked: bool = False) -> list[str]:
    """Dispatch ``count`` uploads, run the simulation, return the index's contents."""
    names = [f"file{i}.txt" for i in range(count)]
    for name in names:
        context = UploadContext(file_path=name, file_content=name.encode())
        upload_pipeline(context, locked=locked).run()
    sim.run_until_idle()
    return list(json.loads(sim.storage.get(INDEX_KEY)))


def check_index(sim: SimEnvironment, names: list[str], index: list[str]) -> None:
    missing = sorted(set(names) - set(index))
    if missing:
        raise InvariantViolation(
            f"lost update: {', '.join(missing)} missing from {INDEX_KEY} "
            f"(it holds {index}); two index_update stages overlapped",
            sim.trace.of("call", "lock.acquired", "lock.release"),
        )


def unlocked_uploads(sim: SimEnvironment) -> None:
    """Two uploads without a lock: some seeds lose one of them."""
    index = upload(sim, 2, locked=False)
    check_index(sim, ["file0.txt", "file1.txt"], index)


def locked_uploads(sim: SimEnvironment) -> None:
    """Two uploads under the ``lock`` stage: no seed loses any."""
    index = upload(sim, 2, locked=True)
    check_index(sim, ["file0.txt", "file1.txt"], index)
