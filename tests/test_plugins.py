"""Plugin files: the shipped ones load, broken ones are refused naming file and field."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from coderund import plugins
from coderund.config import DEFAULT_PLUGINS_DIR
from coderund.domain import PLATFORM_MIN, Limits, RunReport
from coderund.errors import UnsupportedLanguage, ValidationFailed

GOOD = {
    "name": "lua", "version": "5.4", "image": "img", "source_file": "main.lua", "run": ["lua", "main.lua"],
    "limits": {"time_ms": 1000, "memory_mb": 64},
}


def test_shipped_plugins_load():
    loaded = plugins.load(DEFAULT_PLUGINS_DIR)
    assert [p.name for p in loaded.all] == ["bash", "c", "cpp", "csharp", "d", "erlang", "fortran", "go", "java",
                                            "javascript", "kotlin", "lisp", "lua", "ocaml", "octave", "pascal", "perl", "php",
                                            "python", "r", "ruby", "rust", "tcl", "typescript"]
    for alias, name in [("python3", "python"), ("GCC", "c"), ("c++", "cpp"), ("g++", "cpp"), ("js", "javascript"),
                        ("node", "javascript"), ("ts", "typescript"), ("rb", "ruby"), ("sh", "bash"), ("cs", "csharp"),
                        ("kt", "kotlin"), ("rs", "rust"), ("matlab", "octave"), ("fpc", "pascal"), ("pl", "perl"), ("f90", "fortran"),
                        ("ml", "ocaml"), ("sbcl", "lisp"), ("erl", "erlang"), ("rscript", "r"), ("gdc", "d"),
                        ("tclsh", "tcl")]:
        assert loaded.get(alias).name == name
    for plugin in loaded.all:
        assert plugin.debian_packages and plugin.image.startswith("coderund/")
    assert loaded.get("go").compile and loaded.get("python").compile is None
    with pytest.raises(UnsupportedLanguage, match="bash, c, cpp, .*, typescript"):
        loaded.get("cobol")


def test_readme_language_table_is_the_plugins():
    from coderund.cli import languages_table

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = languages_table(plugins.load(DEFAULT_PLUGINS_DIR).all)
    assert table in readme, "README's language table is stale: paste `coderund languages --markdown`"


def test_runtimes_are_sized_from_the_step_limits():
    loaded = plugins.load(DEFAULT_PLUGINS_DIR)
    java = loaded.get("java")
    assert "-Xmx128m" in java.run_command(Limits(1000, 256), ["x"]) and java.run_command(Limits(1000, 256), ["x"])[-1] == "x"
    assert "-J-Xmx512m" in java.compile_command(["Main.java"])  # half the compile limit of 1024 MB
    sized = plugins.parse({**GOOD, "env": {"HEAP": "{heap_mb}m", "ALL": "{memory_mb}"}}, "lua.toml")
    assert sized.environment(Limits(1000, 200)) == (("ALL", "200"), ("HEAP", "100m"))
    assert "--max-old-space-size=64" in loaded.get("node").run_command(Limits(1000, 128), [])


def test_runtime_memory_errors_are_memory_limit_only_when_the_program_failed():
    java = plugins.load(DEFAULT_PLUGINS_DIR).get("java")
    error = b'Exception in thread "main" java.lang.OutOfMemoryError: Java heap space\n'
    failed = RunReport(exit_code=1, signal=None, wall_ms=1, cpu_ms=1, memory_kb=1, timed_out=False, output_over=False,
                       oom=False, stdout=b"", stderr=error)
    assert java.out_of_memory(failed).oom is True
    assert java.out_of_memory(dataclasses.replace(failed, exit_code=0)).oom is False  # caught, and carried on
    assert java.out_of_memory(dataclasses.replace(failed, stderr=b"NullPointerException")).oom is False


def test_entry_conventions_are_checked_with_a_clear_message():
    loaded = plugins.load(DEFAULT_PLUGINS_DIR)
    loaded.get("java").check_code("public class Main { public static void main(String[] a) {} }")
    with pytest.raises(ValidationFailed, match="public class Main"):
        loaded.get("java").check_code("public class Solution { public static void main(String[] a) {} }")
    with pytest.raises(ValidationFailed, match="fun main"):
        loaded.get("kotlin").check_code("fun notMain() {}")
    loaded.get("python").check_code("anything")
    with pytest.raises(plugins.PluginError, match="'requires.pattern'"):
        plugins.parse({**GOOD, "requires": {"pattern": "(", "message": "m"}}, "lua.toml")
    with pytest.raises(plugins.PluginError, match="'requires'"):
        plugins.parse({**GOOD, "requires": {"pattern": "x"}}, "lua.toml")


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
        ({"memory_errors": "OutOfMemory"}, "memory_errors"),
        ({"image_files": {"etc/relative": "x"}}, "image_files"),
        ({"image_files": {"/etc/../x": "x"}}, "image_files"),
        ({"image_commands": "true"}, "image_commands"),
        ({"image_commands": [""]}, "image_commands"),
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
