# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""Every error in dcore.errors: where it sits in the tree, and a real trigger whose
message names the culprit (the object, the bad value) and, where there is one, the fix."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dcore.errors as errors_module
from dcore import (
    DcoreSettings,
    Dispatch,
    Environment,
    Execute,
    Fence,
    JobState,
    NextFn,
    PipelineContext,
    PluginFactory,
    PluginPool,
    PluginRegistry,
    use_environment,
)
from dcore.errors import (
    AsyncStageError,
    BackendNotFoundError,
    ConfigurationError,
    ContextSerializationError,
    DcoreError,
    DispatchError,
    DispatcherShutdownTimeout,
    DuplicatePluginError,
    IllegalTransitionError,
    InvalidKeyError,
    JobNotFoundError,
    JobStateError,
    LeaseLostError,
    LockLostError,
    LockNotAcquired,
    MessageError,
    ObjectNotFoundError,
    PipelineDefinitionError,
    PluginError,
    PluginNotFoundError,
    PluginOptionsError,
    PoolExhausted,
    ServiceUnavailableError,
    StaleFenceError,
    StorageError,
)
from dcore_testing import ManualClock


class Opaque(PipelineContext):
    handle: object = None


class Sized(Execute[Any]):
    def __init__(self, size: int) -> None:
        self.size = size

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        return next_fn(context)


class Awaiting(Execute[Any]):
    async def execute(self, next_fn: Any, context: Any) -> Any:
        return await next_fn(context)


class Held(Sized):
    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture
def env(tmp_path: Path, dcore_registry: PluginRegistry) -> Iterator[Environment]:
    dcore_registry.register("sized", Sized)
    dcore_registry.register("held", Held)
    dcore_registry.register("awaiting", Awaiting)
    environment = Environment(
        DcoreSettings(storage_root=tmp_path, redis_url="redis://127.0.0.1:1/0"),
        clock=ManualClock(),
        registry=dcore_registry,
    )
    with use_environment(environment):
        yield environment
    environment.close()


def second_dispatch(env: Environment) -> None:
    PipelineContext().create_pipeline(print).chain(Dispatch("inline")).chain(Dispatch("thread"))


def async_stage_in_run(env: Environment) -> None:
    pipeline = PipelineContext().create_pipeline(print)
    pipeline.chain(Execute("sized", size=1)).chain(Execute("awaiting")).run()


def duplicate(env: Environment) -> None:
    env.registry.register("sized", Held)


def pool_exhausted(env: Environment) -> None:
    pool = PluginPool(PluginFactory(environment=env), max_size=1)
    pool.acquire(Execute, "held", size=1)
    pool.acquire(Execute, "held", size=1, timeout=0)


def lock_lost(env: Environment) -> None:
    lock = env.locks.lock("reports", ttl=5)
    lock.acquire()
    env.clock.sleep(10)
    lock.release()


def lease_lost(env: Environment) -> None:
    env.jobs.create("report-job")
    env.jobs.claim("report-job", attempt=1, owner="first", lease=5)
    env.clock.sleep(10)  # the first delivery's worker stopped renewing: taken over
    env.jobs.claim("report-job", attempt=1, owner="second", lease=5)
    env.jobs.end_attempt("report-job", JobState.SUCCEEDED, owner="first")


def stale_fence(env: Environment) -> None:
    env.storage.put_fenced("reports/q3.pdf", b"newer holder", Fence("report:q3", 2))
    env.storage.put_fenced("reports/q3.pdf", b"late holder", Fence("report:q3", 1))


def lock_busy(env: Environment) -> None:
    env.locks.lock("reports", ttl=5).acquire()
    with env.locks.lock("reports", ttl=5, timeout=0):
        pass


def redis_down(env: Environment) -> None:
    pytest.importorskip("redis")
    from dcore.services import JobStorageInterface

    store: Any = env.registry.get(JobStorageInterface, "redis")
    store.from_environment(env).get("j")


def dispatch_error(env: Environment) -> None:
    PipelineContext().create_pipeline(print).chain(Dispatch("fastapi")).run()


def shutdown_timeout(env: Environment) -> None:
    import threading

    from dcore.dispatchers.thread import worker_pool

    gate = threading.Event()
    worker_pool(env).submit(gate.wait, 30)
    try:
        worker_pool(env).drain(0)
    finally:
        gate.set()


