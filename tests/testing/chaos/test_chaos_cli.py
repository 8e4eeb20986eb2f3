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
            assert client.get("/version").content == b'{"version": "2.12.0"}\n'
            assert list(client.get("/proxies").json()) == ["cfg"]
            wildcard = {"name": "w", "listen": "0.0.0.0:0", "upstream": "127.0.0.1:1"}
            refused = client.post("/proxies", json=wildcard)
            assert refused.status_code == 400
            assert "--allow-remote" in refused.json()["error"]
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


def test_standalone_server_flags_allow_remote_addresses_and_set_limits() -> None:
    proc = _spawn("--port", "0", "--allow-remote", "--max-body-bytes", "200")
    try:
        url = _first_line(proc)
        with httpx.Client(base_url=url, timeout=5) as client:
            # disabled: accepted and stored, but nothing binds every interface
            remote = {"name": "r", "listen": "0.0.0.0:0", "upstream": "192.0.2.1:80"}
            response = client.post("/proxies", json={**remote, "enabled": False})
            assert response.status_code == 201
            too_big = client.post("/proxies", content=b" " * 201)
            assert too_big.status_code == 413
            assert "--max-body-bytes" in too_big.json()["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_standalone_server_rejects_a_bad_limit() -> None:
    proc = _spawn("--port", "0", "--idle-timeout", "0")
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert "HttpLimits.idle_timeout must be a positive finite number, got 0.0" in stderr
