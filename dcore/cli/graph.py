"""``dcore graph MODULE:OBJECT [--mermaid]``: print a pipeline's stages and async boundary.

OBJECT is a Pipeline, or a callable returning one (so a factory function works).
"""

from __future__ import annotations

import argparse
from typing import Any

from dcore.cli.common import fail, load_object

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("graph", help="print a pipeline's stages (text or Mermaid)")
    parser.add_argument("target", metavar="MODULE:OBJECT", help="a Pipeline or a factory of one")
    parser.add_argument("--mermaid", action="store_true", help="print a Mermaid flowchart")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dcore.core.pipeline import Pipeline

    obj = load_object(args.target)
    if callable(obj) and not isinstance(obj, Pipeline):
        obj = obj()
    if not isinstance(obj, Pipeline):
        return fail(f"{args.target} is a {type(obj).__name__}, not a Pipeline")
    print(obj.to_mermaid() if args.mermaid else obj.describe())
    return 0
