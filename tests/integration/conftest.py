"""Puts this directory on sys.path: the Celery worker imports ``dcore_it_jobs`` by
name, and the tests import it (and ``celery_support``) under the same name."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
