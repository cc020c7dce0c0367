"""`coderund images build`: a language image is a layer on the shared base or on another language's
image, skipped while current, rebuilt when its plugin's packages or the image under it change."""
from __future__ import annotations

import dataclasses

import docker
import pytest

from coderund import plugins
from coderund.config import DEFAULT_PLUGINS_DIR
from coderund.sandbox import images


def test_an_image_is_rebuilt_when_its_packages_change(settings):
    client = docker.from_env()
    base_id, _ = images.build_base(client, mirror=settings.debian_mirror)  # made by scripts/test-env
    bash = plugins.load(DEFAULT_PLUGINS_DIR).get("bash")
    plugin = dataclasses.replace(bash, name="rebuilt", image="coderund/test-rebuilt:bookworm")
    try:
        assert images.build(client, plugin, under_id=base_id) is True
        assert images.build(client, plugin, under_id=base_id) is False  # current: nothing to do
        labels = client.api.inspect_image(plugin.image)["Config"]["Labels"]
        assert labels["coderund.base"] == base_id and labels["coderund.language"] == "rebuilt"
        # The image is the base plus one layer: the base's layers are shared, not copied.
        base_layers = client.api.inspect_image(images.BASE)["RootFS"]["Layers"]
        assert client.api.inspect_image(plugin.image)["RootFS"]["Layers"][: len(base_layers)] == base_layers
        changed = dataclasses.replace(plugin, debian_packages=(*plugin.debian_packages, "mawk"))
        assert not images.is_current(client, changed, base_id)
        assert images.build(client, changed, under_id=base_id) is True
        assert images.is_current(client, changed, base_id) and not images.is_current(client, plugin, base_id)
        with_file = dataclasses.replace(changed, image_files=(("/etc/coderund-test", "one\ntwo 'quoted' $HOME\n"),))
        assert not images.is_current(client, with_file, base_id)
        assert images.build(client, with_file, under_id=base_id) is True
        assert client.containers.run(with_file.image, ["cat", "/etc/coderund-test"], remove=True,
                                     network_mode="none") == b"one\ntwo 'quoted' $HOME\n"
        with_command = dataclasses.replace(with_file, image_commands=("cp /etc/coderund-test /etc/coderund-copy",))
        assert not images.is_current(client, with_command, base_id)
        assert images.build(client, with_command, under_id=base_id) is True
        assert client.containers.run(with_command.image, ["cat", "/etc/coderund-copy"], remove=True,
                                     network_mode="none") == b"one\ntwo 'quoted' $HOME\n"
    finally:
        client.images.remove(plugin.image, force=True)


def test_a_family_of_images_shares_its_parent_and_is_built_parent_first(settings):
    client = docker.from_env()
    base_id, _ = images.build_base(client, mirror=settings.debian_mirror)
    bash = plugins.load(DEFAULT_PLUGINS_DIR).get("bash")
    parent = dataclasses.replace(bash, name="parent", aliases=(), image="coderund/test-parent:bookworm",
                                 image_files=(("/etc/coderund-parent", "parent\n"),))
    child = dataclasses.replace(bash, name="child", aliases=(), image="coderund/test-child:bookworm", image_from="parent",
                                image_files=(("/etc/coderund-child", "child\n"),))
    family = plugins.Plugins([parent, child])
    seen: list[tuple[str, bool]] = []
    try:
        images.build_all(client, family.image_order([child]), base_id=base_id, done=lambda p, built: seen.append((p.name, built)))
        assert seen == [("parent", True), ("child", True)]
        parent_image = client.api.inspect_image(parent.image)
        child_image = client.api.inspect_image(child.image)
        assert child_image["Config"]["Labels"]["coderund.base"] == parent_image["Id"]
        assert child_image["RootFS"]["Layers"][: len(parent_image["RootFS"]["Layers"])] == parent_image["RootFS"]["Layers"]
        assert client.containers.run(child.image, ["cat", "/etc/coderund-parent", "/etc/coderund-child"], remove=True,
                                     network_mode="none") == b"parent\nchild\n"
        seen.clear()
        images.build_all(client, family.image_order(), base_id=base_id, done=lambda p, built: seen.append((p.name, built)))
        assert seen == [("parent", False), ("child", False)]  # both current
        # A changed parent is rebuilt, and so is every image on it.
        changed = plugins.Plugins([dataclasses.replace(parent, image_files=(("/etc/coderund-parent", "changed\n"),)), child])
        seen.clear()
        images.build_all(client, changed.image_order(), base_id=base_id, done=lambda p, built: seen.append((p.name, built)))
        assert seen == [("parent", True), ("child", True)]
        assert client.containers.run(child.image, ["cat", "/etc/coderund-parent"], remove=True,
                                     network_mode="none") == b"changed\n"
        # A failed build is raised, and nothing is built on it.
        broken = plugins.Plugins([dataclasses.replace(parent, debian_packages=("no-such-package-coderund",)), child])
        seen.clear()
        with pytest.raises(images.ImageBuildError, match="parent: docker build failed"):
            images.build_all(client, broken.image_order(), base_id=base_id, done=lambda p, built: seen.append((p.name, built)))
        assert seen == []
    finally:
        for image in (child.image, parent.image):
            client.images.remove(image, force=True)


def test_base_only_builds_the_base_of_the_image_source_and_names_no_language():
    from coderund.cli import main

    assert images.base_of("debootstrap") == images.BASE and images.base_of("registry") == images.REGISTRY_BASE
    assert main(["images", "build", "--base-only"]) == 0  # made by scripts/test-env: nothing to do
    assert main(["images", "build", "--base-only", "bash"]) == 2
