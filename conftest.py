"""Runs every Python code block of README.md and docs/ as part of the suite (Sybil).

A page's blocks run top to bottom in one namespace, in a fresh temporary directory with
an isolated plugin registry and the embedded environment (local files, in-memory job
store, bus and locks), so a page can register plugins and run pipelines without
touching the rest of the suite. Besides running it, a block is checked in two ways:

- a block whose body is only ``--8<-- "path:section"`` lines shows a section of a file
  (mkdocs' snippets extension puts it there): the file must be a test module the suite
  runs, and the section must exist in it, so what the page shows is what is tested;
- a function the block defines named ``test_*`` and taking no arguments is called.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from sybil import Example, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown import CodeBlockParser

ROOT = Path(__file__).parent
SNIPPET = re.compile(r'--8<-- "(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"')
#: where the suite's test modules live (pyproject's testpaths)
TEST_ROOTS = ("tests", "chaos", "examples")


def check_snippets(source: str) -> bool:
    """True if ``source`` is snippet lines only (then each was checked)."""
    lines = [line.strip() for line in source.strip().splitlines()]
    if not lines or not all(SNIPPET.fullmatch(line) for line in lines):
        return False
    for line in lines:
        found = SNIPPET.fullmatch(line)
        assert found is not None
        path = ROOT / found["path"]
        assert path.is_file(), f"the snippet names {found['path']}, which does not exist"
        relative = path.relative_to(ROOT)
        runs = relative.parts[0] in TEST_ROOTS and relative.name.startswith("test_")
        assert runs, (
            f"{relative} is not a test module the suite runs: show code from a test_*.py "
            f"under {', '.join(TEST_ROOTS)}, or write a block the page runs itself"
        )
        section = found["section"]
        if section is not None:
            text = path.read_text()
            for mark in (f"--8<-- [start:{section}]", f"--8<-- [end:{section}]"):
                assert mark in text, f"{relative} has no '{mark}' line for the snippet"
    return True


class DocsEvaluator:
    """Runs a block (or checks the snippets it shows), then its argument-less tests."""

    def __init__(self) -> None:
        self.python = PythonEvaluator(future_imports=("annotations",))

    def __call__(self, example: Example) -> None:
        __tracebackhide__ = True
        if check_snippets(str(example.parsed)):
            return
        # what the page defines belongs to a module named after it, so a core function
        # gets a stable name (docs.tutorial.upload_app:finalize)
        page = Path(example.path).resolve().relative_to(ROOT).with_suffix("")
        example.namespace.setdefault(
            "__name__", ".".join(part.replace("-", "_") for part in page.parts)
        )
        before = set(example.namespace)
        self.python(example)
        for name in sorted(set(example.namespace) - before):
            value = example.namespace[name]
            if (
                name.startswith("test_")
                and inspect.isfunction(value)
                and not inspect.signature(value).parameters
            ):
                value()


def page_registry() -> Any:
    """A registry for one page's plugins, over the default registry: what the page
    registers stays on the page (and may shadow a name registered elsewhere), and the
    built-ins and what the modules it imports register into the default registry
    (``examples.sim.payments``) are found too."""
    from dcore import PluginNotFoundError, PluginRegistry, default_registry

    class PageRegistry(PluginRegistry):
        def get(self, interface: type, name: str) -> type:
            try:
                return super().get(interface, name)
            except PluginNotFoundError:
                return default_registry().get(interface, name)

        def __contains__(self, item: tuple[type, str]) -> bool:
            return super().__contains__(item) or item in default_registry()

    return PageRegistry()  # empty: the page's plugins may reuse names the suite took


def setup(namespace: dict[str, Any]) -> None:
    """A fresh directory, registry and embedded environment for one page."""
    from dcore import DcoreSettings, Environment, use_environment, use_registry

    stack = contextlib.ExitStack()
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dcore-docs-")))
    cwd = Path.cwd()
    os.chdir(tmp)
    stack.callback(os.chdir, cwd)
    registry = stack.enter_context(use_registry(page_registry()))
    env = Environment(
        DcoreSettings(
            storage="local",
            storage_root=tmp / "storage",
            event_bus="memory",
            job_store="memory",
            locks="memory",
        ),
        registry=registry,
    )
    stack.callback(env.close)
    stack.enter_context(use_environment(env))
    namespace["__docs_stack__"] = stack


def teardown(namespace: dict[str, Any]) -> None:
    namespace["__docs_stack__"].close()


pytest_collect_file = Sybil(
    parsers=[CodeBlockParser(language="python", evaluator=DocsEvaluator())],
    patterns=["*.md"],
    excludes=["CHANGELOG.md"],
    setup=setup,
    teardown=teardown,
).pytest()
