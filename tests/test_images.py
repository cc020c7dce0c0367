"""`coderund images build`: a language image is a layer on the shared base, skipped while current,
rebuilt when its plugin's packages change."""
from __future__ import annotations

import dataclasses

import docker

from coderund import plugins
from coderund.config import DEFAULT_PLUGINS_DIR
from coderund.sandbox import images


def test_an_image_is_rebuilt_when_its_packages_change(settings):
    client = docker.from_env()
    base_id, _ = images.build_base(client, mirror=settings.debian_mirror)  # made by scripts/test-env
    bash = plugins.load(DEFAULT_PLUGINS_DIR).get("bash")
    plugin = dataclasses.replace(bash, name="rebuilt", image="coderund/test-rebuilt:bookworm")
    try:
        assert images.build(client, plugin, base_id=base_id) is True
        assert images.build(client, plugin, base_id=base_id) is False  # current: nothing to do
        labels = client.api.inspect_image(plugin.image)["Config"]["Labels"]
        assert labels["coderund.base"] == base_id and labels["coderund.language"] == "rebuilt"
        # The image is the base plus one layer: the base's layers are shared, not copied.
        base_layers = client.api.inspect_image(images.BASE)["RootFS"]["Layers"]
        assert client.api.inspect_image(plugin.image)["RootFS"]["Layers"][: len(base_layers)] == base_layers
        changed = dataclasses.replace(plugin, debian_packages=(*plugin.debian_packages, "mawk"))
        assert not images.is_current(client, changed, base_id)
        assert images.build(client, changed, base_id=base_id) is True
        assert images.is_current(client, changed, base_id) and not images.is_current(client, plugin, base_id)
        with_file = dataclasses.replace(changed, image_files=(("/etc/coderund-test", "one\ntwo 'quoted' $HOME\n"),))
        assert not images.is_current(client, with_file, base_id)
        assert images.build(client, with_file, base_id=base_id) is True
        assert client.containers.run(with_file.image, ["cat", "/etc/coderund-test"], remove=True,
                                     network_mode="none") == b"one\ntwo 'quoted' $HOME\n"
        with_command = dataclasses.replace(with_file, image_commands=("cp /etc/coderund-test /etc/coderund-copy",))
        assert not images.is_current(client, with_command, base_id)
        assert images.build(client, with_command, base_id=base_id) is True
        assert client.containers.run(with_command.image, ["cat", "/etc/coderund-copy"], remove=True,
                                     network_mode="none") == b"one\ntwo 'quoted' $HOME\n"
    finally:
        client.images.remove(plugin.image, force=True)
