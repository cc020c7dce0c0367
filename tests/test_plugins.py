"""Plugin files: the shipped ones load, broken ones are refused naming file and field."""
from __future__ import annotations

import pytest

from coderund import plugins
from coderund.config import DEFAULT_PLUGINS_DIR
from coderund.domain import PLATFORM_MIN
from coderund.errors import UnsupportedLanguage

GOOD = {
    "name": "lua", "version": "5.4", "image": "img", "source_file": "main.lua", "run": ["lua", "main.lua"],
    "limits": {"time_ms": 1000, "memory_mb": 64},
}


def test_shipped_plugins_load():
    loaded = plugins.load(DEFAULT_PLUGINS_DIR)
    assert [p.name for p in loaded.all] == ["c", "go", "python"]
    assert loaded.get("python3").name == "python" and loaded.get("GCC").name == "c"
    for plugin in loaded.all:
        assert plugin.debian_packages and plugin.image.startswith("coderund/")
    assert loaded.get("go").compile and loaded.get("python").compile is None
    with pytest.raises(UnsupportedLanguage, match="c, go, python"):
        loaded.get("cobol")


def test_max_defaults_to_the_limits_and_compile_limits_to_the_global_default():
    plugin = plugins.parse(GOOD, "lua.toml")
    assert plugin.max_limits == plugin.limits and plugin.min_limits == PLATFORM_MIN
    assert plugin.compile_limits == plugins.DEFAULT_COMPILE_LIMITS


@pytest.mark.parametrize(
    "change, field",
    [
        ({"colour": "red"}, "colour"),
        ({"run": "lua main.lua"}, "run"),
        ({"run": []}, "run"),
        ({"image": ""}, "image"),
        ({"source_file": "../x"}, "source_file"),
        ({"limits": {"time_ms": 1000}}, "limits.memory_mb"),
        ({"limits": {"time_ms": 1000, "memory_mb": 64, "cpu": 2}}, "limits.cpu"),
        ({"limits": {"time_ms": 1000, "memory_mb": 64, "max": {"time_ms": 10}}}, "limits.time_ms"),
        ({"limits": {"time_ms": 1000, "memory_mb": 64, "min": {"memory_mb": 4}}}, "limits.min.memory_mb"),
        ({"limits": {"time_ms": 1000, "memory_mb": 64, "min": {"time_ms": 2000}}}, "limits.min.time_ms"),
        ({"env": {"A": 1}}, "env"),
    ],
)
def test_broken_plugins_name_the_field(change, field):
    with pytest.raises(plugins.PluginError) as error:
        plugins.parse({**GOOD, **change}, "lua.toml")
    assert "lua.toml" in str(error.value) and f"'{field}'" in str(error.value)


def test_missing_field_and_clashing_names(tmp_path):
    data = dict(GOOD)
    del data["image"]
    with pytest.raises(plugins.PluginError, match="'image' is required"):
        plugins.parse(data, "x.toml")
    with pytest.raises(plugins.PluginError, match="claimed by both"):
        plugins.Plugins([plugins.parse(GOOD, "a"), plugins.parse({**GOOD, "name": "lua2", "aliases": ["lua"]}, "b")])
    (tmp_path / "bad.toml").write_text("name = [")
    with pytest.raises(plugins.PluginError, match="bad.toml"):
        plugins.load(tmp_path)
