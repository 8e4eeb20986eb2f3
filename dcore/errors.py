"""The exceptions dcore raises, in one small tree.

Each error names the object, the bad value and the fix. Where a builtin fits, the error
also subclasses it, so ``except TypeError`` and friends keep working::

    DcoreError
    ├── PipelineDefinitionError (ValueError)   bad chain: second Dispatch, chain after run()
    ├── AsyncStageError (TypeError)            run() over an async stage (await arun())
    ├── PluginError
    │   ├── PluginNotFoundError (LookupError)  unknown plugin name (lists names, suggests one)
    │   │   └── BackendNotFoundError           one a setting chose: names DCORE_STORAGE … too
    │   ├── PluginOptionsError (TypeError)     options that do not fit the constructor
    │   └── DuplicatePluginError (ValueError)  a name registered twice without replace=True
    ├── ConfigurationError (ValueError)        a setting whose value cannot be used (names
    │                                          the DCORE_ variable and the accepted form)
    ├── ContextSerializationError (TypeError)  a context that cannot cross a remote hand-off
    ├── MessageError (ValueError)              a JobMessage that cannot be run (→ DLQ)
    ├── StorageError
    │   ├── InvalidKeyError (ValueError)       a key escaping the storage root
    │   ├── ObjectNotFoundError (KeyError)
    │   └── StaleFenceError                    a fenced write refused: a newer fence wrote
    │                                          the key (its writer's lock was taken over)
    ├── JobStateError
    │   ├── IllegalTransitionError (ValueError)
    │   ├── LeaseLostError                     a delivery's move after another took over
    │   └── JobNotFoundError (KeyError)
    ├── LockNotAcquired (TimeoutError)
    ├── LockLostError                       a lock released or extended after it expired
    ├── PoolExhausted (TimeoutError)        no pooled plugin instance free in time
    ├── ServiceUnavailableError (ConnectionError)  a backend that cannot be reached
    └── DispatchError                               a dispatcher that could not hand off
        └── DispatcherShutdownTimeout (TimeoutError)

and one warning, outside the tree because it does not stop anything::

    ConfigurationWarning (UserWarning)   an unknown DCORE_* variable (a typo is ignored otherwise)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "AsyncStageError",
    "BackendNotFoundError",
    "ConfigurationError",
    "ConfigurationWarning",
    "ContextSerializationError",
    "DcoreError",
    "DispatchError",
    "DispatcherShutdownTimeout",
    "DuplicatePluginError",
    "IllegalTransitionError",
    "InvalidKeyError",
    "JobNotFoundError",
    "JobStateError",
    "LeaseLostError",
    "LockLostError",
    "LockNotAcquired",
    "MessageError",
    "ObjectNotFoundError",
    "PipelineDefinitionError",
    "PluginError",
    "PluginNotFoundError",
    "PluginOptionsError",
    "PoolExhausted",
    "ServiceUnavailableError",
    "StaleFenceError",
    "StorageError",
]


class DcoreError(Exception):
    """Base of every error dcore raises on purpose."""


class PipelineDefinitionError(DcoreError, ValueError):
    """The pipeline as chained cannot run (e.g. a second Dispatch)."""


class AsyncStageError(DcoreError, TypeError):
    """``run()`` reached a stage with ``async def execute`` before the hand-off: only
    ``await pipeline.arun()`` can await it."""


class PluginError(DcoreError):
    """A plugin could not be found, registered or built."""


class PluginNotFoundError(PluginError, LookupError):
    """No plugin of that name is registered for the interface."""

    def __init__(self, interface: str, name: str, registered: Iterable[str]) -> None:
        self.interface = interface
        self.name = name
        self.registered = sorted(registered)
        listed = ", ".join(self.registered) or "(none)"
        message = f"no {interface} plugin named {name!r}; registered: {listed}."
        close = difflib.get_close_matches(name, self.registered, n=1)
        if close:
            message += f" Did you mean {close[0]!r}?"
        super().__init__(message)

    def __str__(self) -> str:  # LookupError would repr() the message otherwise
        return str(self.args[0])


class PluginOptionsError(PluginError, TypeError):
    """Options given for a plugin do not fit its constructor."""


class DuplicatePluginError(PluginError, ValueError):
    """A plugin name is already taken for that interface."""


class ConfigurationError(DcoreError, ValueError):
    """A ``DCORE_*`` variable (or a ``DcoreSettings`` keyword) has a value dcore cannot use.

    The message names the variable as the operator spelled it, the bad value and the
    accepted form, e.g. ``DCORE_THREAD_WORKERS='abc' is not valid: expected an integer >= 1``.
    """


class BackendNotFoundError(PluginNotFoundError):
    """A backend setting (``DCORE_STORAGE``, ``DCORE_DISPATCHER`` …) names no registered plugin.

    The message starts with the setting that chose it, as given (``DCORE_STORAGE='minoi'``,
    or ``DcoreSettings(storage='minoi')`` in code). Deliberately not a ConfigurationError:
    that is a ``ValueError``, which the plugin factory would report as a plugin's rejected
    options; as a ``LookupError`` it reaches the caller as an unknown plugin always did."""

    def __init__(self, setting: str, interface: str, name: str, registered: Iterable[str]) -> None:
        super().__init__(interface, name, registered)
        self.setting = setting
        self.args = (f"{setting} is not valid: {self.args[0]}",)


class ConfigurationWarning(UserWarning):
    """A ``DCORE_*`` variable that no setting reads, most likely a misspelled one."""


class ContextSerializationError(DcoreError, TypeError):
    """A context (or core_fn) cannot be shipped to another process."""


class MessageError(DcoreError, ValueError):
    """A JobMessage is malformed, of an unknown type, or needs a missing migration."""


class StorageError(DcoreError):
    """A storage backend failed."""


class InvalidKeyError(StorageError, ValueError):
    """A storage key is empty, absolute, contains NUL or escapes the root."""


class ObjectNotFoundError(StorageError, KeyError):
    """No object is stored under that key."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "object not found"


