"""The documentation's generated parts: tables and counts taken from the code, so that they cannot drift.

A part sits between `<!-- gen:NAME -->` and `<!-- /gen:NAME -->` in README.md or a page of docs/, on one
line (a number in a sentence) or around lines of its own (a table). `python -m coderund.docs_tables`
writes every part anew; `--check` changes nothing and names the stale ones (the test suite runs it).
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path

from . import config
from . import plugins as plugin_loader
from .compat import judge0
from .domain import Limits

ROOT = config.PACKAGE_DIR.parent
PART = re.compile(r"<!-- gen:(?P<name>[a-z0-9-]+) -->(?P<body>.*?)<!-- /gen:(?P=name) -->", re.S)
JUDGE0_IDS = range(43, 90)  # Judge0 CE 1.13.1's language ids, 43 (Plain Text) to 89 (Multi-file program)


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def languages_table(plugins: list[plugin_loader.Plugin]) -> str:
    def limits(given: Limits) -> str:
        return f"{given.time_ms / 1000:g} s, {given.memory_mb} MB"

    lines = ["| language | version | aliases | file extensions | entry file | compiled (compile limits) | default limits"
             " | maximum | image on |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in plugins:
        compiled = f"yes ({limits(p.compile_limits)})" if p.compile else "no"
        aliases = ", ".join(f"`{a}`" for a in p.aliases)
        extensions = ", ".join(f"`{e}`" for e in p.extensions)
        lines.append(f"| `{p.name}` | {p.version} | {aliases} | {extensions} | `{p.source_file}` | {compiled} |"
                     f" {limits(p.limits)} | {limits(p.max_limits)} | {f'`{p.image_from}`' if p.image_from else 'base'} |")
    return "\n".join(lines) + "\n"


def settings_table() -> str:
    lines = ["| flag | variable | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(config.Settings):
        default = config.shown_default(f)
        if isinstance(f.default, bool):
            default = str(f.default).lower()
        elif isinstance(f.default, float):
            default = f"{f.default:g}"
        lines.append(f"| `--{f.name.replace('_', '-')}` | `{config.env_name(f.name)}` | `{default}` |"
                     f" {f.metadata['help'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def judge0_table(plugins: plugin_loader.Plugins) -> str:
    lines = ["| Judge0 ids | Judge0's name here | coderund language |", "|---|---|---|"]
    by_plugin: dict[str, list[int]] = {}
    for language_id, (name, _) in sorted(judge0.LANGUAGES.items()):
        by_plugin.setdefault(name, []).append(language_id)
    for name, ids in sorted(by_plugin.items(), key=lambda item: item[1]):
        label = judge0.LANGUAGES[ids[0]][1]
        lines.append(f"| {', '.join(map(str, ids))} | {judge0.language_name(plugins.get(name), label)} | `{name}` |")
    for language_id, label in sorted(judge0.FOREIGN_NAMES.items()):
        lines.append(f"| {language_id} | {label} | `{judge0.SHELL}` runs it |")
    return "\n".join(lines) + "\n"


def parts(root: Path = ROOT) -> dict[str, Callable[[], str]]:
    """Each part's name and how to make it."""
    loaded = plugin_loader.load(root / "plugins")
    covered = len(judge0.LANGUAGES) + len(judge0.FOREIGN_NAMES)
    return {
        "language-count": lambda: str(len(loaded.all)),
        "languages": lambda: languages_table(loaded.all),
        "settings": settings_table,
        "setting-count": lambda: str(len(dataclasses.fields(config.Settings))),
        "judge0-ids": lambda: judge0_table(loaded),
        "judge0-count": lambda: f"{covered} of Judge0 CE's {len(JUDGE0_IDS)} language ids",
        "judge0-languages": lambda: str(len({name for name, _ in judge0.LANGUAGES.values()})),
    }


def render(text: str, made: dict[str, Callable[[], str]], where: str) -> str:
    def part(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in made:
            raise SystemExit(f"{where}: no generated part is called {name!r}; there are {', '.join(made)}")
        body = made[name]()
        if match["body"].startswith("\n"):  # a block: blank lines around it, so Markdown reads it as a table
            body = f"\n\n{body}\n"
        return f"<!-- gen:{name} -->{body}<!-- /gen:{name} -->"

    return PART.sub(part, text)


def stale(root: Path = ROOT, *, write: bool) -> list[str]:
    """The documents whose generated parts differ from the code's; written anew when `write`."""
    made = parts(root)
    found = []
    for path in documents(root):
        text = path.read_text()
        fresh = render(text, made, str(path.relative_to(root)))
        if fresh != text:
            found.append(str(path.relative_to(root)))
            if write:
                path.write_text(fresh)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coderund.docs_tables", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 naming the stale documents")
    check = parser.parse_args(argv).check
    found = stale(write=not check)
    for name in found:
        print(f"{name}: {'generated parts are stale (run python -m coderund.docs_tables)' if check else 'written'}",
              file=sys.stderr)
    return 1 if check and found else 0


if __name__ == "__main__":
    raise SystemExit(main())
