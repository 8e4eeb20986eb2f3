"""``dcore doctor``: one line per finding, exit 1 on any error, ``--json`` for machines."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dcore.cli import main


def lines(out: str) -> list[list[str]]:
    """Each finding line as [level, check, message]; the summary line left out."""
    return [line.split(None, 2) for line in out.splitlines()[:-1]]


def test_an_error_exits_1_and_every_line_says_level_check_and_message(
    clean_variables: pytest.MonkeyPatch, capsys: Any
) -> None:
    clean_variables.setenv("DCORE_DISPATCHER", "celery")
    clean_variables.setenv("DCORE_CELERY_BROKER_URL", "memory://")

    assert main(["doctor"]) == 1

    out = capsys.readouterr().out
    found = lines(out)
    assert {level for level, _, _ in found} <= {"ok", "warning", "error"}
    assert ["error", "dispatch"] in [line[:2] for line in found]
    assert ["error", "broker"] in [line[:2] for line in found]
    assert out.splitlines()[-1] == "3 error(s), 1 warning(s)"
    assert out.isascii()


def test_warnings_alone_exit_0(clean_variables: pytest.MonkeyPatch, capsys: Any) -> None:
    clean_variables.setenv("DCORE_STORGE", "minio")

    assert main(["doctor"]) == 0

    out = capsys.readouterr().out
    assert ["warning", "settings"] in [line[:2] for line in lines(out)]
    assert "did you mean DCORE_STORAGE?" in out
    assert out.splitlines()[-1] == "0 error(s), 1 warning(s)"


def test_celery_checks_are_skipped_unless_asked(
    clean_variables: pytest.MonkeyPatch, capsys: Any
) -> None:
    clean_variables.setenv("DCORE_RECOVERY_INTERVAL", "0")
    clean_variables.setenv("DCORE_CELERY_BROKER_URL", "memory://")  # reach no server
    assert main(["doctor"]) == 0
    assert "recovery" not in capsys.readouterr().out

    assert main(["doctor", "--celery"]) == 1  # the memory job store is now an error
    checks = [line[:2] for line in lines(capsys.readouterr().out)]
    assert ["warning", "recovery"] in checks
    assert ["error", "dispatch"] in checks


def test_json_output_holds_every_finding_and_the_counts(
    clean_variables: pytest.MonkeyPatch, capsys: Any
) -> None:
    clean_variables.setenv("DCORE_DISPATCHER", "celery")
    clean_variables.setenv("DCORE_CELERY_BROKER_URL", "memory://")

    assert main(["doctor", "--json"]) == 1

    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 3
    assert report["warnings"] == 1
    assert {"check": "broker", "level": "error"}.items() <= report["findings"][-1].items()
    assert all(set(f) == {"check", "level", "message"} for f in report["findings"])


def test_a_redis_without_persistence_fails_the_doctor(
    clean_variables: pytest.MonkeyPatch, private_redis: tuple[str, Any], capsys: Any
) -> None:
    for name in ("DCORE_JOB_STORE", "DCORE_EVENT_BUS", "DCORE_LOCKS"):
        clean_variables.setenv(name, "redis")
    clean_variables.setenv("DCORE_DISPATCHER", "celery")
    clean_variables.setenv("DCORE_REDIS_URL", private_redis[0])

    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    [persistence] = [line for line in lines(out) if line[1] == "persistence"]
    assert persistence[0] == "error"
    assert "Fix: appendonly yes" in persistence[2]

    private_redis[1].config_set("appendonly", "yes")
    assert main(["doctor"]) == 0
    assert out.splitlines()[-1] == "1 error(s), 0 warning(s)"
    assert capsys.readouterr().out.splitlines()[-1] == "0 error(s), 0 warning(s)"


def test_settings_that_do_not_load_are_reported_and_exit_1(
    clean_variables: pytest.MonkeyPatch, capsys: Any
) -> None:
    clean_variables.setenv("DCORE_THREAD_WORKERS", "abc")

    assert main(["doctor"]) == 1

    assert "error    settings  DCORE_THREAD_WORKERS='abc' is not valid" in capsys.readouterr().out


def test_a_timeout_of_zero_is_a_usage_error(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "--timeout", "0"])

    assert exit_info.value.code == 2
    assert "must be more than 0 seconds" in capsys.readouterr().err
