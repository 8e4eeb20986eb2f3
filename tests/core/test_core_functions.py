"""Registered core functions: a worker runs only what was registered, by name."""

from __future__ import annotations

from typing import Any

import pytest

from dcore import core_function
from dcore._plugins.registry import (
    core_function_name,
    register_core_function,
    registered_core_function,
    registered_core_functions,
)
from dcore.errors import DuplicatePluginError, PluginError


@core_function
def registered_by_default_name(ctx: Any) -> str:
    return "default"


@core_function("tests.core.named_finalize")
def registered_by_own_name(ctx: Any) -> str:
    return "named"


def never_registered(ctx: Any) -> str:
    return "no"


def test_the_default_name_is_module_and_qualname() -> None:
    name = f"{__name__}:registered_by_default_name"
    assert registered_core_function(name) is registered_by_default_name
    assert core_function_name(registered_by_default_name) == name


def test_an_explicit_name_is_used_as_given() -> None:
    assert registered_core_function("tests.core.named_finalize") is registered_by_own_name
    assert core_function_name(registered_by_own_name) == "tests.core.named_finalize"
    assert "tests.core.named_finalize" in registered_core_functions()


def test_a_function_that_was_never_registered_has_no_name() -> None:
    assert core_function_name(never_registered) is None
    assert registered_core_function(f"{__name__}:never_registered") is None


def test_a_nested_function_needs_an_explicit_name() -> None:
    def inner(ctx: Any) -> None: ...

    with pytest.raises(PluginError, match=r"not at a module's top level.*explicit one"):
        register_core_function(inner)
    lambda_core = lambda ctx: None  # noqa: E731
    with pytest.raises(PluginError, match="explicit one"):
        register_core_function(lambda_core)


def test_a_function_in_main_needs_an_explicit_name() -> None:
    def main_core(ctx: Any) -> None: ...

    main_core.__module__ = "__main__"
    main_core.__qualname__ = "main_core"
    with pytest.raises(PluginError, match="in __main__, so it has no stable default name"):
        register_core_function(main_core)


@pytest.mark.parametrize(
    "name", ["", "has space", "a:b:c", "1starts.with.digit", "x" * 201, "mod:fn()", "os;rm"]
)
def test_an_invalid_name_is_refused_naming_the_form(name: str) -> None:
    with pytest.raises(PluginError, match=r"core function name must be 'pkg\.mod:func'"):
        register_core_function(never_registered, name)


def test_a_non_callable_is_refused() -> None:
    with pytest.raises(PluginError, match="must be callable"):
        register_core_function("os:system", "tests.core.not_callable")  # type: ignore[arg-type]


def test_a_taken_name_needs_replace_and_replacing_moves_the_name() -> None:
    def first(ctx: Any) -> str:
        return "first"

    def second(ctx: Any) -> str:
        return "second"

    register_core_function(first, "tests.core.taken")
    with pytest.raises(DuplicatePluginError, match=r"'tests\.core\.taken' is already registered"):
        register_core_function(second, "tests.core.taken")
    assert registered_core_function("tests.core.taken") is first

    register_core_function(second, "tests.core.taken", replace=True)
    assert registered_core_function("tests.core.taken") is second
    assert core_function_name(first) is None
