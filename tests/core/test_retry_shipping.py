"""A stage's retry policy crosses a remote hand-off whole, ``retry_on`` included."""

from __future__ import annotations

from typing import Any

import pytest

from dcore import (
    Environment,
    Execute,
    MessageError,
    NextFn,
    Pipeline,
    PipelineContext,
    RetryPolicy,
    StageSpec,
)


class ShipCtx(PipelineContext):
    pass


class Flaky(Execute[Any]):
    """Fails with the named error type on the first ``failures`` calls."""

    calls = 0

    def __init__(self, error: str, failures: int = 1) -> None:
        self.error = {"timeout": TimeoutError, "value": ValueError}[error]
        self.failures = failures

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        type(self).calls += 1
        if type(self).calls <= self.failures:
            raise self.error("flaky")
        return next_fn(context)


def done(ctx: ShipCtx) -> str:
    return "done"


@pytest.fixture
def flaky(dcore_registry: Any) -> type[Flaky]:
    Flaky.calls = 0
    dcore_registry.register("flaky", Flaky, replace=True)
    return Flaky


def _shipped(policy: RetryPolicy, error: str, env: Environment) -> Pipeline[Any]:
    spec = [
        StageSpec(
            interface="Execute",
            plugin="flaky",
            options={"error": error},
            retry=policy.model_dump(mode="json"),
        )
    ]
    # what a worker receives: the spec through JSON
    spec = [StageSpec.model_validate_json(s.model_dump_json()) for s in spec]
    return Pipeline.from_spec(spec, done, environment=env)


def test_retry_on_names_survive_json(dcore_env: Environment, flaky: type[Flaky]) -> None:
    policy = RetryPolicy(attempts=3, initial=0, retry_on=(TimeoutError, KeyError))

    pipeline = _shipped(policy, "timeout", dcore_env)

    (stage,) = pipeline.stages
    assert stage.retry == policy
    assert pipeline.run(ShipCtx()) == "done"
    assert flaky.calls == 2  # the TimeoutError was retried


def test_an_error_outside_retry_on_is_not_retried_after_shipping(
    dcore_env: Environment, flaky: type[Flaky]
) -> None:
    pipeline = _shipped(
        RetryPolicy(attempts=3, initial=0, retry_on=TimeoutError), "value", dcore_env
    )

    with pytest.raises(ValueError, match="flaky"):
        pipeline.run(ShipCtx())
    assert flaky.calls == 1


def test_an_unknown_retry_on_name_is_a_message_error_naming_it(
    dcore_env: Environment, flaky: type[Flaky]
) -> None:
    spec = [
        StageSpec(
            interface="Execute",
            plugin="flaky",
            options={"error": "value"},
            retry={"attempts": 2, "retry_on": ["nowhere.mod:Boom"]},
        )
    ]

    with pytest.raises(MessageError, match=r"retry_on names 'nowhere.mod:Boom'"):
        Pipeline.from_spec(spec, done, environment=dcore_env)
