"""One public surface: the docs, the examples and the test kit import only dcore's public
modules, and the first release's import paths are aliases of the same objects."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def private_imports(source: str) -> list[str]:
    """The dcore modules ``source`` imports whose path has a private (``_``) part."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from dcore import _core`` imports a module too
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found += [name for name in names if name.split(".")[0] == "dcore"
                  and any(part.startswith("_") for part in name.split("."))]  # fmt: skip
    return found


def documented_sources() -> dict[str, str]:
    """Every Python block of the README and the docs, every example and test-kit module."""
    sources = {}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for n, block in enumerate(PYTHON_BLOCK.findall(page.read_text()), 1):
            sources[f"{page.relative_to(ROOT)} block {n}"] = block
    for package in ("examples", "dcore_testing"):
        for path in sorted((ROOT / package).rglob("*.py")):
            sources[str(path.relative_to(ROOT))] = path.read_text()
    return sources


def test_the_check_finds_a_private_import() -> None:
    source = (
        "import dcore\nfrom dcore._core.lifecycle import deliver\nimport dcore._worker as w\n"
        "from dcore import _core\n"
    )
    assert private_imports(source) == [
        "dcore._core.lifecycle",
        "dcore._core.lifecycle.deliver",
        "dcore._worker",
        "dcore._core",
    ]
    assert private_imports("from dcore.engine import deliver_message\n") == []


def test_docs_examples_and_the_test_kit_import_only_public_modules() -> None:
    sources = documented_sources()
    assert len(sources) > 100  # the README, the docs pages, examples and the kit were read
    offenders = {where: found for where, source in sources.items()
                 if (found := private_imports(source))}  # fmt: skip
    assert offenders == {}


ALIASES = {
    "dcore.core.context": "dcore._core.context",
    "dcore.core.interfaces": "dcore._plugins.interfaces",
    "dcore.core.plugins": "dcore._plugins.registry",
}


@pytest.mark.parametrize("alias", ALIASES)
def test_a_first_release_import_path_is_an_alias_of_the_same_objects(alias: str) -> None:
    public, private = importlib.import_module(alias), importlib.import_module(ALIASES[alias])
    assert sorted(public.__all__) == sorted(private.__all__)
    for name in public.__all__:
        assert getattr(public, name) is getattr(private, name), name


def test_every_name_dcore_exports_resolves() -> None:
    import dcore.engine

    for module in (dcore, dcore.engine):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], module.__name__
