"""Plugin discovery: interfaces, registries as objects, duplicates, entry points."""

from __future__ import annotations

import textwrap
import uuid
from abc import abstractmethod
from pathlib import Path
from typing import Any

import pytest

from dcore import (
    Dispatch,
    Execute,
    NextFn,
    PluginNotFoundError,
    PluginRegistry,
    current_registry,
    default_registry,
    define_interface,
    register_plugin,
    use_registry,
)
from dcore._plugins.interfaces import PluginInterface
from dcore._plugins.registry import (
    ENTRY_POINT_GROUP,
    interface_by_name,
    interfaces_of,
    is_interface,
)
from dcore.errors import DuplicatePluginError, PluginError


class Noop(Execute[Any]):
    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        return next_fn(context)


class OtherNoop(Noop):
    pass


@define_interface
class Greeter(PluginInterface):
    """A third-party interface defined with the same decorator as dcore's own."""

    @abstractmethod
    def greet(self) -> str: ...


class Both(Noop, Greeter):
    def greet(self) -> str:
        return "hi"


def test_fixture_registry_is_current_and_a_copy_of_the_default(
    dcore_registry: PluginRegistry,
) -> None:
    assert current_registry() is dcore_registry
    assert dcore_registry is not default_registry()
    assert dcore_registry.names(Execute) == default_registry().names(Execute)
    assert "logging" in dcore_registry.names(Execute)


def test_registrations_in_a_test_do_not_leak_into_the_default(
    dcore_registry: PluginRegistry,
) -> None:
    register_plugin("leak_probe")(Noop)

    assert "leak_probe" in dcore_registry.names(Execute)
    assert (Execute, "leak_probe") in dcore_registry
    assert (Execute, "leak_probe") not in default_registry()


def test_copy_is_isolated_both_ways() -> None:
    original = PluginRegistry()
    original.register("a", Noop)
    twin = original.copy()
    twin.register("b", Noop)
    original.register("c", Noop)

    assert original.names(Execute) == ["a", "c"]
    assert twin.names(Execute) == ["a", "b"]


def test_use_registry_scopes_and_restores() -> None:
    outer = current_registry()
    inner = PluginRegistry()
    with use_registry(inner):
        assert current_registry() is inner
        register_plugin("scoped")(Noop)
    assert current_registry() is outer
    assert inner.names(Execute) == ["scoped"]
    assert (Execute, "scoped") not in outer


def test_duplicate_name_is_an_error_naming_interface_name_and_holder() -> None:
    registry = PluginRegistry()
    registry.register("dup", Noop)
    with pytest.raises(DuplicatePluginError) as info:
        registry.register("dup", OtherNoop)
    message = str(info.value)
    assert "Execute plugin 'dup' is already registered as" in message
    assert f"{__name__}.Noop" in message
    assert "replace=True" in message
    assert registry.get(Execute, "dup") is Noop


def test_replace_true_overrides_and_same_class_twice_is_fine() -> None:
    registry = PluginRegistry()
    registry.register("dup", Noop)
    registry.register("dup", Noop)  # idempotent: module imported twice
    registry.register("dup", OtherNoop, replace=True)
    assert registry.get(Execute, "dup") is OtherNoop


def test_class_implementing_two_interfaces_registers_under_both() -> None:
    registry = PluginRegistry()
    registry.register("both", Both)

    assert registry.get(Execute, "both") is Both
    assert registry.get(Greeter, "both") is Both
    assert interfaces_of(Both) == [Execute, Greeter]


def test_unregister_removes_name() -> None:
    registry = PluginRegistry()
    registry.register("gone", Noop)
    registry.unregister(Execute, "gone")
    assert registry.names(Execute) == []


@pytest.mark.parametrize("name", ["", "   ", None, 3])
def test_register_rejects_empty_or_non_string_name(name: Any) -> None:
    with pytest.raises(PluginError, match="non-empty string"):
        PluginRegistry().register(name, Noop)


def test_register_rejects_class_without_interface() -> None:
    class Stray:
        pass

    with pytest.raises(PluginError, match="Stray implements no plugin interface"):
        PluginRegistry().register("stray", Stray)


def test_interface_marking_is_not_inherited() -> None:
    assert is_interface(Execute)
    assert is_interface(Greeter)
    assert not is_interface(Noop)
    assert not is_interface("Execute")


def test_interface_by_name_resolves_and_lists_known_on_error() -> None:
    assert interface_by_name("Execute") is Execute
    assert interface_by_name("Dispatch") is Dispatch
    with pytest.raises(PluginError, match=r"no plugin interface named 'Exekute'; known: .*Execute"):
        interface_by_name("Exekute")


