"""Plugin files: the shipped ones load, broken ones are refused naming file and field."""
from __future__ import annotations

import dataclasses
import re

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
    assert [p.name for p in loaded.all] == [
        "assembly", "bash", "c", "c-clang", "clojure", "cobol", "cpp", "cpp-clang", "csharp", "d", "elixir", "erlang",
        "fortran", "go", "groovy", "haskell", "java", "javascript", "kotlin", "lisp", "lua", "nim", "objective-c", "ocaml",
        "octave", "pascal", "perl", "php", "prolog", "pypy3", "python", "r", "racket", "ruby", "rust", "scala", "scheme",
        "sql", "tcl", "typescript"]
    for alias, name in [("python3", "python"), ("GCC", "c"), ("c++", "cpp"), ("g++", "cpp"), ("js", "javascript"),
                        ("node", "javascript"), ("ts", "typescript"), ("rb", "ruby"), ("sh", "bash"), ("cs", "csharp"),
                        ("kt", "kotlin"), ("rs", "rust"), ("matlab", "octave"), ("fpc", "pascal"), ("pl", "perl"), ("f90", "fortran"),
                        ("ml", "ocaml"), ("sbcl", "lisp"), ("erl", "erlang"), ("rscript", "r"), ("gdc", "d"),
                        ("tclsh", "tcl"), ("hs", "haskell"), ("lisp", "lisp"), ("asm", "assembly"), ("objc", "objective-c"),
                        ("clj", "clojure"), ("ex", "elixir"), ("rkt", "racket"), ("clang", "c-clang"), ("clang++", "cpp-clang"),
                        ("cob", "cobol"), ("guile", "scheme"), ("sqlite", "sql"), ("pypy", "pypy3"), ("gprolog", "prolog")]:
        assert loaded.get(alias).name == name
    for plugin in loaded.all:
        assert plugin.debian_packages and plugin.image.startswith("coderund/")
    assert loaded.get("go").compile and loaded.get("python").compile is None
    with pytest.raises(UnsupportedLanguage, match="assembly, bash, c, .*, typescript"):
        loaded.get("brainfuck")


def test_image_families_are_built_parent_first_and_checked_at_load():
    loaded = plugins.load(DEFAULT_PLUGINS_DIR)
    order = loaded.image_order()
    images = [plugin.image for plugin, _ in order]
    assert len(images) == len(set(images)) == len({p.image for p in loaded.all})  # c-clang and cpp-clang: one image
    for position, (plugin, parent) in enumerate(order):
        assert parent is None or images.index(parent.image) < position, plugin.name
    parents = {plugin.name: parent.name for plugin, parent in order if parent}
    assert {parents[name] for name in ("cpp", "fortran", "d", "objective-c", "cobol")} == {"c"}
    assert {parents[name] for name in ("kotlin", "scala", "clojure", "groovy")} == {"java"}
    assert [plugin.name for plugin, _ in loaded.image_order([loaded.get("scala")])] == ["java", "scala"]

    base = plugins.parse({**GOOD, "debian_packages": ["lua5.4"]}, "lua.toml")
    child = plugins.parse({**GOOD, "name": "child", "image": "child", "image_from": "lua", "debian_packages": ["x"]}, "child.toml")
    assert plugins.Plugins([base, child]).image_order() == [(base, None), (child, base)]
    with pytest.raises(plugins.PluginError, match="child: image_from 'nothing' is not a plugin's name"):
        plugins.Plugins([base, dataclasses.replace(child, image_from="nothing")])
    with pytest.raises(plugins.PluginError, match="image_from makes a cycle"):
        plugins.Plugins([dataclasses.replace(base, image_from="child"), child])
    with pytest.raises(plugins.PluginError, match="share the image img but not its packages"):
        plugins.Plugins([base, dataclasses.replace(child, name="twin", image="img")])
    # One that builds no image may use another's, which its builder makes.
    user = dataclasses.replace(base, name="awk", debian_packages=())
    assert plugins.Plugins([base, user]).image_order([user]) == [(base, None)]
    with pytest.raises(plugins.PluginError, match="'image_from' must be a plugin's name"):
        plugins.parse({**GOOD, "image_from": ""}, "lua.toml")


def test_a_language_without_a_command_line_refuses_args():
    from coderund.domain import parse_task_request

    sql = plugins.load(DEFAULT_PLUGINS_DIR).get("sql")
    assert not sql.takes_args and sql.describe()["takes_args"] is False
    loaded = plugins.Plugins([sql])
    loaded.for_request(parse_task_request({"language": "sql", "code": "SELECT 1;"}))
    for body, where in [({"args": ["a"]}, "'args'"), ({"tests": [{"args": ["a"], "expected": ""}]}, "'tests[0].args'")]:
        with pytest.raises(ValidationFailed, match=f"sql programs have no command line: {re.escape(where)} must be empty"):
            loaded.for_request(parse_task_request({"language": "sql", "code": "SELECT 1;", **body}))
    with pytest.raises(plugins.PluginError, match="'takes_args' must be true or false"):
        plugins.parse({**GOOD, "takes_args": "no"}, "lua.toml")


