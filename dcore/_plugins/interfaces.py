"""The two stage interfaces, ``Execute`` and ``Dispatch``, and the stage signatures.

A stage is called with the rest of the pipeline as ``next_fn`` and the context.
``Execute`` continues by calling ``next_fn(context)`` (or short-circuits by not calling
it); ``Dispatch`` hands ``next_fn`` (a :class:`~dcore._core.message.Continuation`) to
background execution and returns at once.

Calling an interface with a plugin name makes a stage reference instead of an instance,
so ``pipeline.chain(Execute("logging", level="DEBUG"))`` reads like the keyword form.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from dcore._plugins.registry import define_interface, is_interface
from dcore._plugins.reprs import short_repr

if TYPE_CHECKING:
    from dcore._core.context import PipelineContext
    from dcore._core.pipeline import Continuation
    from dcore._core.retry import RetryPolicy

__all__ = [
    "AsyncNextFn",
    "ContextT",
    "Dispatch",
    "Execute",
    "InterfaceMeta",
    "NextFn",
    "PluginInterface",
    "StageRef",
    "constructor",
]

ContextT = TypeVar("ContextT", bound="PipelineContext")

#: What a stage calls to continue: the rest of the pipeline, returning core_fn's value.
NextFn = Callable[[ContextT], Any]
#: What an ``async def execute`` stage awaits to continue (see dcore._core.afold).
AsyncNextFn = Callable[[ContextT], Coroutine[Any, Any, Any]]


@dataclass(frozen=True)
class StageRef:
    """A not-yet-built stage: interface, plugin name, options and an optional retry policy."""

    interface: type
    plugin: str
    options: Mapping[str, Any] = field(default_factory=dict)
    retry: RetryPolicy | None = None

    @property
    def label(self) -> str:
        return self.plugin

    def __repr__(self) -> str:
        """The call that builds it: ``Execute('storage_write', prefix='uploads/')``, with
        only the retry policy's fields that differ from the defaults."""
        args = [repr(self.plugin), *(f"{k}={short_repr(v)}" for k, v in self.options.items())]
        if self.retry is not None:
            defaults = type(self.retry).model_fields
            fields = {k: v for k, v in self.retry if v != defaults[k].default}
            shown = [f"{k}={short_repr(v)}" for k, v in fields.items() if k != "retry_on"]
            if "retry_on" in fields:
                names = [kind.__qualname__ for kind in fields["retry_on"]]
                shown.append(f"retry_on=({', '.join(names)}{',' if len(names) == 1 else ''})")
            args.append(f"retry=RetryPolicy({', '.join(shown)})")
        return f"{self.interface.__name__}({', '.join(args)})"


class InterfaceMeta(ABCMeta):
    """Lets ``Interface("name", **options)`` build a :class:`StageRef`.

    Only the interface class itself does this; a concrete plugin class is constructed as
    usual.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if is_interface(cls) and len(args) == 1 and isinstance(args[0], str):
            retry = kwargs.pop("retry", None)
            return StageRef(cls, args[0], dict(kwargs), retry)
        return super().__call__(*args, **kwargs)


def constructor(cls: type) -> Callable[..., Any]:
    """What building an instance of plugin class ``cls`` calls, as ``construct(cls,
    **options)``: ``type.__call__`` itself when the metaclass's ``__call__`` is
    :class:`InterfaceMeta`'s, which only ever makes stage references of interfaces
    (never of a plugin class); a metaclass of the plugin's own is honoured."""
    call: Callable[..., Any] = type(cls).__call__
    return type.__call__ if call is InterfaceMeta.__call__ else call


class PluginInterface(metaclass=InterfaceMeta):
    """Base for classes that :func:`define_interface` marks; gives them the call form."""

    #: Default retry policy for every stage of this interface (see dcore._core.retry).
    retry_policy: ClassVar[RetryPolicy | None] = None

    #: ``True`` declares that one instance may serve any number of pipelines at once,
    #: from any thread: the plugin keeps no per-request state (what it holds is fixed by
    #: its options and the Environment's services). A pipeline then reuses the instance
    #: built when an identical chain was first compiled instead of building one per
    #: request. The default, ``False``, gives every pipeline its own instance; a plugin
    #: with ``__enter__``/``__exit__`` is leased from a pool per run either way.
    shareable: ClassVar[bool] = False


@define_interface
class Execute(PluginInterface, Generic[ContextT]):
    """A chainable filter: do work, call ``next_fn(context)``, return what it returns."""

    @abstractmethod
    def execute(self, next_fn: NextFn[ContextT], context: ContextT) -> Any:
        """Run this stage. Not calling ``next_fn`` stops the pipeline here.

        May be ``async def execute(self, next_fn: AsyncNextFn[C], context)``: then
        ``next_fn`` is awaited, and the pipeline runs with ``await pipeline.arun()``
        (``run()`` only when every async stage follows the Dispatch)."""


@define_interface
class Dispatch(PluginInterface, Generic[ContextT]):
    """Hands the rest of the pipeline to background execution and returns at once.

    ``remote = True`` declares that the work crosses a process boundary: the pipeline
    then checks, before any stage runs, that everything the hand-off needs serializes.
    """

    remote: ClassVar[bool] = False

    @abstractmethod
    def dispatch(self, next_fn: Continuation[ContextT], context: ContextT) -> Any:
        """Schedule ``next_fn(context)`` in the background; return a handle."""

    def is_remote(self) -> bool:
        """Whether this instance ships work to another process (may depend on options)."""
        return self.remote
