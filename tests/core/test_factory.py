"""PluginFactory: services injected from the Environment, options validated with errors
that name the plugin, the option and what it accepts."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import pytest

from dcore import (
    Environment,
    Execute,
    NextFn,
    PluginFactory,
    PluginOptionsError,
    PluginRegistry,
)
from dcore.errors import PluginError
from dcore.services import EventBusInterface, StorageInterface

if TYPE_CHECKING:  # names the constructors below use only in annotations
    from decimal import Context as OnlyForTypeCheckers

    from dcore.services import LockInterface


class Base(Execute[Any]):
    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        return next_fn(context)


class Needs(Base):
    def __init__(
        self,
        storage: StorageInterface,
        bus: EventBusInterface,
        env: Environment,
        size: int,
        mode: Literal["fast", "safe"] = "safe",
    ) -> None:
        self.storage, self.bus, self.env, self.size, self.mode = storage, bus, env, size, mode


class Flexible(Base):
    def __init__(self, level: int = 1, **extra: Any) -> None:
        self.level = level
        self.extra = extra


class Scalar(Base):
    def __init__(
        self,
        value: int | bool | str = 0,
        tags: list[str] | None = None,
        names: list[str] = ["a"],  # noqa: B006 - tests default copying
    ) -> None:
        self.value, self.tags, self.names = value, tags, names


class Picky(Base):
    def __init__(self, ratio: float = 0.5) -> None:
        if not 0 <= ratio <= 1:
            raise ValueError(f"ratio must be within [0, 1], got {ratio}")
        self.ratio = ratio


class NoInit(Base):
    pass


class UnresolvedService(Base):
    def __init__(self, locks: LockInterface, size: int = 1) -> None:
        self.locks, self.size = locks, size


class UnresolvedOption(Base):
    def __init__(
        self, storage: StorageInterface, rounding: OnlyForTypeCheckers | None = None
    ) -> None:
        self.storage, self.rounding = storage, rounding


class UnresolvedOptionOnly(Base):
    def __init__(self, rounding: OnlyForTypeCheckers | None = None) -> None:
        self.rounding = rounding


@pytest.fixture
def factory(dcore_registry: PluginRegistry, dcore_env: Environment) -> PluginFactory:
    for name, cls in {
        "needs": Needs,
        "flexible": Flexible,
        "scalar": Scalar,
        "picky": Picky,
        "noinit": NoInit,
    }.items():
        dcore_registry.register(name, cls)
    return PluginFactory(environment=dcore_env)


def test_service_parameters_are_injected_from_the_environment(
    factory: PluginFactory, dcore_env: Environment
) -> None:
    plugin = factory.create(Execute, "needs", size=3)

    assert plugin.storage is dcore_env.storage
    assert plugin.bus is dcore_env.events
    assert plugin.env is dcore_env
    assert (plugin.size, plugin.mode) == (3, "safe")


def test_options_are_coerced_by_their_annotation(factory: PluginFactory) -> None:
    assert factory.create(Execute, "needs", size="7").size == 7


@pytest.mark.parametrize(
    ("cls", "culprit"),
    [
        (
            UnresolvedService,
            "parameter 'locks' is annotated 'LockInterface', which cannot be "
            "resolved (NameError: name 'LockInterface' is not defined)",
        ),
        (
            UnresolvedOption,
            "parameter 'storage' is annotated 'StorageInterface', which cannot "
            "be resolved (NameError: name 'OnlyForTypeCheckers'",
        ),
    ],
)
def test_a_service_parameter_whose_annotations_cannot_be_resolved_is_a_clear_error(
    factory: PluginFactory, dcore_registry: PluginRegistry, cls: type, culprit: str
) -> None:
    dcore_registry.register("unresolved", cls)
    with pytest.raises(PluginError) as info:
        factory.create(Execute, "unresolved")
    assert culprit in str(info.value)
    assert "at module level, not only under TYPE_CHECKING" in str(info.value)


def test_an_option_whose_annotation_cannot_be_resolved_takes_any_value(
    factory: PluginFactory, dcore_registry: PluginRegistry
) -> None:
    dcore_registry.register("unresolved", UnresolvedOptionOnly)
    assert factory.create(Execute, "unresolved", rounding="half-up").rounding == "half-up"


def test_services_cannot_be_passed_as_options(factory: PluginFactory) -> None:
    with pytest.raises(PluginOptionsError, match="unknown option 'storage'"):
        factory.create(Execute, "needs", size=1, storage="elsewhere")


def test_unknown_option_names_plugin_option_and_accepted(factory: PluginFactory) -> None:
    with pytest.raises(PluginOptionsError) as info:
        factory.create(Execute, "needs", size=1, colour="red")
    assert str(info.value) == (
        "bad options for plugin 'needs' (Needs): unknown option 'colour'. It accepts: size, mode?"
    )


def test_missing_option_is_named(factory: PluginFactory) -> None:
    with pytest.raises(PluginOptionsError, match=r"'needs'.*missing required option 'size'"):
        factory.create(Execute, "needs")


def test_wrong_type_names_option_and_value(factory: PluginFactory) -> None:
    with pytest.raises(PluginOptionsError) as info:
        factory.create(Execute, "needs", size="lots", mode="reckless")
    message = str(info.value)
    assert "option 'size'='lots'" in message
    assert "option 'mode'='reckless'" in message
    assert "It accepts: size, mode?" in message
    assert isinstance(info.value, TypeError)


def test_validate_checks_without_building(factory: PluginFactory) -> None:
    assert factory.validate(Execute, "needs", {"size": "2"}) == {"size": 2, "mode": "safe"}
    with pytest.raises(PluginOptionsError, match="missing required option 'size'"):
        factory.validate(Execute, "needs", {})


def test_var_keyword_constructor_accepts_extra_options(factory: PluginFactory) -> None:
    plugin = factory.create(Execute, "flexible", level="2", anything=[1])
    assert plugin.level == 2
    assert plugin.extra == {"anything": [1]}


def test_plugin_without_init_takes_no_options(factory: PluginFactory) -> None:
    assert isinstance(factory.create(Execute, "noinit"), NoInit)
    with pytest.raises(PluginOptionsError, match=r"unknown option 'x'. It accepts: \(none\)"):
        factory.create(Execute, "noinit", x=1)


def test_constructor_value_error_becomes_options_error_naming_plugin(
    factory: PluginFactory,
) -> None:
    with pytest.raises(PluginOptionsError) as info:
        factory.create(Execute, "picky", ratio=3)
    assert "plugin 'picky' (Picky) rejected its options: ratio must be within" in str(info.value)


def test_cached_validation_keeps_scalar_types_apart(factory: PluginFactory) -> None:
    for _ in range(2):  # the second round is served from the cache
        assert factory.create(Execute, "scalar", value=True).value is True
        assert factory.create(Execute, "scalar", value=1).value == 1
        assert type(factory.create(Execute, "scalar", value=1).value) is int
        assert factory.create(Execute, "scalar", value="1").value == "1"


def test_mutable_option_values_are_never_shared_between_instances(
    factory: PluginFactory,
) -> None:
    a = factory.create(Execute, "scalar", tags=["x"])
    b = factory.create(Execute, "scalar", tags=["x"])
    c, d = factory.create(Execute, "scalar"), factory.create(Execute, "scalar")

    assert a.tags == b.tags == ["x"]
    assert a.tags is not b.tags
    c.names.append("mutated")
    assert d.names == ["a"]


def test_unknown_plugin_name_raises_not_found(factory: PluginFactory) -> None:
    from dcore import PluginNotFoundError

    with pytest.raises(PluginNotFoundError, match=r"'needz'.*Did you mean 'needs'"):
        factory.create(Execute, "needz")


# -- however a constructor is called, each parameter gets the option of its name ----------------
class Ordered(Base):
    def __init__(self, b: int, storage: StorageInterface, a: int) -> None:
        self.got = (a, b, storage)


class KeywordOnly(Base):
    def __init__(self, *, a: int = 0, b: int = 0) -> None:
        self.got = (a, b)


class PositionalOnly(Base):
    def __init__(self, a: int = 0, /) -> None:
        self.got = a


class OwnNew(Base):
    def __new__(cls, **options: Any) -> OwnNew:
        instance = super().__new__(cls)
        instance.seen_by_new = options
        return instance

    def __init__(self, a: int = 0) -> None:
        self.got = a


def keywords_only(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def wrapper(self: Any, **options: Any) -> None:
        self.seen_by_wrapper = options
        init(self, **options)

    return wrapper


class Decorated(Base):
    @keywords_only
    def __init__(self, a: int = 0, b: int = 0) -> None:
        self.got = (a, b)


class CountingMeta(type(Base)):  # type: ignore[misc]
    calls: list[dict[str, Any]] = []

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        CountingMeta.calls.append(kwargs)
        return super().__call__(*args, **kwargs)


class Metaclassed(Base, metaclass=CountingMeta):
    def __init__(self, a: int = 0) -> None:
        self.got = a


def test_each_parameter_gets_the_option_of_its_name_in_any_order(
    factory: PluginFactory, dcore_registry: PluginRegistry, dcore_env: Environment
) -> None:
    dcore_registry.register("ordered", Ordered)
    dcore_registry.register("keyword_only", KeywordOnly)

    assert factory.create(Execute, "ordered", a=1, b=2).got == (1, 2, dcore_env.storage)
    assert factory.create(Execute, "ordered", b=2, a=1).got == (1, 2, dcore_env.storage)
    assert factory.create(Execute, "keyword_only", b=2, a=1).got == (1, 2)


def test_a_positional_only_parameter_is_refused_as_it_always_was(
    factory: PluginFactory, dcore_registry: PluginRegistry
) -> None:
    """Options are passed by name; a constructor that refuses names is rejected, not
    quietly fed by position."""
    dcore_registry.register("positional_only", PositionalOnly)
    with pytest.raises(PluginOptionsError, match=r"'positional_only'.*rejected its options"):
        factory.create(Execute, "positional_only", a=1)


def test_own_new_wrapped_init_and_metaclass_call_get_options_by_name(
    factory: PluginFactory, dcore_registry: PluginRegistry
) -> None:
    for name, cls in {"own_new": OwnNew, "decorated": Decorated, "meta": Metaclassed}.items():
        dcore_registry.register(name, cls)
    CountingMeta.calls.clear()

    own_new = factory.create(Execute, "own_new", a=3)
    decorated = factory.create(Execute, "decorated", b=2, a=1)
    meta = factory.create(Execute, "meta", a=4)

    assert (own_new.seen_by_new, own_new.got) == ({"a": 3}, 3)
    assert (decorated.seen_by_wrapper, decorated.got) == ({"a": 1, "b": 2}, (1, 2))
    assert (CountingMeta.calls, meta.got) == ([{"a": 4}], 4)
