"""The README and the documentation site: the site builds with --strict, its generated parts are the
code's, every page is in its navigation, and both are written for a reader, not as a journal."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coderund import docs_tables

ROOT = Path(__file__).resolve().parent.parent
JOURNAL = re.compile(r"\bissue \d+|\b(this|that|last|next) round\b|\bround (one|two|three|\d+)\b|closing note|"
                     r"\buntil (now|this)\b|\bthis session\b|\bas before\b|\bno longer\b|\bthe seed\b|"
                     r"\bthe [a-z-]+ issue\b", re.I)


def nav_pages(entries: list) -> list[str]:
    pages = []
    for entry in entries:
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_site_builds_strictly_with_every_page(tmp_path):
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                            "--site-dir", str(tmp_path)], capture_output=True, text=True, timeout=300,
                           env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stderr
    pages = nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    on_disk = sorted(str(path.relative_to(ROOT / "docs")) for path in (ROOT / "docs").rglob("*.md"))
    assert sorted(pages) == on_disk, "every page of docs/ is in mkdocs.yml's nav, and only those"
    for page in pages:
        html = tmp_path / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert html.is_file(), page


def test_the_generated_parts_are_the_code():
    assert docs_tables.stale(write=False) == [], "run: python -m coderund.docs_tables"
    used = "".join(path.read_text() for path in docs_tables.documents())
    for name in docs_tables.parts():
        assert f"<!-- gen:{name} -->" in used, f"no document uses the generated part {name}"


def test_a_stale_part_is_written_anew_and_an_unknown_one_refused():
    made = {"count": lambda: "40", "table": lambda: "| a |\n|---|\n| 1 |\n"}
    text = "in <!-- gen:count -->14<!-- /gen:count --> languages\n<!-- gen:table -->\n| old |\n<!-- /gen:table -->\n"
    fresh = docs_tables.render(text, made, "x.md")
    assert fresh == ("in <!-- gen:count -->40<!-- /gen:count --> languages\n"
                     "<!-- gen:table -->\n\n| a |\n|---|\n| 1 |\n\n<!-- /gen:table -->\n")
    assert docs_tables.render(fresh, made, "x.md") == fresh
    with pytest.raises(SystemExit, match="x.md: no generated part is called 'nope'"):
        docs_tables.render("<!-- gen:nope -->1<!-- /gen:nope -->", made, "x.md")


def test_the_settings_table_holds_every_setting_and_the_languages_table_every_plugin():
    from coderund import config, plugins

    settings = docs_tables.settings_table()
    for name in config.Settings.__dataclass_fields__:
        assert f"| `--{name.replace('_', '-')}` | `{config.env_name(name)}` |" in settings
    languages = docs_tables.languages_table(plugins.load(config.DEFAULT_PLUGINS_DIR).all)
    assert languages.count("\n") == 2 + len(plugins.load(config.DEFAULT_PLUGINS_DIR).all)
    assert "| `cpp` |" in languages and "`.cc`" in languages


@pytest.mark.parametrize("path", docs_tables.documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_written_for_a_reader_not_as_a_journal(path):
    found = [match.group(0) for match in JOURNAL.finditer(path.read_text())]
    assert not found, f"{path.name} speaks of its history: {found}"


def test_the_readme_is_the_newcomers_page():
    readme = (ROOT / "README.md").read_text()
    assert 150 <= len(readme.splitlines()) <= 250
    assert "make run_tests" in readme and "make build_and_run" in readme
    links = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", readme)
    assert {"docs/getting-started.md", "docs/api.md", "docs/mcp.md", "docs/security.md"} <= set(links)
    for link in links:
        assert (ROOT / link).exists(), link
    assert "2AAA7A5415B4A9B394B54BF1D2E9D" not in readme  # the public Jobe key: never offered as a credential