def test_a_language_names_the_extensions_of_its_files():
    assert plugins.parse(GOOD, "lua.toml").extensions == (".lua",)  # its entry file's, by default
    assert plugins.parse({**GOOD, "source_file": "Main.LUA"}, "lua.toml").describe()["extensions"] == [".lua"]
    assert plugins.parse({**GOOD, "extensions": [".Lua", ".luac"]}, "lua.toml").extensions == (".lua", ".luac")
    assert plugins.parse({**GOOD, "extensions": []}, "lua.toml").extensions == ()  # a variant leaves them to another
    for bad in ([".a b"], ["lua"], [".lu/a"], [""], ".lua", [1]):
        with pytest.raises(plugins.PluginError, match="lua.toml: 'extensions' must be a list of"):
            plugins.parse({**GOOD, "extensions": bad}, "lua.toml")
    with pytest.raises(plugins.PluginError, match="'extension' is not a plugin field"):
        plugins.parse({**GOOD, "extension": [".lua"]}, "lua.toml")
    loaded = plugins.load(DEFAULT_PLUGINS_DIR)
    assert {".cpp", ".cc", ".cxx"} <= set(loaded.get("cpp").extensions) and loaded.get("cpp-clang").extensions == ()
    assert loaded.get("pypy3").extensions == () and loaded.get("python").extensions == (".py",)


def test_runtimes_are_sized_from_the_step_limits():
    loaded = plugins.load(DEFAULT_PLUGINS_DIR)
    java = loaded.get("java")
    assert "-Xmx128m" in java.run_command(Limits(1000, 256), ["x"]) and java.run_command(Limits(1000, 256), ["x"])[-1] == "x"
    assert "-J-Xmx512m" in java.compile_command(["Main.java"])  # half the compile limit of 1024 MB
    sized = plugins.parse({**GOOD, "env": {"HEAP": "{heap_mb}m", "ALL": "{memory_mb}"}}, "lua.toml")
    assert sized.environment(Limits(1000, 200)) == (("ALL", "200"), ("HEAP", "100m"))
    assert plugins.parse({**GOOD, "env": {"KB": "{heap_kb}"}}, "lua.toml").environment(Limits(1000, 200)) == (("KB", "102400"),)
    assert "--max-old-space-size=64" in loaded.get("node").run_command(Limits(1000, 128), [])


def test_runtime_memory_errors_are_memory_limit_only_when_the_program_failed():
    java = plugins.load(DEFAULT_PLUGINS_DIR).get("java")
    error = b'Exception in thread "main" java.lang.OutOfMemoryError: Java heap space\n'
    failed = RunReport(exit_code=1, signal=None, wall_ms=1, cpu_ms=1, memory_kb=1, timed_out=False, output_over=False,
                       oom=False, stdout=b"", stderr=error)
    assert java.read_errors(failed).oom is True
    assert java.read_errors(dataclasses.replace(failed, exit_code=0)).oom is False  # caught, and carried on
    assert java.read_errors(dataclasses.replace(failed, stderr=b"NullPointerException")).oom is False


def test_a_failure_the_runtime_reports_with_exit_status_0_is_a_runtime_error():
    from coderund.domain import Verdict, classify

    prolog = plugins.load(DEFAULT_PLUGINS_DIR).get("prolog")
    ran = RunReport(exit_code=0, signal=None, wall_ms=1, cpu_ms=1, memory_kb=1, timed_out=False, output_over=False,
                    oom=False, stdout=b"", stderr=b"warning: /box/main.pro:1: user directive failed\n")
    assert classify(prolog.read_errors(ran), 256) is Verdict.RUNTIME_ERROR
    assert classify(prolog.read_errors(dataclasses.replace(ran, stderr=b"")), 256) is Verdict.OK
    assert classify(plugins.load(DEFAULT_PLUGINS_DIR).get("c").read_errors(ran), 256) is Verdict.OK  # prolog's words only


def test_entry_conventions_are_checked_with_a_clear_message():
    loaded = plugins.load(DEFAULT_PLUGINS_DIR)
    loaded.get("java").check_code("public class Main { public static void main(String[] a) {} }")
    with pytest.raises(ValidationFailed, match="public class Main"):
        loaded.get("java").check_code("public class Solution { public static void main(String[] a) {} }")
    with pytest.raises(ValidationFailed, match="fun main"):
        loaded.get("kotlin").check_code("fun notMain() {}")
    loaded.get("python").check_code("anything")
    for language, fits, does_not, says in [
            ("scala", "object Main extends App { println(1) }", "@main def run(): Unit = println(1)", "object Main"),
            ("cobol", "identification division.\nprogram-id. ok-test.", "DISPLAY 'x'.", "PROGRAM-ID."),
            ("prolog", ":- initialization(main).\nmain :- write(x).", ":- write('OK'), nl.", ":- initialization(main)."),
            ("assembly", "global _start\n_start:\n", "main: ret", "global _start"),
            ("racket", "; a comment\n#lang racket\n(display 1)", "(display 1)", "#lang racket")]:
        loaded.get(language).check_code(fits)
        with pytest.raises(ValidationFailed, match=re.escape(says)):
            loaded.get(language).check_code(does_not)
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
        ({"example": ""}, "example"),
        ({"example": ["print(1)"]}, "example"),
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
