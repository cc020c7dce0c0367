"""Sandbox images from Debian packages, no container registry needed: one shared base made once
(debootstrap), then a thin layer per language (a local `docker build FROM` the base, apt-get inside),
or per family: a plugin's `image_from` builds its layer on another's image (scala on java's JVM,
fortran on c's GCC), so what they share is stored and installed once.

Each language image is labelled with what it was built from (its packages and the id of the image
under it), so a build skips what is current and rebuilds what a plugin's packages or a new image
under it changed.
"""
from __future__ import annotations

import base64
import hashlib
import io
import shlex
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import docker

from ..plugins import Plugin

log = logging.getLogger(__name__)
SUITE = "bookworm"
BASE = f"coderund/base:{SUITE}"  # made by debootstrap
REGISTRY_BASE = f"debian:{SUITE}-slim"
PATH = "/usr/local/bin:/usr/bin:/bin"
LABEL = "coderund"


class ImageBuildError(Exception):
    pass


def exists(client: docker.DockerClient, image: str) -> bool:
    return _labels(client, image) is not None


def wanted_labels(plugin: Plugin, under_id: str) -> dict[str, str]:
    """What an image must carry to be current for this plugin, built on the image whose id is under_id."""
    packages = (" ".join(sorted(plugin.debian_packages)) + "".join(f"\0{path}\0{text}" for path, text in plugin.image_files)
                + "".join(f"\0{command}" for command in plugin.image_commands))
    return {f"{LABEL}.language": plugin.name, f"{LABEL}.packages": hashlib.sha256(packages.encode()).hexdigest()[:16],
            f"{LABEL}.base": under_id}


def is_current(client: docker.DockerClient, plugin: Plugin, under_id: str) -> bool:
    labels = _labels(client, plugin.image)
    return labels is not None and all(labels.get(k) == v for k, v in wanted_labels(plugin, under_id).items())


def base_of(source: str) -> str:
    """The image that the language images of an image source are built on."""
    return REGISTRY_BASE if source == "registry" else BASE


def build_base(client: docker.DockerClient, *, mirror: str, source: str = "debootstrap") -> tuple[str, bool]:
    """The id of the source's base, made when it is missing; and whether it was made.

    source "debootstrap" needs no registry (root and debootstrap on this host) and makes coderund/base;
    "registry" takes debian:bookworm-slim as it is, pulled from Docker Hub when the engine lacks it (as
    `docker run` does), for hosts that reach it, e.g. inside Compose.
    """
    base = base_of(source)
    if exists(client, base):
        return client.api.inspect_image(base)["Id"], False
    repository, tag = docker.utils.parse_repository_tag(base)
    if source == "registry":
        client.images.pull(repository, tag)
    else:
        _debootstrap_base(client, repository, tag, mirror)
    return client.api.inspect_image(base)["Id"], True


def build_all(client: docker.DockerClient, order: list[tuple[Plugin, Plugin | None]], *, base: str = BASE, base_id: str,
              force: bool = False, at_once: int = 2, starting: Callable[[Plugin], None] = lambda plugin: None,
              done: Callable[[Plugin, bool], None] = lambda plugin, built: None) -> None:
    """Builds the images of `order` ((plugin, the plugin its image is built on), parents first, as
    Plugins.image_order gives them; the first on `base`, whose id is base_id), `at_once` at a time: an image starts once the one under it is
    ready. The first failure stops new builds and is raised once the running ones end."""
    pending = list(order)
    running: dict[Future[bool], Plugin] = {}
    finished: set[str] = set()
    failure: BaseException | None = None
    with ThreadPoolExecutor(at_once) as pool:
        while pending or running:
            for plugin, parent in list(pending):
                if failure is None and len(running) < at_once and (parent is None or parent.image in finished):
                    pending.remove((plugin, parent))
                    under = parent.image if parent else base
                    under_id = client.api.inspect_image(under)["Id"] if parent else base_id
                    running[pool.submit(build, client, plugin, under=under, under_id=under_id, force=force,
                                        starting=lambda plugin=plugin: starting(plugin))] = plugin
            if not running:
                break
            for future in wait(running, return_when=FIRST_COMPLETED).done:
                plugin = running.pop(future)
                if future.exception() is not None:
                    failure = failure or future.exception()
                    continue
                finished.add(plugin.image)
                done(plugin, future.result())
    if failure is not None:
        raise failure


def build(client: docker.DockerClient, plugin: Plugin, *, under: str = BASE, under_id: str, force: bool = False,
          starting: Callable[[], None] = lambda: None) -> bool:
    """Builds the plugin's image on `under` (the base, or the image of its image_from, whose id is
    under_id) unless it is current, calling starting() first; returns whether it built one. The
    build's own lines go to the debug log."""
    if not plugin.debian_packages:  # an image made elsewhere
        if exists(client, plugin.image):
            return False
        raise ImageBuildError(f"{plugin.name}: image {plugin.image} is missing and the plugin names no debian_packages")
    if not force and is_current(client, plugin, under_id):
        return False
    starting()
    labels = " ".join(f'{k}="{v}"' for k, v in wanted_labels(plugin, under_id).items())
    dockerfile = (
        f"FROM {under}\n"
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        f"{' '.join(plugin.debian_packages)} && apt-get clean && rm -rf /var/lib/apt/lists/*\n"
        + "".join(f"RUN echo {base64.b64encode(text.encode()).decode()} | base64 -d > {shlex.quote(path)}\n"
                  for path, text in plugin.image_files)
        + "".join(f"RUN {command}\n" for command in plugin.image_commands)
        + f"LABEL {labels}\n"
    )
    # The host's network, for apt only: this engine has no bridge, and sandboxes never get a network.
    stream = client.api.build(fileobj=io.BytesIO(dockerfile.encode()), tag=plugin.image, rm=True, forcerm=True,
                              network_mode="host", decode=True)
    tail: list[str] = []
    for chunk in stream:
        if "error" in chunk:
            raise ImageBuildError(f"{plugin.name}: docker build failed: {chunk['error'].strip()} / {' / '.join(tail)}")
        for line in chunk.get("stream", "").splitlines():
            if line.strip():
                tail = [*tail[-4:], line.strip()]
                log.debug("%s: %s", plugin.name, line.strip())
    return True


def _labels(client: docker.DockerClient, image: str) -> dict[str, str] | None:
    try:
        return client.api.inspect_image(image)["Config"].get("Labels") or {}
    except docker.errors.ImageNotFound:
        return None


def _debootstrap_base(client: docker.DockerClient, repository: str, tag: str, mirror: str) -> None:
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="coderund-base-") as root:
        command = ["debootstrap", "--variant=minbase", SUITE, root, mirror]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise ImageBuildError(f"debootstrap failed: {' / '.join(tail)}")
        # Package caches are dead weight in a sandbox image.
        for folder in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (Path(root) / folder).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "-C", root, "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        try:
            client.api.import_image_from_stream(tar.stdout, repository=repository, tag=tag,
                                                changes=[f"ENV PATH={PATH}", "ENV LANG=C.UTF-8"])
        finally:
            tar.stdout.close()
            if tar.wait() != 0:
                raise ImageBuildError("tar of the base's root file system failed")
