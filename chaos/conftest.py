"""The chaos suite: real Redis and S3 behind a Toxiproxy(-compatible) proxy.

Every module marks its tests ``chaos``. This directory goes on ``sys.path`` because
the Celery worker of the partition scenario imports ``chaos_jobs`` by that name, and
the tests must import it under the same name for the context type to match.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
