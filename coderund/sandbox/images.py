"""Sandbox images built from Debian packages with debootstrap: no container registry needed."""
from __future__ import annotations

import io
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import docker

from ..plugins import Plugin

log = logging.getLogger(__name__)
SUITE = "bookworm"
PATH = "/usr/local/bin:/usr/bin:/bin"


class ImageBuildError(Exception):
    pass


def exists(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def build(client: docker.DockerClient, plugin: Plugin, *, mirror: str, source: str = "debootstrap", force: bool = False) -> bool:
    """Builds the plugin's image unless it exists; returns whether it built one.

    source "debootstrap" needs no registry (root and debootstrap on this host); "registry" lets the
    engine build FROM debian:bookworm-slim, for hosts that reach Docker Hub (e.g. inside Compose).
    """
    if not force and exists(client, plugin.image):
        return False
    if not plugin.debian_packages:
        raise ImageBuildError(f"{plugin.name}: image {plugin.image} is missing and the plugin names no debian_packages")
    if source == "registry":
        _from_registry(client, plugin)
        log.info("built image %s for %s from the registry's Debian", plugin.image, plugin.name)
        return True
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install debootstrap)")
    repository, tag = docker.utils.parse_repository_tag(plugin.image)
    with tempfile.TemporaryDirectory(prefix=f"coderund-{plugin.name}-") as root:
        _debootstrap(Path(root), plugin.debian_packages, mirror)
        tar = subprocess.Popen(["tar", "-C", root, "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        try:
            client.api.import_image_from_stream(
                tar.stdout,
                repository=repository,
                tag=tag or "latest",
                changes=[f"ENV PATH={PATH}", "ENV LANG=C.UTF-8", f"LABEL coderund.language={plugin.name}"],
            )
        finally:
            tar.stdout.close()
            if tar.wait() != 0:
                raise ImageBuildError(f"{plugin.name}: tar of the root file system failed")
    log.info("built image %s for %s", plugin.image, plugin.name)
    return True


def _from_registry(client: docker.DockerClient, plugin: Plugin) -> None:
    dockerfile = (
        f"FROM debian:{SUITE}-slim\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends "
        f"{' '.join(plugin.debian_packages)} && rm -rf /var/lib/apt/lists/*\n"
        f"ENV PATH={PATH} LANG=C.UTF-8\n"
        f"LABEL coderund.language={plugin.name}\n"
    )
    try:
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=plugin.image, rm=True, pull=True)
    except docker.errors.BuildError as e:
        raise ImageBuildError(f"{plugin.name}: docker build failed: {e}") from None


def _debootstrap(root: Path, packages: tuple[str, ...], mirror: str) -> None:
    command = ["debootstrap", "--variant=minbase", "--include=" + ",".join(packages), SUITE, str(root), mirror]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise ImageBuildError(f"debootstrap failed: {' / '.join(tail)}")
    # Package caches are dead weight in a sandbox image.
    for folder in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (root / folder).glob("*"):
            if item.is_file():
                item.unlink()