def test_interface_name_clash_from_another_module_is_an_error() -> None:
    clash = type("Greeter", (PluginInterface,), {"__module__": "elsewhere.plugins"})
    with pytest.raises(PluginError) as info:
        define_interface(clash)
    assert f"taken by {__name__}.Greeter" in str(info.value)
    assert "elsewhere.plugins.Greeter another name" in str(info.value)


# -- not found --------------------------------------------------------------------------------


def test_not_found_lists_registered_names_and_suggests_closest() -> None:
    registry = PluginRegistry()
    registry.register("storage_write", Noop)
    registry.register("logging", Noop)
    with pytest.raises(PluginNotFoundError) as info:
        registry.get(Execute, "storge_write")
    assert str(info.value) == (
        "no Execute plugin named 'storge_write'; registered: logging, storage_write. "
        "Did you mean 'storage_write'?"
    )
    assert isinstance(info.value, LookupError)
    assert info.value.registered == ["logging", "storage_write"]


def test_not_found_without_close_match_or_registrations() -> None:
    registry = PluginRegistry()
    with pytest.raises(PluginNotFoundError, match=r"registered: \(none\)\.$"):
        registry.get(Dispatch, "celery")
    registry.register("alpha", Noop)
    with pytest.raises(PluginNotFoundError) as info:
        registry.get(Execute, "zzz")
    assert "Did you mean" not in str(info.value)


# -- entry points ------------------------------------------------------------------------------


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path where a test writes an installed-looking distribution."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def install(root: Path, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    name = f"fake_dcore_plugins_{uuid.uuid4().hex[:8]}"
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


def test_entry_point_module_registers_into_the_loading_registry(fake_distribution: Path) -> None:
    mod = f"ep_module_{uuid.uuid4().hex[:8]}"
    install(
        fake_distribution,
        {"thirdparty": mod},
        {
            mod: """
        from dcore import Execute, register_plugin

        @register_plugin("thirdparty_stage")
        class ThirdParty(Execute):
            def execute(self, next_fn, context):
                return next_fn(context)
    """
        },
    )
    registry = PluginRegistry()

    loaded = registry.load_entry_points()

    assert "thirdparty" in loaded
    assert registry.names(Execute) == ["thirdparty_stage"]
    assert (Execute, "thirdparty_stage") not in default_registry()


def test_entry_point_callable_receives_the_registry(fake_distribution: Path) -> None:
    mod = f"ep_callable_{uuid.uuid4().hex[:8]}"
    install(
        fake_distribution,
        {"hook": f"{mod}:setup"},
        {
            mod: """
        from dcore import Execute

        class Hooked(Execute):
            def execute(self, next_fn, context):
                return next_fn(context)

        def setup(registry):
            registry.register("hooked", Hooked)
    """
        },
    )
    registry = PluginRegistry()

    assert registry.load_entry_points() == ["hook"]
    assert registry.names(Execute) == ["hooked"]


def test_broken_entry_point_warns_and_is_skipped(fake_distribution: Path) -> None:
    good = f"ep_good_{uuid.uuid4().hex[:8]}"
    bad = f"ep_bad_{uuid.uuid4().hex[:8]}"
    install(
        fake_distribution,
        {"broken": bad, "missing": "no_such_module_at_all_xyz", "fine": f"{good}:setup"},
        {
            bad: "raise RuntimeError('plugin import exploded')\n",
            good: """
                from dcore import Execute

                class Fine(Execute):
                    def execute(self, next_fn, context):
                        return next_fn(context)

                def setup(registry):
                    registry.register("fine", Fine)
            """,
        },
    )
    registry = PluginRegistry()

    with pytest.warns(RuntimeWarning) as caught:
        loaded = registry.load_entry_points()

    messages = [str(w.message) for w in caught]
    assert any("'broken'" in m and "plugin import exploded" in m for m in messages)
    assert any("'missing'" in m and "no_such_module_at_all_xyz" in m for m in messages)
    assert loaded == ["fine"]
    assert registry.names(Execute) == ["fine"]


def test_entry_points_are_read_from_the_dcore_group(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def fake_entry_points(*, group: str) -> list[Any]:
        asked.append(group)
        return []

    monkeypatch.setattr("importlib.metadata.entry_points", fake_entry_points)
    assert PluginRegistry().load_entry_points() == []
    assert asked == ["dcore.plugins"]
