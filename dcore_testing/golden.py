"""Golden messages: one recorded message per context version, checked against current code.

A deploy must still run the messages queued before it. A golden directory keeps what each
released version of a context sent, one file per version::

    golden/<pkg.mod.Class>/<version>.json

holding either the context envelope (``{"type", "version", "data"}``, recorded from a
context) or a whole ``JobMessage`` (recorded from a pipeline with a ``Dispatch`` stage or
from a message, which also checks its stages' plugins and options and its core function).
:meth:`GoldenMessages.check` loads every stored version the way a worker would (migrations,
the unknown-keys rule, plugins) and fails naming the file, the version and the fix: a
version bump without ``@migration('1.0')``, a field renamed without one, a plugin option
renamed under queued messages.

Recording never overwrites a file: an existing file is the evidence of what that version
sent, and re-recording one that no longer loads would bless the very skew it exists to
catch. Only the missing file of the current version is written, when asked
(``update=True``; in pytest ``--dcore-update-golden``). To redo a version that was never
released, delete its file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, TypeAlias

from dcore import Environment, JobMessage, MessageError, Pipeline, PipelineContext
from dcore.engine import context_type, context_type_name, load_message

__all__ = ["Example", "GoldenMessageError", "GoldenMessages", "type_directory"]

#: What ``record`` takes: a context, a message, or a pipeline created from a context with
#: a Dispatch stage (the message it sends).
Example: TypeAlias = PipelineContext | JobMessage | Pipeline[Any]
Payload: TypeAlias = tuple[type[PipelineContext], str, dict[str, Any]]

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
UPDATE_HINT = "pytest --dcore-update-golden"


class GoldenMessageError(AssertionError):
    """A stored golden message that current code would not run (or one that is missing).

    The message has one paragraph per file: its path, the version, what a worker would
    do with it and the fix."""


class GoldenMessages:
    """The golden messages under ``directory`` (relative paths start at ``base``, by
    default the working directory; the pytest fixture uses the test file's directory).

    ``update`` records the current version's message when it is missing. ``environment``
    is where whole messages are loaded (default: the current one), for its plugins."""

    def __init__(
        self,
        directory: str | os.PathLike[str] = "golden",
        *,
        base: str | os.PathLike[str] | None = None,
        update: bool = False,
        environment: Environment | None = None,
    ) -> None:
        self.base = Path(base) if base is not None else Path.cwd()
        self.directory = self.base / directory
        self.update = update
        self.environment = environment
        #: files this object has written, in order
        self.written: list[Path] = []

    def __repr__(self) -> str:
        return f"GoldenMessages({str(self.directory)!r}, update={self.update})"

    # -- where ---------------------------------------------------------------------------
    def _dir(self, directory: str | os.PathLike[str] | None) -> Path:
        return self.directory if directory is None else self.base / directory

    def path(
        self,
        cls: type[PipelineContext],
        version: str | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
    ) -> Path:
        """The file of ``cls`` at ``version`` (default: its current ``__version__``)."""
        version = cls.__version__ if version is None else version
        if not _VERSION.fullmatch(version):
            raise ValueError(
                f"{cls.__name__} version {version!r} cannot name a golden file: use "
                "letters, digits and . _ + - (e.g. '1.0')"
            )
        return self._dir(directory) / type_directory(cls) / f"{version}.json"

    # -- record --------------------------------------------------------------------------
    def record(
        self, example: Example, *, directory: str | os.PathLike[str] | None = None
    ) -> Path | None:
        """Write ``example``'s message under its type and version unless a file is
        already there (never overwritten); the path written, or None."""
        return self._write(_payload(example), directory)

    def _write(self, payload: Payload, directory: str | os.PathLike[str] | None) -> Path | None:
        cls, version, document = payload
        path = self.path(cls, version, directory=directory)
        if path.exists():
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_dumps(document), encoding="utf-8")
        self.written.append(path)
        return path

    # -- check ---------------------------------------------------------------------------
    def check(
        self,
        example: Example | type[PipelineContext],
        *,
        directory: str | os.PathLike[str] | None = None,
    ) -> list[Path]:
        """Check that this code runs every stored version of ``example``'s context type,
        and that the current version is stored (recording it first when ``update``).

        ``example`` is what :meth:`record` takes, or a context class (check only).
        Returns the files checked; raises GoldenMessageError listing every problem."""
        __tracebackhide__ = True  # the failure is the caller's line, not this module's
        payload = None if isinstance(example, type) else _payload(example)
        cls = example if payload is None else payload[0]
        if not (isinstance(cls, type) and issubclass(cls, PipelineContext)):
            raise TypeError(
                "check() takes a context, a JobMessage, a pipeline or a PipelineContext "
                f"subclass, got {example!r:.80}"
            )
        if self.update and payload is not None:
            self._write(payload, directory)
        current = self.path(cls, directory=directory)
        files = sorted(current.parent.glob("*.json"), key=_version_key)
        problems = [self._problem(path, cls) for path in files]
        if not current.exists():
            problems.append(self._missing(current, cls))
        if payload is not None:
            problems.append(_example_problem(type(example).__name__, payload[2], self.environment))
        _raise([p for p in problems if p])
        return files

    def check_all(self, *, directory: str | os.PathLike[str] | None = None) -> list[Path]:
        """Check every file under the directory, whatever its type: also catches a
        context class that was moved or renamed under queued messages."""
        __tracebackhide__ = True
        files = sorted(self._dir(directory).glob("*/*.json"), key=_version_key)
        _raise([p for p in (self._problem(path, None) for path in files) if p])
        return files

    def _missing(self, path: Path, cls: type[PipelineContext]) -> str:
        how = (
            "pass an example instance (a context, message or pipeline) to record it"
            if self.update
            else f"record one with `{UPDATE_HINT}` and commit it"
        )
        return (
            f"{_show(path)}: no golden message for {cls.__name__} version "
            f"{cls.__version__}: {how}, so the next change to {cls.__name__} is checked "
            f"against what {cls.__version__} sends"
        )

    def _problem(self, path: Path, cls: type[PipelineContext] | None) -> str | None:
        """Why a worker running this code would not run the message in ``path``."""
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"{_show(path)}: not a readable JSON file: {exc}"
        is_message = isinstance(stored, dict) and {"spec", "context"} <= stored.keys()
        envelope = stored.get("context") if is_message else stored
        if not isinstance(envelope, dict):
            return f"{_show(path)}: not a context envelope or a job message"
        named, version = envelope.get("type"), envelope.get("version")
        if cls is not None and named != context_type_name(cls):
            return (
                f"{_show(path)}: holds a {named!r} message, not a "
                f"{context_type_name(cls)!r} one; move it under its own type"
            )
        if version != path.stem:
            return (
                f"{_show(path)}: the file name says version {path.stem} but the "
                f"message is version {version!r}; rename the file"
            )
        try:
            _load(stored, is_message, self.environment)
        except MessageError as exc:
            return _explain(path, str(named), str(version), exc)
        return None


def type_directory(cls: type[PipelineContext]) -> str:
    """``pkg.mod.Class``: the context's type name as a portable directory name."""
    return context_type_name(cls).replace(":", ".")


def _payload(example: Example) -> Payload:
    """(context class, version, JSON document) of an example to store."""
    if isinstance(example, PipelineContext):
        return type(example), example.__version__, example.to_envelope()
    if isinstance(example, Pipeline):
        example = _message_of(example)
    if not isinstance(example, JobMessage):
        raise TypeError(
            "a golden message is recorded from a context, a JobMessage or a pipeline with "
            f"a Dispatch stage, got {example!r:.80}"
        )
    cls = context_type(example.context.type)
    return cls, example.context.version, json.loads(example.to_json())


def _message_of(pipeline: Pipeline[Any]) -> JobMessage:
    at = pipeline.dispatch_index
    if pipeline.context is None or at is None:
        raise ValueError(
            f"{pipeline!r}: only a pipeline created from a context (ctx.create_pipeline) "
            "with a Dispatch stage sends a message; pass its context instead"
        )
    return pipeline.continuation(at + 1).to_message(pipeline.context)


def _load(stored: dict[str, Any], is_message: bool, env: Environment | None) -> None:
    """Load ``stored`` as a worker would; MessageError if it would be dead-lettered."""
    if is_message:
        load_message(json.dumps(stored), env)
    else:
        PipelineContext.from_envelope(stored)


def _example_problem(kind: str, document: dict[str, Any], env: Environment | None) -> str | None:
    """This code must accept what it sends now, too."""
    try:
        _load(json.loads(_dumps(document)), "spec" in document, env)
    except MessageError as exc:
        return f"the example {kind} does not load with this code: {exc}"
    return None


def _explain(path: Path, named: str, version: str, exc: MessageError) -> str:
    name = named.rsplit(":", 1)[-1]
    text = (
        f"{_show(path)}: a worker running this code would dead-letter {name} "
        f"{version} messages still queued:\n    {exc}"
    )
    try:
        current = context_type(named).__version__
    except MessageError:
        return text + (
            "\n    import the module that defines it before checking; if the "
            "class was moved or renamed, its queued messages cannot run"
        )
    if current == version:
        text += (
            f"\n    if {name} {version} was never released, delete this file and "
            f"record it again with `{UPDATE_HINT}`"
        )
    return text


def _raise(problems: list[str]) -> None:
    __tracebackhide__ = True
    if problems:
        count = f"{len(problems)} golden message problem" + ("s" if len(problems) > 1 else "")
        raise GoldenMessageError(f"{count}:\n" + "\n".join(f"- {p}" for p in problems))


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _version_key(path: Path) -> tuple[str, list[tuple[int, str]]]:
    """Natural order: 1.2 before 1.10."""
    parts = re.findall(r"\d+|\D+", path.stem)
    return str(path.parent), [(int(p), "") if p.isdigit() else (-1, p) for p in parts]


def _show(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
