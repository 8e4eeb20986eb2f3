"""``DCORE_*`` settings: which backend serves each service, and how to reach it.

Swapping local files for MinIO is one variable: ``DCORE_STORAGE=minio``.

Misconfiguration is loud: a value that does not fit raises :class:`ConfigurationError`
naming the variable (or the keyword, for settings given in code) and the accepted form,
never a bare pydantic traceback; a ``DCORE_*`` variable nothing reads (``DCORE_STORGE``)
warns with a :class:`ConfigurationWarning` and a "did you mean" suggestion, once per
process for each distinct set of unknown names (settings are built often: the simulator,
every Environment), so the warning is seen and not repeated.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import types
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types
from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dcore.errors import ConfigurationError, ConfigurationWarning

__all__ = ["OTHER_VARIABLES", "DcoreSettings"]

PREFIX = "DCORE_"

#: ``DCORE_*`` variables read outside :class:`DcoreSettings`; they are known, so they
#: never warn as unknown. Add a variable here when code starts reading one.
OTHER_VARIABLES = frozenset(
    {
        "DCORE_REQUIRE_SERVICES",  # dcore_testing: a missing Redis/S3 fails the test run
        "DCORE_CHAOS_UPSTREAM_HOST",  # dcore_testing.chaos: where proxies reach the services
        "DCORE_CHAOS_LISTEN_HOST",  # dcore_testing.chaos: where proxies listen
        "DCORE_CHAOS_PROXY_HOST",  # dcore_testing.chaos: where clients reach the proxies
    }
)


class DcoreSettings(BaseSettings):
    """Read from the environment with the ``DCORE_`` prefix (``DCORE_REDIS_URL`` …)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

    #: the fields given as keywords in code (named so in error messages)
    _keywords: frozenset[str] = PrivateAttr(default=frozenset())

    # which plugin serves each service (names in the registry)
    storage: str = "local"
    event_bus: str = "memory"
    job_store: str = "memory"
    locks: str = "memory"
    #: what the ``schedule_job`` Dispatch resolves to: auto = fastapi when the context
    #: carries BackgroundTasks, else thread; or inline, thread, fastapi, celery
    dispatcher: str = "auto"

    storage_root: Path = Path(".dcore/storage")
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: seconds a Redis command may wait for its reply before it fails (a partitioned
    #: server must not hang a job forever); ``socket_timeout=`` in the URL wins
    redis_socket_timeout: float | None = Field(default=10.0, gt=0)
    key_prefix: str = "dcore"

    s3_endpoint: str | None = None
    s3_bucket: str = "dcore"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_path_style: bool = True
    s3_create_bucket: bool = False

    thread_workers: int = Field(default=4, ge=1)
    job_ttl: float = Field(default=7 * 24 * 3600.0, gt=0)

    #: modules a worker imports at start-up (context classes, core functions, plugins);
    #: ``DCORE_IMPORTS=app.tasks,app.models`` or a JSON list
    imports: Annotated[list[str], NoDecode] = Field(default_factory=list)

    celery_broker_url: str | None = None
    celery_queue: str = "dcore"
    celery_queues: int = Field(default=1, ge=1)
    celery_visibility_timeout: float = Field(default=300.0, gt=0)

    #: limits on an incoming job message: its JSON size, and how deeply its free-form
    #: parts (context data, stage options) may nest; a message over either is malformed
    message_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    message_max_depth: int = Field(default=32, ge=1, le=150)

    #: seconds a running delivery's lease on its job lasts; renewed every third of it
    #: while the delivery runs. Another delivery of the job waits while it is live and
    #: takes over once it ran out (the first delivery's worker is presumed dead)
    lease_ttl: float = Field(default=15.0, gt=0)
    #: how often a worker looks for jobs whose delivery was lost (0: never), and how old
    #: a PENDING job must be before it counts as lost while its queue is empty
    recovery_interval: float = Field(default=10.0, ge=0)
    recovery_pending_after: float = Field(default=30.0, gt=0)

    job_attempts: int = Field(default=1, ge=1)
    job_backoff: float = Field(default=2.0, ge=1.0)
    job_initial_delay: float = Field(default=1.0, ge=0)
    job_max_delay: float = Field(default=300.0, ge=0)
    dlq_topic: str = "dcore.dlq"

    def __init__(self, **values: Any) -> None:
        """Read ``DCORE_*`` variables; keyword ``values`` win over them.

        Raises :class:`ConfigurationError` for a keyword that is no setting or a value that
        does not fit (naming each culprit and the accepted form); warns once about unknown
        ``DCORE_*`` variables."""
        fields = type(self).model_fields
        unknown = sorted(k for k in values if k not in fields and not k.startswith("_"))
        if unknown:
            raise ConfigurationError("; ".join(_unknown_keyword(k, fields) for k in unknown))
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(_explain(exc, values.keys())) from None
        self._keywords = frozenset(values).intersection(fields)
        _warn_unknown_variables(os.environ)

    def as_given(self, field: str) -> str:
        """``field`` and its value as the operator gave them, for error messages:
        ``DCORE_STORAGE='minoi'``, or ``DcoreSettings(storage='minoi')`` when set in code."""
        return _spell(field, getattr(self, field), keyword=field in self._keywords)

    @field_validator("imports", mode="before")
    @classmethod
    def _split_imports(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value


# -- bad values ------------------------------------------------------------------------

#: how each field type is written, for "expected ..." (a field of another type makes
#: tests/core/test_settings_errors.py fail until it is added here or to _FORMS)
_KINDS: dict[Any, str] = {
    int: "an integer",
    float: "a number",
    bool: "true or false (also 1/0, yes/no, on/off)",
    str: "text",
    SecretStr: "text",
    Path: "a file system path",
}
#: fields whose accepted form their type does not say
_FORMS = {"imports": "module names, comma-separated (a.b,c) or as a JSON list of strings"}
_BOUNDS = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "<="),
)


