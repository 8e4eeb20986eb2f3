"""The documentation keeps up with the code: the README stays a first page, and the
reference pages list every setting, event, built-in plugin and command there is. (Every
code block of README.md and docs/ runs through Sybil, see the root conftest.py; mkdocs
build --strict, in `make check`, fails on a broken link or page.)"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from dcore import DcoreSettings, Dispatch, Execute, default_registry

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"


def page(name: str) -> str:
    return (DOCS / name).read_text()


def test_the_readme_is_a_first_page_of_at_most_10_kb() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= 10 * 1024


def test_every_setting_is_in_the_settings_reference() -> None:
    text = page("reference/settings.md")
    missing = [name for name in DcoreSettings.model_fields if f"`DCORE_{name.upper()}`" not in text]
    assert not missing, f"docs/reference/settings.md lacks {missing}"


def test_every_event_topic_is_in_the_events_reference() -> None:
    from dcore._core import events

    topics = [
        value
        for name, value in vars(events).items()
        if name.isupper() and isinstance(value, str) and re.fullmatch(r"[a-z.]+", value)
    ]
    assert len(topics) >= 10
    text = page("reference/events.md")
    assert not [t for t in topics if f"| `{t}` |" not in text]


def test_every_built_in_plugin_is_in_the_plugins_reference() -> None:
    text = page("reference/plugins.md")
    for interface in (Dispatch, Execute):
        registry = default_registry()
        built_in = [
            name
            for name in registry.names(interface)  # (tests add plugins too)
            if registry.get(interface, name).__module__.startswith("dcore.")
        ]
        assert len(built_in) >= 5
        for name in built_in:
            assert f"| `{name}` |" in text, f"{interface.__name__} plugin {name!r}"


def test_every_command_is_in_the_cli_reference() -> None:
    from dcore.cli import build_parser

    text = page("reference/cli.md")
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert not [c for c in commands if f"`dcore {c}" not in text]


def _docs_conftest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_conftest", ROOT / "conftest.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_snippet_must_come_from_a_test_module_and_a_section_it_has() -> None:
    check = _docs_conftest().check_snippets
    assert check('--8<-- "examples/sim/test_guide.py:first"')
    assert not check("print('a block the page runs itself')")
    with pytest.raises(AssertionError, match="is not a test module the suite runs"):
        check('--8<-- "examples/sim/ledger.py"')
    with pytest.raises(AssertionError, match="has no '--8<-- \\[start:nowhere\\]' line"):
        check('--8<-- "examples/sim/test_guide.py:nowhere"')
    with pytest.raises(AssertionError, match="does not exist"):
        check('--8<-- "examples/sim/test_gone.py"')


def test_every_fixture_is_dcore_prefixed_and_in_the_fixtures_reference(
    pytestconfig: pytest.Config,
) -> None:
    manager = pytestconfig.pluginmanager
    ours = set()
    for _, plugin in manager.list_name_plugin():
        module = getattr(plugin, "__name__", "")
        if not module.startswith("dcore_testing"):
            continue
        for attr in vars(plugin).values():
            marker = getattr(attr, "_fixture_function_marker", None) or getattr(
                attr, "_pytestfixturefunction", None
            )
            if marker is not None:
                ours.add(marker.name or attr.__name__)
    assert len(ours) >= 15, ours
    assert not [name for name in ours if not name.startswith("dcore_")]
    text = page("reference/fixtures.md")
    assert not [name for name in sorted(ours) if f"| `{name}` |" not in text]
