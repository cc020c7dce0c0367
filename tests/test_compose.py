"""The Compose file, held to what a real host needs: read as Compose reads it (its ${VAR:-default}
settings filled from an environment), since no `docker compose` runs here."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from coderund import config
from coderund.daemon import WORKER_DRAIN_S

ROOT = config.PACKAGE_DIR.parent
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(node: Any, environ: dict[str, str]) -> Any:
    """Compose's ${NAME} and ${NAME:-default}, the forms the file uses."""
    if isinstance(node, dict):
        return {key: interpolate(value, environ) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, environ) for value in node]
    if isinstance(node, str):
        return VARIABLE.sub(lambda m: environ.get(m[1]) or (m[2] or ""), node)
    return node


def compose(**environ: str) -> dict[str, Any]:
    return interpolate(yaml.safe_load((ROOT / "docker-compose.yml").read_text()), environ)


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, duration
    return int(match[1] or 0) * 60 + int(match[2] or 0)


def make(*args: str, **environ: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "CODERUND_DOCKER_SOCKET")} | environ
    return subprocess.run(["make", "-s", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout


def test_services_and_their_health():
    services = compose()["services"]
    assert {"postgres", "redis", "rabbitmq", "api", "worker", "images", "prometheus", "grafana"} <= set(services)
    assert services["api"]["command"] == ["--role", "api"] and services["api"]["user"] == "10001"
    assert services["worker"]["command"] == ["--role", "worker"]
    assert services["images"]["command"] == ["images", "build"] and services["images"]["profiles"] == ["tools"]
    assert services["images"]["environment"]["CODERUND_IMAGE_SOURCE"] == "registry"
    assert services["api"]["build"]["args"]["BASE"] == "debian:bookworm-slim"
    for name, service in services.items():
        assert not service.get("privileged"), name
        if name not in ("images", "worker"):
            assert "healthcheck" in service, name
    for name in ("postgres", "redis", "rabbitmq"):
        assert services["api"]["depends_on"][name]["condition"] == "service_healthy"
    assert "ports" not in services["worker"]  # so that --scale worker=3 has no port clash
    assert set(compose()["volumes"]) >= {"postgres-data", "prometheus-data", "grafana-data"}


def test_the_worker_drains_before_docker_kills_it():
    assert seconds(compose()["services"]["worker"]["stop_grace_period"]) >= WORKER_DRAIN_S + 15


def test_only_the_api_is_published_beyond_this_host():
    services = compose()["services"]
    assert services["api"]["ports"] == ["8080:8080"]
    published = {name: service["ports"] for name, service in services.items() if "ports" in service and name != "api"}
    assert set(published) == {"rabbitmq", "prometheus", "grafana"}
    for name, ports in published.items():
        assert all(port.startswith("127.0.0.1:") for port in ports), (name, ports)


def test_secrets_and_settings_come_from_the_environment():
    given = compose(POSTGRES_PASSWORD="pg-secret", RABBITMQ_PASSWORD="mq-secret", GRAFANA_PASSWORD="gf-secret",
                    CODERUND_REGISTRATION="closed")["services"]
    assert given["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg-secret"
    assert ":pg-secret@postgres:5432/" in given["api"]["environment"]["CODERUND_DATABASE_URL"]
    assert ":mq-secret@rabbitmq:5672/" in given["worker"]["environment"]["CODERUND_AMQP_URL"]
    assert given["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "gf-secret"
    assert given["api"]["environment"]["CODERUND_REGISTRATION"] == "closed"
    defaults = compose()["services"]
    assert defaults["api"]["environment"]["CODERUND_REGISTRATION"] == "open"
    for service in ("api", "worker"):  # every value a setting of coderund's accepts
        environ = {k: v for k, v in defaults[service]["environment"].items() if k.startswith("CODERUND_")}
        config.load({}, environ=environ)


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_the_runtime_is_chosen_by_coderund_runtime(runtime):
    worker = compose(**({"CODERUND_RUNTIME": runtime} if runtime == "runsc" else {}))["services"]["worker"]
    assert worker["environment"]["CODERUND_RUNTIME"] == runtime
    assert config.load({}, environ={"CODERUND_RUNTIME": runtime}).runtime == runtime


def test_only_the_worker_and_the_image_builder_hold_the_engine_socket_from_docker_host():
    for environ, socket in (({}, "/var/run/docker.sock"), ({"CODERUND_DOCKER_SOCKET": "/run/user/1000/docker.sock"},
                                                           "/run/user/1000/docker.sock")):
        services = compose(**environ)["services"]
        for name, service in services.items():
            holds = f"{socket}:/var/run/docker.sock" in service.get("volumes", [])
            assert holds == (name in ("worker", "images")), (name, environ)
    # make hands Compose the socket that DOCKER_HOST names (rootless Docker), else the standard one.
    probe = ROOT / f".probe-{os.getpid()}.mk"
    probe.write_text("include Makefile\nprobe:\n\t@echo $$CODERUND_DOCKER_SOCKET\n")
    try:
        assert make("-f", probe.name, "probe", DOCKER_HOST="unix:///run/user/1000/docker.sock").strip() == "/run/user/1000/docker.sock"
        assert make("-f", probe.name, "probe", DOCKER_HOST="tcp://127.0.0.1:2375").strip() == "/var/run/docker.sock"
        assert make("-f", probe.name, "probe").strip() == "/var/run/docker.sock"
    finally:
        probe.unlink()


def test_prometheus_finds_every_replica_of_the_api_and_of_the_workers():
    prometheus = yaml.safe_load((ROOT / "grafana" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    for job, service, port in (("coderund-api", "api", 8080), ("coderund-worker", "worker", 9100)):
        [discovery] = jobs[job]["dns_sd_configs"]
        assert (discovery["names"], discovery["type"], discovery["port"]) == ([service], "A", port)
        assert "static_configs" not in jobs[job]
    assert compose()["services"]["worker"]["environment"]["CODERUND_METRICS_PORT"] == "9100"


def test_make_clean_removes_images_volumes_and_leftovers():
    recipe = make("-n", "clean", COMPOSE="docker compose")
    assert "docker compose --profile tools down --volumes --remove-orphans --rmi all" in recipe
    assert "docker ps -aq --filter label=coderund | xargs -r docker rm -f" in recipe  # a killed worker's sandboxes
    assert "docker volume ls -q --filter label=coderund | xargs -r docker volume rm" in recipe  # the tools volumes
    assert "docker images -q --filter reference='coderund/*'" in recipe


def test_compose_itself_accepts_the_file_where_it_is_installed():
    """Where a Compose is installed (none is on this project's CI machine: there the checks above stand alone)."""
    installed = [command for command in (["docker", "compose"], ["docker-compose"])
                 if shutil.which(command[0]) and subprocess.run([*command, "version"], capture_output=True).returncode == 0]
    if not installed:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed: the file is checked as YAML only")
    done = subprocess.run([*installed[0], "-f", str(ROOT / "docker-compose.yml"), "--profile", "tools", "config", "-q"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