def variable(field: str) -> str:
    """The environment variable of settings field ``field`` (``storage`` → ``DCORE_STORAGE``)."""
    return f"{PREFIX}{field.upper()}"


def accepted_form(field: str, *, keyword: bool = False) -> str | None:
    """What ``field`` accepts, e.g. ``an integer >= 1``; None for a type not described."""
    if field in _FORMS:
        return _FORMS[field]
    info: FieldInfo = DcoreSettings.model_fields[field]
    args = (
        get_args(info.annotation)
        if get_origin(info.annotation) in (Union, types.UnionType)
        else (info.annotation,)
    )
    kinds = [_KINDS.get(arg) for arg in args if arg is not type(None)]
    if len(kinds) != 1 or kinds[0] is None:
        return None
    bounds = [
        f"{symbol} {getattr(m, attr):g}"
        for m in info.metadata
        for kind, attr, symbol in _BOUNDS
        if isinstance(m, kind)
    ]
    form = " ".join([kinds[0], " and ".join(bounds)]).strip()
    # None cannot be spelled in a variable, only passed in code
    return f"{form}, or None" if keyword and type(None) in args else form


def _spell(field: str, value: Any, *, keyword: bool, item: tuple[Any, ...] = ()) -> str:
    info = DcoreSettings.model_fields.get(field)
    if info is not None and SecretStr in (info.annotation, *get_args(info.annotation)):
        value = "**********"  # never echo a secret
    index = "".join(f"[{part!r}]" for part in item)
    if keyword:
        return f"DcoreSettings({field}{index}={value!r})"
    return f"{variable(field)}{index}={value!r}"


def _explain(exc: ValidationError, keywords: Collection[str]) -> str:
    """One line per bad value: the variable (or keyword), the value, the accepted form."""
    lines = []
    for error in exc.errors(include_url=False):
        field, *item = error["loc"] or ("",)
        field = str(field)
        if field not in DcoreSettings.model_fields:  # a model-level error: pydantic's words
            lines.append(f"DcoreSettings: {error['msg']}")
            continue
        keyword = field in keywords
        given = _spell(field, error["input"], keyword=keyword, item=tuple(item))
        form = accepted_form(field, keyword=keyword)
        lines.append(
            f"{given} is not valid: " + (f"expected {form}" if form else str(error["msg"]))
        )
    return "\n".join(lines)


def _unknown_keyword(name: str, fields: Collection[str]) -> str:
    message = f"DcoreSettings({name}=...) is not a setting"
    close = difflib.get_close_matches(name, list(fields), n=1)
    return message + (f"; did you mean {close[0]}?" if close else "")


# -- unknown variables -----------------------------------------------------------------

_warned: set[frozenset[str]] = set()


@functools.cache
def known_variables() -> frozenset[str]:
    """Every ``DCORE_*`` variable dcore reads: one per setting, plus OTHER_VARIABLES."""
    return frozenset(map(variable, DcoreSettings.model_fields)) | OTHER_VARIABLES


def unknown_variables(environ: Mapping[str, str]) -> frozenset[str]:
    """The ``DCORE_*`` names in ``environ`` that nothing reads, as spelled there (matched
    case-insensitively, as the settings read them)."""
    known = known_variables()
    return frozenset(
        key for key in environ if key[: len(PREFIX)].upper() == PREFIX and key.upper() not in known
    )


def suggestion(name: str) -> str | None:
    """The known variable closest to ``name`` (compared without the shared ``DCORE_``,
    which would make every name look alike), or None when none is close."""
    suffixes = {known[len(PREFIX) :]: known for known in known_variables()}
    close = difflib.get_close_matches(name[len(PREFIX) :].upper(), sorted(suffixes), n=1)
    return suffixes[close[0]] if close else None


def _warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """Warn about unknown ``DCORE_*`` variables, once per distinct set of them (a set seen
    before is silent; one that changed warns again). Recorded only after warning, so
    under ``-W error`` every construction keeps failing."""
    unknown = unknown_variables(environ)
    if not unknown or unknown in _warned:
        return
    named = []
    for name in sorted(unknown):
        close = suggestion(name)
        named.append(f"{name} (did you mean {close}?)" if close else name)
    warnings.warn(
        f"unknown DCORE_* variable(s), ignored: {', '.join(named)}. "
        "Fix the name, or unset it; docs/reference/settings.md lists them all.",
        ConfigurationWarning,
        stacklevel=3,
    )
    _warned.add(unknown)
