"""The wheel: what a `pip install` of it holds is enough to run every command, away from the repository."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from coderund import config

ROOT = config.PACKAGE_DIR.parent
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "LICENSE", "coderund", "plugins", "sql")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources (a build leaves build/ and *.egg-info where it runs)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
                   check=True, capture_output=True)
    [built] = out.glob("coderund-*.whl")
    return built


def test_the_wheel_ships_plugins_migrations_and_license(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"coderund/data/plugins/{p.name}" for p in (ROOT / "plugins").glob("*.toml")} <= names
    assert {f"coderund/data/sql/{p.name}" for p in (ROOT / "sql").glob("*.sql")} <= names
    assert {"coderund/sandbox/supervise.c", "coderund/sandbox/kernel.js", "coderund/api/static/index.html"} <= names
    assert any(name.endswith(".dist-info/licenses/LICENSE") or name.endswith(".dist-info/LICENSE") for name in names)
    assert not any(name.startswith(("plugins/", "sql/")) for name in names)  # nothing at site-packages' top


def test_an_installed_wheel_finds_its_plugins_and_migrations(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CODERUND_")}, "PYTHONPATH": str(target)}
    probe = ("from coderund import config; from coderund.repository import db; "
             "print(config.DEFAULT_PLUGINS_DIR); print(db.MIGRATIONS_DIR)")
    plugins_dir, migrations_dir = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True,
                                                 capture_output=True, text=True).stdout.split()
    assert Path(plugins_dir) == target / "coderund" / "data" / "plugins"
    assert sorted(p.name for p in Path(migrations_dir).glob("*.sql")) == sorted(p.name for p in (ROOT / "sql").glob("*.sql"))
    listed = subprocess.run([sys.executable, "-m", "coderund", "languages"], cwd=tmp_path, env=env, check=True,
                            capture_output=True, text=True).stdout
    assert len(listed.splitlines()) == len(list((ROOT / "plugins").glob("*.toml")))
