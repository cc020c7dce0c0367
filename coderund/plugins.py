"""Language plugins: one TOML file each in the plugins folder, checked once at load."""
from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .domain import PLATFORM_MIN, Limits, Program, RunReport, TaskRequest, resolve_limits
from .errors import UnsupportedLanguage, ValidationFailed

REQUIRED = {"name", "version", "image", "source_file", "run", "limits"}
OPTIONAL = {"aliases", "extensions", "debian_packages", "image_from", "image_files", "image_commands", "compile",
            "compile_limits", "env", "requires", "memory_errors", "error_messages", "takes_args", "rewrites", "example"}
DEFAULT_COMPILE_LIMITS = Limits(time_ms=30000, memory_mb=1024)
EXTENSION = re.compile(r"\.[a-z0-9_+#-]+")  # lower case: a file's extension is matched case-insensitively
SOURCES = "{sources}"  # in a compile command: the submitted source files
# In commands and env: the step's memory limit, and the share of it a runtime's heap may take (the
# rest is the runtime's own: code, metaspace, stacks), so a program that outgrows its heap gets the
# runtime's out-of-memory error rather than the kernel's kill.
MEMORY_MB, HEAP_MB, HEAP_KB = "{memory_mb}", "{heap_mb}", "{heap_kb}"


class PluginError(Exception):
    """A plugin file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Plugin:
    name: str
    version: str
    image: str
    source_file: str
    run: tuple[str, ...]
    limits: Limits
    max_limits: Limits
    min_limits: Limits = PLATFORM_MIN
    compile: tuple[str, ...] | None = None
    compile_limits: Limits = DEFAULT_COMPILE_LIMITS
    aliases: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()  # a file with one of these is this language's (`coderund run FILE`)
    debian_packages: tuple[str, ...] = ()
    image_from: str | None = None  # the plugin whose image this one's is built on (a shared layer); None: the base
    image_files: tuple[tuple[str, str], ...] = ()  # (absolute path, content) written into the image after its packages
    image_commands: tuple[str, ...] = ()  # shell commands run in the image after its files (as root, at build)
    env: tuple[tuple[str, str], ...] = ()
    requires: tuple[str, str] | None = None  # (pattern the code must match, what to tell a user whose code does not)
    memory_errors: tuple[bytes, ...] = ()  # in stderr: the runtime ran out of the memory it was given
    error_messages: tuple[bytes, ...] = ()  # in stderr of a run that exited 0: the runtime reported a failure
    takes_args: bool = True  # False: the language has no command line (SQL), and a task's args are refused
    # (pattern, replacement) applied to submitted code, whatever API sent it: code written for other
    # judges' set-ups that this image's would refuse (a declaration of what is already in scope)
    rewrites: tuple[tuple[re.Pattern[str], str], ...] = ()
    example: str = ""  # a program that reads a name from stdin and greets it: "Hello, NAME!" (the playground's start)

    def compile_command(self, names: list[str]) -> tuple[str, ...]:
        """The compile command, its {sources} replaced by the entry file and every other submitted file
        with the entry file's extension (so a C program's headers stay out, its other .c files go in)."""
        assert self.compile is not None
        suffix = PurePosixPath(self.source_file).suffix
        others = sorted(n for n in names if n != self.source_file and suffix and PurePosixPath(n).suffix == suffix)
        return tuple(part for item in self.compile
                     for part in ([self.source_file, *others] if item == SOURCES else [_sized(item, self.compile_limits)]))

    def run_command(self, limits: Limits, args: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        return (*(_sized(item, limits) for item in self.run), *args)

    def environment(self, limits: Limits) -> tuple[tuple[str, str], ...]:
        return tuple((name, _sized(value, limits)) for name, value in self.env)

    def read_errors(self, report: RunReport) -> RunReport:
        """The report, marked as out of memory if the program failed with its runtime's memory error,
        or as failed if it exited 0 after one of its runtime's error messages."""
        if (report.exit_code or report.signal) and any(error in report.stderr for error in self.memory_errors):
            return dataclasses.replace(report, oom=True)
        if not (report.exit_code or report.signal) and any(error in report.stderr for error in self.error_messages):
            return dataclasses.replace(report, error_reported=True)
        return report

    def check_code(self, code: str) -> None:
        """Refuses code that cannot fit the language's entry convention (e.g. Java's class Main)."""
        if self.requires and not re.search(self.requires[0], code):
            raise ValidationFailed(self.requires[1])

    def prepared(self, code: str) -> str:
        for pattern, replacement in self.rewrites:
            code = pattern.sub(replacement, code)
        return code

    def check_args(self, args: tuple[str, ...], where: str = "args") -> None:
        if args and not self.takes_args:
            raise ValidationFailed(f"{self.name} programs have no command line: '{where}' must be empty.")

    def image_recipe(self) -> tuple[object, ...]:
        """What the image is made of: plugins that share an image must agree on it."""
        return self.image_from, self.debian_packages, self.image_files, self.image_commands

    def adapted(self, program: Program | None) -> Plugin:
        """The plugin with a request's own commands (its image, limits and memory errors stay); its
        entry-file convention is then the program's."""
        if program is None:
            return self
        return dataclasses.replace(self, source_file=program.source_file, run=program.run, compile=program.compile,
                                   requires=None)

    def resolve_limits(self, requested: dict[str, int]) -> Limits:
        return resolve_limits(self.limits, self.min_limits, self.max_limits, requested)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "aliases": list(self.aliases),
            "extensions": list(self.extensions),
            "compiled": self.compile is not None,
            "takes_args": self.takes_args,
            "entry_file": self.source_file,
            "limits": vars(self.limits),
            "min_limits": vars(self.min_limits),
            "max_limits": vars(self.max_limits),
            **({"compile_limits": vars(self.compile_limits)} if self.compile else {}),
            "example": self.example,
        }


