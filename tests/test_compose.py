"""docker-compose.yml, the Dockerfile and the Toxiproxy config hang together.

No Docker is needed: the YAML is loaded with PyYAML and its structure checked against
the code (settings the services set exist in DcoreSettings and validate; Toxiproxy's
upstreams are compose services; the app and worker reach Redis and MinIO only through
Toxiproxy). When the ``docker compose`` plugin is installed, it validates the file too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcore import DcoreSettings

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _depends(service: dict[str, Any]) -> list[str]:
    deps = service.get("depends_on", [])
    return list(deps) if isinstance(deps, list | dict) else []


def _port_pairs(service: dict[str, Any]) -> list[tuple[int, int]]:
    pairs = []
    for entry in service.get("ports", []):
        host, _, container = str(entry).rpartition(":")
        pairs.append((int(host), int(container)))
    return pairs


def _toxiproxy_config(services: dict[str, Any]) -> tuple[list[dict[str, Any]], Path]:
    [mount] = [v for v in services["toxiproxy"]["volumes"] if "toxiproxy.json" in v]
    source, target, *_ = mount.split(":")
    assert f"-config={target}" in services["toxiproxy"]["command"]
    path = (REPO / source).resolve()
    return json.loads(path.read_text()), path


def test_compose_has_every_service_the_stack_needs(services: dict[str, Any]) -> None:
    assert set(services) >= {"redis", "minio", "minio-init", "toxiproxy", "worker", "app"}
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name} has neither image nor build"
    assert services["toxiproxy"]["image"].startswith("ghcr.io/shopify/toxiproxy:")
    assert services["minio"]["image"].startswith("minio/minio")
    assert services["minio-init"]["image"].startswith("minio/mc")
    assert services["redis"]["image"].startswith("redis:")


def test_images_are_pinned_to_the_versions_the_project_tests(services: dict[str, Any]) -> None:
    from dcore_testing.chaos.api import VERSION

    for name, service in services.items():
        image = service.get("image", "")
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert tag not in ("", "latest"), f"{name}: {image!r} is not pinned to a version"
    assert services["toxiproxy"]["image"] == f"ghcr.io/shopify/toxiproxy:{VERSION}"


def test_the_image_installs_with_the_constraints_the_suite_was_verified_with() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md LICENSE constraints.txt ./" in dockerfile
    assert 'pip install -c constraints.txt ".[all]"' in dockerfile


def test_every_depends_on_names_an_existing_service(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for target in _depends(service):
            assert target in services, f"{name} depends on unknown service {target!r}"
            assert target != name


def test_the_bucket_is_created_before_the_app_and_worker_start(services: dict[str, Any]) -> None:
    init = services["minio-init"]
    script = " ".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    bucket = services["worker"]["environment"]["DCORE_S3_BUCKET"]
    assert f"mc mb --ignore-existing local/{bucket}" in script
    for name in ("worker", "app"):
        condition = services[name]["depends_on"]["minio-init"]["condition"]
        assert condition == "service_completed_successfully"


@pytest.mark.parametrize("name", ["worker", "app"])
def test_dcore_variables_exist_in_settings_and_validate(
    services: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = services[name]["environment"]
    fields = set(DcoreSettings.model_fields)
    for key, value in env.items():
        assert key.startswith("DCORE_"), key
        assert key.removeprefix("DCORE_").lower() in fields, f"{key} is not a DcoreSettings field"
        monkeypatch.setenv(key, str(value))
    settings = DcoreSettings()
    assert settings.storage == "minio"
    assert settings.job_store == settings.event_bus == "redis"
    assert settings.dispatcher == "celery"
    assert settings.imports == ["examples.upload_app.main"]
    assert (REPO / "examples/upload_app/main.py").is_file()


def test_app_and_worker_reach_redis_and_minio_only_through_toxiproxy(
    services: dict[str, Any],
) -> None:
    proxies, _ = _toxiproxy_config(services)
    listen = {p["name"]: int(p["listen"].rpartition(":")[2]) for p in proxies}
    for name in ("worker", "app"):
        env = services[name]["environment"]
        assert env["DCORE_REDIS_URL"].startswith(f"redis://toxiproxy:{listen['redis']}/")
        assert env["DCORE_CELERY_BROKER_URL"].startswith(f"redis://toxiproxy:{listen['redis']}/")
        assert env["DCORE_S3_ENDPOINT"] == f"http://toxiproxy:{listen['minio']}"
        assert "toxiproxy" in _depends(services[name])


def test_toxiproxy_config_is_valid_and_its_upstreams_are_compose_services(
    services: dict[str, Any],
) -> None:
    proxies, path = _toxiproxy_config(services)
    assert path.is_file()
    assert isinstance(proxies, list)
    names = [p["name"] for p in proxies]
    assert len(names) == len(set(names))
    published = {container for _, container in _port_pairs(services["toxiproxy"])}
    for proxy in proxies:
        assert set(proxy) >= {"name", "listen", "upstream"}
        host, _, port = proxy["upstream"].rpartition(":")
        assert host in services, f"proxy {proxy['name']} points at unknown service {host!r}"
        exposed = {c for _, c in _port_pairs(services[host])}
        assert int(port) in exposed, f"{host} does not listen on {port}"
        assert int(proxy["listen"].rpartition(":")[2]) in published


def test_published_host_ports_do_not_collide(services: dict[str, Any]) -> None:
    hosts = [host for s in services.values() for host, _ in _port_pairs(s)]
    assert len(hosts) == len(set(hosts))
    assert (8474, 8474) in _port_pairs(services["toxiproxy"])  # the Toxiproxy API


def test_worker_and_app_commands_start_dcore(services: dict[str, Any]) -> None:
    worker = services["worker"]["command"]
    assert worker[:4] == ["celery", "-A", "dcore.celery:app", "worker"]
    assert services["app"]["command"][:2] == ["uvicorn", "examples.upload_app.main:app"]
    assert (8000, 8000) in _port_pairs(services["app"])


def test_dockerfile_installs_every_extra_and_the_example() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert '".[all]"' in dockerfile
    assert "COPY examples ./examples" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose plugin is not installed",
)
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
