"""Sandbox images built from Debian packages with debootstrap: no container registry needed."""
from __future__ import annotations

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


def build(client: docker.DockerClient, plugin: Plugin, *, mirror: str, force: bool = False) -> bool:
    """Builds the plugin's image unless it exists; returns whether it built one."""
    if not force and exists(client, plugin.image):
        return False
    if not plugin.debian_packages:
        raise ImageBuildError(f"{plugin.name}: image {plugin.image} is missing and the plugin names no debian_packages")
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
