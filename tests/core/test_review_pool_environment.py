"""A pooled plugin (one with ``__enter__``/``__exit__``) is built in its pipeline's
Environment: its injected services and its registry are that environment's, even when
another environment is the current one (a worker's ``run_message(environment=...)``)."""

from __future__ import annotations

from typing import Any

from dcore import Environment, Execute, NextFn, Pipeline, PipelineContext, PluginRegistry
from dcore.backends.memory_storage import MemoryStorage
from dcore.services.storage import StorageInterface


class Ctx(PipelineContext):
    name: str = "x"


class PooledWriter(Execute[Ctx]):
    """Holds a 'connection' (entered once per pooled instance) and writes to storage."""

    def __init__(self, storage: StorageInterface) -> None:
        self.storage = storage

    def __enter__(self) -> PooledWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
        self.storage.put(f"out/{context.name}", b"written")
        return next_fn(context)


def core(ctx: Ctx) -> str:
    return "done"


def test_pooled_plugin_gets_the_services_of_its_pipelines_environment(
    dcore_env: Environment, dcore_registry: PluginRegistry
) -> None:
    own_registry = dcore_registry.copy()
    own_registry.register("review_pooled_writer", PooledWriter)
    mine = MemoryStorage()
    with Environment(dcore_env.settings, registry=own_registry, storage=mine) as other:
        pipeline: Pipeline[Ctx] = Pipeline(Ctx(name="a"), core, environment=other)
        pipeline.chain(Execute, plugin="review_pooled_writer")

        assert pipeline.run() == "done"

    assert mine.get("out/a") == b"written"
    assert not dcore_env.storage.exists("out/a")  # not the current environment's storage
