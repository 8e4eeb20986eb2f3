"""``dcore_testing`` exports the simulator's public names (and the manual clock), lazily:
importing the package (which pytest does for the plugin) loads neither the simulator nor
Hypothesis."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dcore_testing
import dcore_testing.clock
import dcore_testing.golden
import dcore_testing.invariants
import dcore_testing.sim


def test_every_exported_name_resolves_to_the_object_in_its_home_module() -> None:
    homes = {
        "InvariantViolation": dcore_testing.invariants,
        "ManualClock": dcore_testing.clock,
        "GoldenMessages": dcore_testing.golden,
        "GoldenMessageError": dcore_testing.golden,
    }
    for name in dcore_testing.__all__:
        value = getattr(dcore_testing, name)
        home = homes.get(name, dcore_testing.sim)
        assert value is getattr(home, name), name
    assert set(dcore_testing.__all__) <= set(dir(dcore_testing))


def test_the_sim_package_exports_exactly_its_all() -> None:
    public = {n for n in vars(dcore_testing.sim) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(dcore_testing.sim, n)).__name__ == "module"}
    assert public - modules == set(dcore_testing.sim.__all__)


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="'NoSuchThing'"):
        dcore_testing.NoSuchThing  # noqa: B018


def test_importing_the_package_and_plugin_stays_light() -> None:
    code = (
        "import sys, dcore_testing, dcore_testing.pytest_plugin, dcore_testing.fixtures.sim,"
        " dcore_testing.fixtures.golden;"
        "print(sorted(m for m in ('greenlet', 'hypothesis', 'freezegun', "
        "'dcore_testing.sim', 'dcore_testing.golden', 'dcore') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