class StaleFenceError(StorageError):
    """A fenced write (``put_fenced``) refused because a newer fence already wrote the key:
    the writer's lock expired and another holder took it. Nothing was written; ``key``,
    ``fence`` (the refused one) and ``latest`` (the one recorded for the key) say which."""

    def __init__(self, key: str, fence: tuple[str, int], latest: tuple[str, int]) -> None:
        self.key = key
        self.fence = fence
        self.latest = latest
        (lock, number), (latest_lock, latest_number) = fence, latest
        if lock == latest_lock:
            why = (
                f"fence {latest_number} of that lock already wrote it: this writer's lock "
                "expired and another holder took it. Do not retry the write; the job may "
                "run again under a new acquisition of the lock"
            )
        else:
            why = (
                f"the key was last written under lock {latest_lock!r} (fence "
                f"{latest_number}), and fences of different locks cannot be ordered; write "
                "each key under one lock name"
            )
        super().__init__(f"write to {key!r} with fence {number} of lock {lock!r} refused: {why}")


class JobStateError(DcoreError):
    """A job record cannot be changed as asked."""


class IllegalTransitionError(JobStateError, ValueError):
    """The job is not in a state from which the requested transition is allowed."""


class LeaseLostError(JobStateError):
    """A delivery tried to move its job after losing the job's lease: another delivery
    holds it now (the first one was presumed dead), so the move is refused (fenced)."""


class JobNotFoundError(JobStateError, KeyError):
    """No job record with that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class LockNotAcquired(DcoreError, TimeoutError):
    """A lock could not be acquired within its blocking timeout."""


class LockLostError(DcoreError):
    """A lock was released or extended by a holder that no longer owns it (its TTL ran out)."""


class PoolExhausted(DcoreError, TimeoutError):
    """Every pooled instance was in use for the whole acquire timeout."""


class ServiceUnavailableError(DcoreError, ConnectionError):
    """A backend service (Redis, S3, a broker) cannot be reached or refused the request."""


class DispatchError(DcoreError):
    """A dispatcher could not hand off the rest of the pipeline."""


class DispatcherShutdownTimeout(DispatchError, TimeoutError):
    """A dispatcher's shutdown did not drain its work in time."""
