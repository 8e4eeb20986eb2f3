"""distributed-core: pluggable, distributed data-processing pipelines.

::

    ctx = FileJobContext(file_path="uploads/a.txt", file_content=b"...", job_type="demo")
    pipeline = ctx.create_pipeline(core_fn=finalize)
    pipeline.chain(Dispatch, plugin="schedule_job").chain(Execute, plugin="storage_write")
    handle = pipeline.run()
"""

from dcore._core.clock import Clock, SystemClock
from dcore._core.context import SHARD_COUNT, ErrorRecord, PipelineContext, Runtime, migration
from dcore._core.environment import (
    Environment,
    current_environment,
    reset_default_environment,
    use_environment,
)
from dcore._core.factory import PluginFactory
from dcore._core.handle import JobHandle
from dcore._core.hashing import stable_hash
from dcore._core.lifecycle import CurrentJob, current_job, give_up
from dcore._core.message import JobMessage, StageSpec, set_trace_propagator
from dcore._core.pipeline import Continuation, Pipeline
from dcore._core.pool import PluginPool
from dcore._core.retry import RetryPolicy
from dcore._core.runner import origin_of
from dcore._core.saga import DEFAULT_COMPENSATION_RETRY, CompensationFailed
from dcore._core.settings import DcoreSettings
from dcore._plugins.interfaces import AsyncNextFn, Dispatch, Execute, NextFn, StageRef
from dcore._plugins.registry import (
    PluginRegistry,
    core_function,
    current_registry,
    default_registry,
    define_interface,
    register_plugin,
    use_registry,
)
from dcore._worker import run_message
from dcore.errors import (
    AsyncStageError,
    ContextSerializationError,
    DcoreError,
    MessageError,
    PipelineDefinitionError,
    PluginNotFoundError,
    PluginOptionsError,
)
from dcore.services import JobState
from dcore.services.fencing import Fence, current_fence

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_COMPENSATION_RETRY",
    "SHARD_COUNT",
    "AsyncNextFn",
    "AsyncStageError",
    "Clock",
    "CompensationFailed",
    "ContextSerializationError",
    "Continuation",
    "CurrentJob",
    "DcoreError",
    "DcoreSettings",
    "Dispatch",
    "Environment",
    "ErrorRecord",
    "Execute",
    "Fence",
    "JobHandle",
    "JobMessage",
    "JobState",
    "MessageError",
    "NextFn",
    "Pipeline",
    "PipelineContext",
    "PipelineDefinitionError",
    "PluginFactory",
    "PluginNotFoundError",
    "PluginOptionsError",
    "PluginPool",
    "PluginRegistry",
    "RetryPolicy",
    "Runtime",
    "StageRef",
    "StageSpec",
    "SystemClock",
    "core_function",
    "current_environment",
    "current_fence",
    "current_job",
    "current_registry",
    "default_registry",
    "define_interface",
    "give_up",
    "migration",
    "origin_of",
    "register_plugin",
    "reset_default_environment",
    "run_message",
    "set_trace_propagator",
    "stable_hash",
    "use_environment",
    "use_registry",
]

from dcore import _builtins

_builtins.load()
