"""A Celery worker logs the doctor's findings once as it starts: errors as errors,
warnings as warnings; a check that breaks never stops the worker."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

import dcore._doctor
from dcore import DcoreSettings, Environment
from dcore.celery import _recovery_step, check_at_start


class FakeLog:
    def __init__(self) -> None:
        self.records: list[tuple[int, str]] = []

    def log(self, level: int, msg: str, /, *args: object) -> None:
        self.records.append((level, msg % args))


def worker_env(tmp_path: Any, **settings: Any) -> Environment:
    return Environment(DcoreSettings(storage_root=tmp_path, **settings))


def test_findings_are_logged_at_their_level(
    tmp_path: Any, clean_variables: pytest.MonkeyPatch
) -> None:
    log = FakeLog()

    check_at_start(worker_env(tmp_path, recovery_interval=0,
                              celery_broker_url="memory://"), log)  # fmt: skip

    logged = {(level, text.split(":")[1].strip()) for level, text in log.records}
    assert (logging.ERROR, "dispatch") in logged  # the memory job store
    assert (logging.ERROR, "broker") in logged  # memory://
    assert (logging.WARNING, "recovery") in logged
    assert (logging.INFO, "visibility") in logged
    assert all(text.startswith("dcore doctor: ") for _, text in log.records)


def test_a_check_that_breaks_is_one_warning_and_the_worker_goes_on(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(dcore._doctor, "run_checks", broken)
    log = FakeLog()

    check_at_start(worker_env(tmp_path), log)

    warned = "dcore doctor could not run its checks: RuntimeError('probe exploded')"
    assert log.records == [(logging.WARNING, warned)]


def test_the_worker_bootstep_runs_the_checks_as_it_starts(
    tmp_path: Any, clean_variables: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    step_class = _recovery_step(
        worker_env(tmp_path, recovery_interval=0, celery_broker_url="memory://")
    )
    step = step_class(SimpleNamespace())

    with caplog.at_level(logging.INFO, logger="dcore.celery"):
        step.start(SimpleNamespace())
    step.stop(SimpleNamespace())

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        "dcore doctor: broker: DCORE_CELERY_BROKER_URL='memory://' lives in one process"
        in " ".join(errors)
    )
    assert any(m.startswith("dcore doctor: dispatch: a Celery worker with "
                            "DCORE_JOB_STORE='memory'") for m in errors)  # fmt: skip
    assert step.loop is None  # recovery off: no sweep thread