class Plugins:
    """The loaded languages, found by name or alias."""

    def __init__(self, plugins: list[Plugin]) -> None:
        self.all = sorted(plugins, key=lambda p: p.name)
        self._by_name: dict[str, Plugin] = {}
        for plugin in self.all:
            for key in (plugin.name, *plugin.aliases):
                if key in self._by_name:
                    raise PluginError(f"language name {key!r} is claimed by both {self._by_name[key].name} and {plugin.name}")
                self._by_name[key] = plugin
        self._check_images()

    def _check_images(self) -> None:
        """Plugins that build one image agree on how; one that builds none (no debian_packages) may use
        another's. Each image has one builder: the first plugin that builds it, else the first that names it."""
        self._builders: dict[str, Plugin] = {}
        for plugin in sorted(self.all, key=lambda p: not p.debian_packages):
            first = self._builders.setdefault(plugin.image, plugin)
            if plugin.debian_packages and first.image_recipe() != plugin.image_recipe():
                raise PluginError(f"{first.name} and {plugin.name} share the image {plugin.image} but not its packages, "
                                  "files, commands or image_from")
            seen = [plugin.name]
            while (parent := self._image_parent(plugin)) is not None:
                if parent.name in seen:
                    raise PluginError(f"image_from makes a cycle: {' -> '.join([*seen, parent.name])}")
                seen.append(parent.name)
                plugin = parent

    def _image_parent(self, plugin: Plugin) -> Plugin | None:
        if plugin.image_from is None:
            return None
        parent = self._by_name.get(plugin.image_from)
        if parent is None or parent.name != plugin.image_from:
            raise PluginError(f"{plugin.name}: image_from {plugin.image_from!r} is not a plugin's name")
        if not parent.debian_packages:
            raise PluginError(f"{plugin.name}: image_from {parent.name!r} names a plugin whose image is made elsewhere")
        return parent

    def image_order(self, chosen: list[Plugin] | None = None) -> list[tuple[Plugin, Plugin | None]]:
        """(plugin, the plugin its image is built on), one per image, every image after the one it is
        built on; the parents of the chosen plugins come along."""
        order: list[tuple[Plugin, Plugin | None]] = []
        done: set[str] = set()

        def visit(plugin: Plugin) -> None:
            if plugin.image in done:
                return
            plugin = self._builders[plugin.image]
            parent = self._image_parent(plugin)
            if parent is not None:
                visit(parent)
            done.add(plugin.image)
            order.append((plugin, parent))

        for plugin in self.all if chosen is None else chosen:
            visit(plugin)
        return order

    def has(self, language: str) -> bool:
        return language.lower() in self._by_name

    def get(self, language: str) -> Plugin:
        try:
            return self._by_name[language.lower()]
        except KeyError:
            names = ", ".join(p.name for p in self.all)
            raise UnsupportedLanguage(f"Language {language!r} is not supported; use one of: {names}.") from None

    def for_request(self, request: TaskRequest) -> tuple[Plugin, Limits]:
        plugin = self.get(request.language)
        entry = plugin.adapted(request.program)
        if any(name == entry.source_file or name.startswith(entry.source_file + "/") for name, _ in request.files):
            raise ValidationFailed(f"'files' holds {entry.source_file!r}, the entry file of {plugin.name}: send it as 'code'.")
        entry.check_code(request.code)
        plugin.check_args(request.args)
        for number, case in enumerate(request.tests):
            plugin.check_args(case.args, f"tests[{number}].args")
        return plugin, plugin.resolve_limits(request.limits)


