"""``python -m dcore_testing.chaos`` runs standalone and prints its URL first."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
from pathlib import Path

import httpx

import dcore_testing.chaos

REPO = Path(dcore_testing.chaos.__file__).resolve().parents[2]


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dcore_testing.chaos", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _first_line(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout), "server printed nothing"
    return proc.stdout.readline().strip()


def test_standalone_server_prints_url_serves_config_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "proxies.json"
    config.write_text(
        json.dumps([{"name": "cfg", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"}])
    )
    proc = _spawn("--host", "127.0.0.1", "--port", "0", "--seed", "3", "--config", str(config))
    try:
        url = _first_line(proc)
        assert url.startswith("http://127.0.0.1:")
        assert not url.endswith(":0")
        with httpx.Client(base_url=url, timeout=5) as client:
            assert client.get("/version").json()["version"].startswith("v")
            assert list(client.get("/proxies").json()) == ["cfg"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0


def test_standalone_server_rejects_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.json"
    config.write_text(json.dumps([{"name": "", "upstream": "127.0.0.1:1"}]))
    proc = _spawn("--port", "0", "--config", str(config))
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert "missing required field: name at proxy 1" in stderr
