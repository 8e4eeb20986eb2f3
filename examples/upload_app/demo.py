"""``make demo``: upload one file through the seed's endpoint, on embedded defaults.

No server is needed: the app runs in-process under Starlette's TestClient, storage is
local files under ``./.dcore/storage``, the job store is in memory.
"""

from __future__ import annotations

import sys

from fastapi.testclient import TestClient

from dcore import current_environment

from .main import app


def main() -> int:
    with TestClient(app) as client:
        response = client.post(
            "/upload", files={"file": ("hello.txt", b"hello, distributed-core\n", "text/plain")}
        )
        response.raise_for_status()
        handle = response.json()
        status = client.get(f"/jobs/{handle['job_id']}").json()
    env = current_environment()
    stored = env.settings.storage_root / "uploads" / "hello.txt"
    print(f"job id:       {handle['job_id']} (response status: {handle['status']})")
    print(f"stored path:  {stored} ({stored.stat().st_size} bytes)")
    print(f"final status: {status['state']} after {status['attempts']} attempt(s)")
    print(f"result:       {status['result']}")
    print("history:      " + " -> ".join(t["state"] for t in status["history"]))
    return 0 if status["state"] == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
