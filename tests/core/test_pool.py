# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""PluginPool: bounded, thread-safe pools of plugins that hold resources, entered once
and exited when discarded or closed."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dcore import (
    Environment,
    Execute,
    NextFn,
    PipelineContext,
    PluginFactory,
    PluginOptionsError,
    PluginPool,
    PluginRegistry,
)
from dcore._core.pool import InstancePool
from dcore.errors import PoolExhausted


class Connection(Execute[Any]):
    """A plugin holding a resource: opened in __enter__, closed in __exit__."""

    log: list[str] = []

    def __init__(self, dsn: str = "db://x") -> None:
        self.dsn = dsn
        self.open = False

    def __enter__(self) -> Connection:
        self.open = True
        type(self).log.append("enter")
        return self

    def __exit__(self, *exc: object) -> None:
        self.open = False
        type(self).log.append("exit")

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        assert self.open, "a pooled plugin runs only while entered"
        return (id(self), next_fn(context))


@pytest.fixture
def pool(dcore_registry: PluginRegistry, dcore_env: Environment) -> PluginPool:
    Connection.log = []
    dcore_registry.register("conn", Connection)
    return PluginPool(PluginFactory(environment=dcore_env), max_size=2)


def test_acquire_enters_and_close_exits(pool: PluginPool) -> None:
    conn = pool.acquire(Execute, "conn")
    assert conn.open
    pool.release(conn)
    assert conn.open  # idle instances stay open for reuse
    pool.close()
    assert not conn.open
    assert Connection.log == ["enter", "exit"]


def test_released_instance_is_reused(pool: PluginPool) -> None:
    with pool.lease(Execute, "conn") as first:
        pass
    with pool.lease(Execute, "conn") as second:
        pass
    assert first is second
    assert Connection.log == ["enter"]


def test_a_plugin_replaced_in_the_registry_is_served_by_a_new_pool(
    pool: PluginPool, dcore_registry: PluginRegistry
) -> None:
    with pool.lease(Execute, "conn") as old:
        pass

    class NewConnection(Connection):
        pass

    dcore_registry.register("conn", NewConnection, replace=True)
    with pool.lease(Execute, "conn") as new:
        assert type(new) is NewConnection
    assert type(old) is Connection


def test_pools_are_keyed_by_options(pool: PluginPool) -> None:
    with (
        pool.lease(Execute, "conn", dsn="db://a") as a,
        pool.lease(Execute, "conn", dsn="db://b") as b,
    ):
        assert (a.dsn, b.dsn) == ("db://a", "db://b")


def test_failure_inside_lease_discards_and_exits_the_instance(pool: PluginPool) -> None:
    with pytest.raises(RuntimeError), pool.lease(Execute, "conn") as broken:
        raise RuntimeError("connection reset")
    assert not broken.open
    with pool.lease(Execute, "conn") as fresh:
        assert fresh is not broken
    assert Connection.log == ["enter", "exit", "enter"]


def test_pool_is_bounded_and_exhaustion_names_plugin_and_size(pool: PluginPool) -> None:
    a = pool.acquire(Execute, "conn")
    b = pool.acquire(Execute, "conn")
    with pytest.raises(PoolExhausted) as info:
        pool.acquire(Execute, "conn", timeout=0)
    assert "all 2 pooled Execute:conn instances stayed in use" in str(info.value)
    assert "raise max_size" in str(info.value)
    assert isinstance(info.value, TimeoutError)
    pool.release(a)
    assert pool.acquire(Execute, "conn", timeout=0) is a
    pool.release(b)


def test_blocked_acquire_gets_the_released_instance(pool: PluginPool) -> None:
    held = [pool.acquire(Execute, "conn"), pool.acquire(Execute, "conn")]
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(Execute, "conn", timeout=30)))
    waiter.start()
    pool.release(held[0])
    waiter.join(30)

    assert got == [held[0]]


def test_concurrent_leases_never_exceed_max_size(pool: PluginPool) -> None:
    lock = threading.Lock()
    in_use: set[int] = set()
    peak = 0
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal peak
        try:
            for _ in range(20):
                with pool.lease(Execute, "conn", timeout=30) as conn:
                    with lock:
                        assert id(conn) not in in_use, "one instance leased twice"
                        in_use.add(id(conn))
                        peak = max(peak, len(in_use))
                    with lock:
                        in_use.discard(id(conn))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    assert 1 <= peak <= 2
    assert Connection.log.count("enter") <= 2


def test_release_of_foreign_instance_is_rejected(pool: PluginPool) -> None:
    with pytest.raises(ValueError, match="was not acquired from this pool"):
        pool.release(Connection())


def test_bad_options_fail_before_blocking(pool: PluginPool) -> None:
    with pytest.raises(PluginOptionsError, match=r"'conn'.*unknown option 'port'"):
        pool.acquire(Execute, "conn", port=5432)


def test_closed_pool_refuses_acquire() -> None:
    instances = InstancePool(object, max_size=1, label="thing")
    instances.close()
    with pytest.raises(RuntimeError, match="pool of thing is closed"):
        instances.acquire()


def test_instance_pool_rejects_non_positive_size() -> None:
    with pytest.raises(ValueError, match="max_size must be at least 1, got 0"):
        InstancePool(object, max_size=0)


def test_pipeline_leases_pooled_plugins_per_call_and_env_close_exits_them(
    pool: PluginPool, dcore_env: Environment
) -> None:
    pipeline = PipelineContext().create_pipeline(lambda ctx: "done")
    pipeline.chain(Execute("conn"))

    first = pipeline.run()
    second = pipeline.run(PipelineContext())

    assert first[1] == second[1] == "done"
    assert first[0] == second[0]  # the same pooled connection served both runs
    assert Connection.log == ["enter"]
    dcore_env.close()
    assert Connection.log == ["enter", "exit"]
