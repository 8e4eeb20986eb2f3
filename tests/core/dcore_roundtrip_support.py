"""Loads ``dcore_roundtrip_pipeline`` under its top-level name, the name a worker process
imports it by (``DCORE_IMPORTS=dcore_roundtrip_pipeline``), so the context type and core
function in its messages resolve the same in the tests and in a fresh interpreter."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

MODULE = "dcore_roundtrip_pipeline"
HERE = Path(__file__).resolve().parent


def load() -> ModuleType:
    if MODULE in sys.modules:
        return sys.modules[MODULE]
    spec = importlib.util.spec_from_file_location(MODULE, HERE / f"{MODULE}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    spec.loader.exec_module(module)
    return module


rt = load()
