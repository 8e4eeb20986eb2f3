"""``dcore graph MODULE:OBJECT [--mermaid]``: print a pipeline's stages and async boundary.

OBJECT is a Pipeline, or a callable taking no arguments that returns one (a factory).
"""

from __future__ import annotations

import argparse
from typing import Any

from dcore.cli.common import call_signature_error, describe_failure, fail, load_object

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("graph", help="print a pipeline's stages (text or Mermaid)")
    parser.add_argument(
        "target",
        metavar="MODULE:OBJECT",
        help="a Pipeline or a factory of one: pkg.module:name or file.py:name",
    )
    parser.add_argument("--mermaid", action="store_true", help="print a Mermaid flowchart")
    parser.set_defaults(handler=run)


def _a(kind: str) -> str:
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def run(args: argparse.Namespace) -> int:
    from dcore._core.pipeline import Pipeline

    target = args.target
    obj = load_object(target)
    if callable(obj) and not isinstance(obj, Pipeline):
        why = call_signature_error(obj)
        if why is not None:
            return fail(
                f"{target} is {_a(type(obj).__name__)} that needs arguments ({why}); "
                "dcore graph takes a Pipeline or a factory of one that takes none"
            )
        try:
            obj = obj()
        except Exception as exc:
            return fail(
                f"calling {target}() to build the pipeline raised "
                f"{describe_failure(exc, hint=False)}"
            )
        if not isinstance(obj, Pipeline):
            return fail(f"{target}() returned {_a(type(obj).__name__)}, not a Pipeline")
    if not isinstance(obj, Pipeline):
        return fail(f"{target} is {_a(type(obj).__name__)}, not a Pipeline or a factory of one")
    print(obj.to_mermaid() if args.mermaid else obj.describe())
    return 0