def load(folder: str | Path) -> Plugins:
    files = sorted(Path(folder).glob("*.toml"))
    if not files:
        raise PluginError(f"{folder}: no *.toml language plugins found")
    return Plugins([load_file(path) for path in files])


def load_file(path: Path) -> Plugin:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PluginError(f"{path}: {e}") from None
    return parse(data, str(path))


def parse(data: dict[str, Any], where: str) -> Plugin:
    def fail(field: str, why: str) -> PluginError:
        return PluginError(f"{where}: '{field}' {why}")

    unknown = set(data) - REQUIRED - OPTIONAL
    if unknown:
        raise fail(sorted(unknown)[0], "is not a plugin field")
    missing = REQUIRED - set(data)
    if missing:
        raise fail(sorted(missing)[0], "is required")
    for name in ("name", "version", "image", "source_file"):
        if not isinstance(data[name], str) or not data[name]:
            raise fail(name, "must be a non-empty string")
    if "/" in data["source_file"] or data["source_file"].startswith("."):
        raise fail("source_file", "must be a plain file name")
    for name in ("run", "compile", "aliases", "extensions", "debian_packages", "memory_errors", "error_messages", "image_commands"):
        value = data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise fail(name, "must be a list of non-empty strings")
    if not data["run"]:
        raise fail("run", "must name a command")
    if not isinstance(data.get("image_from", "-"), str) or not data.get("image_from", "-"):
        raise fail("image_from", "must be a plugin's name")
    # By default a language's files are its entry file's kind; a variant that shares its entry file with
    # another language (pypy3's main.py) says `extensions = []`, so that files of that kind stay the other's.
    entry_suffix = PurePosixPath(data["source_file"]).suffix
    extensions = [e.lower() for e in data.get("extensions", [entry_suffix] if entry_suffix else [])]
    if not all(EXTENSION.fullmatch(e) for e in extensions):
        raise fail("extensions", "must be a list of file extensions such as \".cc\"")
    if not isinstance(data.get("takes_args", True), bool):
        raise fail("takes_args", "must be true or false")
    if not isinstance(data.get("example", "-"), str) or not data.get("example", "-").strip():
        raise fail("example", "must be a program: a non-empty string")
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise fail("env", "must be a table of strings")
    image_files = data.get("image_files", {})
    if not isinstance(image_files, dict) or not all(
            isinstance(v, str) and k.startswith("/") and ".." not in k.split("/") for k, v in image_files.items()):
        raise fail("image_files", "must be a table of absolute paths to their contents")

    limits_table = data["limits"]
    if not isinstance(limits_table, dict):
        raise fail("limits", "must be a table")
    limits = _limits(limits_table, "limits", fail, extra={"max", "min"})
    max_limits = _limits(limits_table.get("max", {}), "limits.max", fail, fallback=limits)
    min_limits = _limits(limits_table.get("min", {}), "limits.min", fail, fallback=PLATFORM_MIN)
    for name in Limits.FIELDS:
        if getattr(limits, name) > getattr(max_limits, name):
            raise fail(f"limits.{name}", "is above limits.max")
        if not getattr(PLATFORM_MIN, name) <= getattr(min_limits, name) <= getattr(limits, name):
            raise fail(f"limits.min.{name}", f"must be from {getattr(PLATFORM_MIN, name)} to limits.{name}")
    compile_limits = _limits(data.get("compile_limits", {}), "compile_limits", fail, fallback=DEFAULT_COMPILE_LIMITS)
    requires = data.get("requires")
    if requires is not None:
        if not isinstance(requires, dict) or set(requires) != {"pattern", "message"} or not all(
                isinstance(v, str) and v for v in requires.values()):
            raise fail("requires", "must be a table of a non-empty pattern and message")
        try:
            re.compile(requires["pattern"])
        except re.error as e:
            raise fail("requires.pattern", f"is not a regular expression: {e}") from None
    rewrites = []
    for i, rewrite in enumerate(data.get("rewrites", [])):
        if not isinstance(rewrite, dict) or set(rewrite) != {"pattern", "replace"} or not all(
                isinstance(v, str) for v in rewrite.values()):
            raise fail(f"rewrites[{i}]", "must be a table of a pattern and its replacement (replace)")
        try:
            rewrites.append((re.compile(rewrite["pattern"], re.M), rewrite["replace"]))
        except re.error as e:
            raise fail(f"rewrites[{i}].pattern", f"is not a regular expression: {e}") from None
    return Plugin(
        name=data["name"].lower(),
        version=data["version"],
        image=data["image"],
        source_file=data["source_file"],
        run=tuple(data["run"]),
        compile=tuple(data["compile"]) if data.get("compile") else None,
        limits=limits,
        max_limits=max_limits,
        min_limits=min_limits,
        compile_limits=compile_limits,
        aliases=tuple(a.lower() for a in data.get("aliases", [])),
        extensions=tuple(extensions),
        debian_packages=tuple(data.get("debian_packages", [])),
        image_from=data["image_from"].lower() if "image_from" in data else None,
        image_files=tuple(sorted(image_files.items())),
        image_commands=tuple(data.get("image_commands", [])),
        env=tuple(sorted(env.items())),
        requires=(requires["pattern"], requires["message"]) if requires else None,
        memory_errors=tuple(m.encode() for m in data.get("memory_errors", [])),
        error_messages=tuple(m.encode() for m in data.get("error_messages", [])),
        takes_args=data.get("takes_args", True),
        rewrites=tuple(rewrites),
        example=data.get("example", ""),
    )


def _sized(item: str, limits: Limits) -> str:
    heap_mb = limits.memory_mb // 2
    return item.replace(MEMORY_MB, str(limits.memory_mb)).replace(HEAP_MB, str(heap_mb)).replace(HEAP_KB, str(heap_mb * 1024))


def _limits(table: Any, where: str, fail: Any, *, extra: set[str] = frozenset(), fallback: Limits | None = None) -> Limits:
    if not isinstance(table, dict):
        raise fail(where, "must be a table")
    unknown = set(table) - set(Limits.FIELDS) - extra
    if unknown:
        raise fail(f"{where}.{sorted(unknown)[0]}", "is not a limit")
    values = {}
    for name in Limits.FIELDS:
        value = table.get(name, getattr(fallback, name) if fallback else None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise fail(f"{where}.{name}", "must be a positive integer")
        values[name] = value
    return Limits(**values)
