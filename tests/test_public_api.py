"""The curated public surface: ``__all__`` lists exactly what each package exports
(as httpx's test_exported_members does), so nothing leaks in or goes missing silently."""

from __future__ import annotations
import __future__

import importlib
import types
import typing

import pytest

import dcore


def public_members(module: types.ModuleType) -> list[str]:
    """Public attributes, leaving out submodules (attributes once imported) and names
    only imported for annotations (``annotations``, ``Any``, ``TYPE_CHECKING``)."""
    names = []
    for name in dir(module):
        if name.startswith("_"):
            continue
        value = getattr(module, name)
        if isinstance(value, types.ModuleType | __future__._Feature):
            continue
        if name == "TYPE_CHECKING" or getattr(value, "__module__", None) == typing.__name__:
            continue
        names.append(name)
    return sorted(names)


def test_dcore_all_is_exactly_the_exported_members() -> None:
    assert sorted(dcore.__all__) == public_members(dcore)


def test_dcore_all_has_no_duplicates_and_every_name_resolves() -> None:
    assert len(set(dcore.__all__)) == len(dcore.__all__)
    for name in dcore.__all__:
        assert getattr(dcore, name) is not None, name


def test_dcore_has_a_version() -> None:
    assert isinstance(dcore.__version__, str)
    assert dcore.__version__.count(".") >= 1


def test_dcore_testing_all_is_exactly_the_exported_members() -> None:
    testing = importlib.import_module("dcore_testing")
    exported = getattr(testing, "__all__", None)
    if exported is None:
        pytest.skip("dcore_testing has no curated __init__ with __all__ yet")
    assert len(set(exported)) == len(exported)
    assert sorted(exported) == public_members(testing)  # resolves every lazy name too


@pytest.mark.parametrize("package", ["dcore.backends", "dcore.dispatchers"])
def test_lazy_subpackages_export_each_name_from_where_it_lives(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        assert isinstance(value, type), name
        assert value.__name__ == name
        assert value.__module__.startswith(f"{package}.")
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'Nope'"):
        module.Nope  # noqa: B018
