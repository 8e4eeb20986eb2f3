"""``import dcore`` needs none of the optional packages: each is imported only by the
module that uses it, when it is used (DESIGN §7)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

OPTIONAL = [
    "redis",
    "boto3",
    "botocore",
    "celery",
    "kombu",
    "fastapi",
    "starlette",
    "opentelemetry",
    "greenlet",
    "freezegun",
    "hypothesis",
    "fakeredis",
    "moto",
]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    import dcore
    from dcore import Dispatch, Execute, default_registry
    print(",".join(default_registry().names(Dispatch)))
    print(",".join(default_registry().names(Execute)))
    """
)


def test_import_dcore_with_every_optional_package_missing_registers_all_builtins() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(OPTIONAL)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    dispatchers, stages = done.stdout.split()
    assert dispatchers.split(",") == ["celery", "fastapi", "inline", "schedule_job", "thread"]
    assert set(stages.split(",")) >= {
        "storage_write",
        "logging",
        "lock",
        "retry",
        "error_handler",
        "dead_letter",
        "tracing",
    }
