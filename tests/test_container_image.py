"""coderund's own image, built by `make image` and run as Compose runs it: an API container (as uid 10001)
and a worker container holding the engine's socket, on the host's network (this engine has no bridge)
and the local PostgreSQL, Redis and RabbitMQ; a python and a C task end to end; and a sandbox image
built from inside the container through the `registry` image source, with the local Debian base
tagged as the registry's image (a faithful stand-in: the engine has no registry to pull from)."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import docker
import pytest

from coderund import config
from coderund.repository.db import with_database
from coderund.sandbox import images
from tests.conftest import RUN_ID, _delete_queue, api_of, drop_database, free_port

ROOT = config.PACKAGE_DIR.parent
IMAGE = f"coderund/coderund:test-{RUN_ID}"
C_PROGRAM = '#include <stdio.h>\nint main(void) { int n; scanf("%d", &n); printf("%d\\n", n * 7); return 0; }\n'


def engine_socket() -> str:
    url = urlsplit(os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    return url.path if url.scheme == "unix" else "/var/run/docker.sock"


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """`make image`, tagged for this run (concurrent runs must not swap each other's image); its layers
    stay cached for the next run."""
    started = time.monotonic()
    made = subprocess.run(["make", "-s", "image", f"VENV={sys.prefix}", f"IMAGE={IMAGE}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=1500)
    assert made.returncode == 0, (made.stdout + made.stderr)[-3000:]
    print(f"make image: {time.monotonic() - started:.0f} s")
    yield IMAGE
    docker.from_env().images.remove(IMAGE, noprune=True)


def start(client: docker.DockerClient, image: str, role: str, env: dict[str, str], **options) -> docker.models.containers.Container:
    return client.containers.run(image, ["--role", role], detach=True, network_mode="host", environment=env,
                                 name=f"coderund-image-test-{RUN_ID}-{role}", labels={"coderund.test": RUN_ID}, **options)


def logs(*containers: docker.models.containers.Container) -> str:
    return "\n".join(f"--- {c.name}:\n{c.logs(tail=30).decode(errors='replace')}" for c in containers)


@pytest.mark.timeout(1500)  # the first build on a fresh machine installs Debian's and PyPI's packages
async def test_the_image_runs_api_and_worker_as_compose_does(image, settings, tmp_path: Path):
    own = dataclasses.replace(settings, database_url=with_database(settings.database_url, f"{settings.database_name}_image"),
                              queue=f"{settings.queue}.image", port=free_port())
    env = {"CODERUND_DATABASE_URL": own.database_url, "CODERUND_REDIS_URL": own.redis_url, "CODERUND_AMQP_URL": own.amqp_url,
           "CODERUND_QUEUE": own.queue, "CODERUND_HOST": "127.0.0.1", "CODERUND_PORT": str(own.port),
           "CODERUND_LOG_LEVEL": "INFO"}
    client = docker.from_env()
    containers = []
    try:
        containers.append(start(client, image, "api", env, user="10001"))
        containers.append(start(client, image, "worker", {**env, "CODERUND_METRICS_PORT": str(free_port()),
                                                          "CODERUND_CONCURRENCY": "2", "CODERUND_WARM_SANDBOXES": "0"},
                                volumes={engine_socket(): {"bind": "/var/run/docker.sock", "mode": "rw"}}))
        try:
            async with api_of(own) as api:
                token = await api.user("image")
                python, c = await asyncio.gather(
                    api.run(token, language="python", code="import sys\nprint(sys.version_info[:2], input())", stdin="hi\n"),
                    api.run(token, language="c", code=C_PROGRAM, stdin="6\n"))
        except AssertionError as e:
            raise AssertionError(f"{e}\n{logs(*containers)}") from None
        assert (python["verdict"], python["stdout"]) == ("ok", "(3, 11) hi\n"), (python, logs(*containers))
        assert (c["verdict"], c["stdout"]) == ("ok", "42\n"), (c, logs(*containers))
        for container in containers:
            container.reload()
            assert container.status == "running", logs(container)
    finally:
        for container in containers:
            container.stop(timeout=30)
            container.remove(force=True)
        drop_database(own.database_url)
        await _delete_queue(own)

    # The Compose file's `images` service: images build with CODERUND_IMAGE_SOURCE=registry, one plugin here.
    plugin = (ROOT / "plugins" / "bash.toml").read_text().replace('image = "coderund/bash:bookworm"',
                                                                  f'image = "coderund-test/bash-{RUN_ID}:bookworm"')
    (tmp_path / "bash.toml").write_text(plugin)
    stand_in = not images.exists(client, images.REGISTRY_BASE)
    if stand_in:
        client.images.get(images.BASE).tag(*images.REGISTRY_BASE.split(":"))
    builder = client.containers.run(
        image, ["images", "build", "bash"], detach=True, network_mode="host", labels={"coderund.test": RUN_ID},
        environment={"CODERUND_IMAGE_SOURCE": "registry", "CODERUND_PLUGINS_DIR": "/plugins"},
        volumes={engine_socket(): {"bind": "/var/run/docker.sock", "mode": "rw"}, str(tmp_path): {"bind": "/plugins", "mode": "ro"}})
    try:
        exit_code = builder.wait(timeout=600)["StatusCode"]
        output = builder.logs().decode(errors="replace")
        assert exit_code == 0, output
        assert f"base: exists {images.REGISTRY_BASE}" in output and f"bash: built coderund-test/bash-{RUN_ID}:bookworm" in output, output
        built = client.images.get(f"coderund-test/bash-{RUN_ID}:bookworm")
        assert built.labels["coderund.base"] == client.images.get(images.REGISTRY_BASE).id
        ran = client.containers.run(built.id, ["bash", "-c", "echo ok"], network_mode="none", remove=True)
        assert ran == b"ok\n"
    finally:
        builder.remove(force=True)
        if images.exists(client, f"coderund-test/bash-{RUN_ID}:bookworm"):
            client.images.remove(f"coderund-test/bash-{RUN_ID}:bookworm")
        if stand_in:
            client.images.remove(images.REGISTRY_BASE, noprune=True)