TRIGGERS: list[tuple[type[DcoreError], Callable[[Environment], Any], list[str]]] = [
    (PipelineDefinitionError, second_dispatch, ["'thread' (stage 1)", "'inline' (stage 0)"]),
    (
        AsyncStageError,
        async_stage_in_run,
        ["stage 1 ('awaiting')", "async execute()", "await pipeline.arun()"],
    ),
    (
        PluginNotFoundError,
        lambda env: env.registry.get(Execute, "sizd"),
        ["'sizd'", "Did you mean 'sized'?"],
    ),
    (
        PluginOptionsError,
        lambda env: PluginFactory(environment=env).create(Execute, "sized", size="big"),
        ["'sized'", "option 'size'='big'", "It accepts: size"],
    ),
    (DuplicatePluginError, duplicate, ["'sized'", "Sized", "replace=True"]),
    (
        ContextSerializationError,
        lambda env: Opaque(handle=object()).to_envelope(),
        ["Opaque.handle", "Runtime[...]"],
    ),
    (
        MessageError,
        lambda env: PipelineContext.from_envelope(
            {"type": "x.y:Ghost", "version": "1", "data": {}}
        ),
        ["'x.y:Ghost'", "DCORE_IMPORTS"],
    ),
    (
        InvalidKeyError,
        lambda env: env.storage.put("uploads/../../etc/passwd", b""),
        ["'uploads/../../etc/passwd'", ".."],
    ),
    (ObjectNotFoundError, lambda env: env.storage.get("missing/key"), ["'missing/key'"]),
    (
        StaleFenceError,
        stale_fence,
        [
            "'reports/q3.pdf'",
            "fence 1 of lock 'report:q3'",
            "fence 2 of that lock already wrote it",
        ],
    ),
    (
        IllegalTransitionError,
        lambda env: (env.jobs.create("j9"), env.jobs.transition("j9", "SUCCEEDED")),
        ["job j9", "PENDING", "SUCCEEDED", "it can go to"],
    ),
    (JobNotFoundError, lambda env: env.jobs.get("ghost-job"), ["ghost-job"]),
    (LockNotAcquired, lock_busy, ["'reports'"]),
    (LockLostError, lock_lost, ["'reports'", "ttl"]),
    (
        LeaseLostError,
        lease_lost,
        ["report-job", "delivery first lost its lease", "held by delivery second"],
    ),
    (PoolExhausted, pool_exhausted, ["Execute:held", "max_size"]),
    (ServiceUnavailableError, redis_down, ["redis://127.0.0.1:1/0", "DCORE_REDIS_URL"]),
    (DispatchError, dispatch_error, ["PipelineContext has none", "BackgroundTasks"]),
    (DispatcherShutdownTimeout, shutdown_timeout, ["1 background job(s)"]),
    (
        ConfigurationError,
        lambda env: DcoreSettings(thread_workers="abc"),
        ["DcoreSettings(thread_workers='abc')", "expected an integer >= 1"],
    ),
    (
        BackendNotFoundError,
        lambda env: Environment(DcoreSettings(storage="minoi"), registry=env.registry).storage,
        ["DcoreSettings(storage='minoi')", "'minoi'", "Did you mean 'minio'?"],
    ),
]


@pytest.mark.parametrize(
    ("error", "trigger", "culprits"), TRIGGERS, ids=[t[0].__name__ for t in TRIGGERS]
)
def test_error_message_names_the_culprit(
    env: Environment,
    error: type[DcoreError],
    trigger: Callable[[Environment], Any],
    culprits: list[str],
) -> None:
    with pytest.raises(error) as info:
        trigger(env)
    for culprit in culprits:
        assert culprit in str(info.value)


def concrete_errors() -> list[type[BaseException]]:
    return [
        obj
        for _, obj in inspect.getmembers(errors_module, inspect.isclass)
        if issubclass(obj, DcoreError) and obj.__module__ == errors_module.__name__
    ]


def test_every_concrete_error_has_a_trigger() -> None:
    abstract = {DcoreError, PluginError, StorageError, JobStateError}
    covered = {t[0] for t in TRIGGERS}
    assert set(concrete_errors()) - abstract - covered == set()


def test_every_error_is_drawn_in_the_module_docstring_and_exported() -> None:
    doc = errors_module.__doc__ or ""
    for cls in concrete_errors():
        assert cls.__name__ in doc
        assert cls.__name__ in errors_module.__all__


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (PipelineDefinitionError, ValueError),
        (AsyncStageError, TypeError),
        (PluginNotFoundError, LookupError),
        (PluginOptionsError, TypeError),
        (DuplicatePluginError, ValueError),
        (ContextSerializationError, TypeError),
        (MessageError, ValueError),
        (InvalidKeyError, ValueError),
        (ObjectNotFoundError, KeyError),
        (IllegalTransitionError, ValueError),
        (JobNotFoundError, KeyError),
        (LockNotAcquired, TimeoutError),
        (PoolExhausted, TimeoutError),
        (ServiceUnavailableError, ConnectionError),
        (DispatcherShutdownTimeout, TimeoutError),
        (ConfigurationError, ValueError),
        (BackendNotFoundError, LookupError),
    ],
)
def test_errors_also_subclass_the_matching_builtin(
    error: type[DcoreError], builtin: type[BaseException]
) -> None:
    assert issubclass(error, DcoreError)
    assert issubclass(error, builtin)


def test_key_errors_print_their_message_not_its_repr() -> None:
    assert str(ObjectNotFoundError("no object under 'k'")) == "no object under 'k'"
    assert str(JobNotFoundError("no job 'j'")) == "no job 'j'"
    assert str(PluginNotFoundError("Execute", "x", [])) == (
        "no Execute plugin named 'x'; registered: (none)."
    )
