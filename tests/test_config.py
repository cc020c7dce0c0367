"""Settings: flag over environment over default, and clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from coderund import config


def test_precedence():
    environ = {"CODERUND_PORT": "9000", "CODERUND_ROLE": "worker"}
    assert config.load({}, environ={}).port == 8080
    assert config.load({}, environ=environ).port == 9000
    assert config.load({"port": 9100}, environ=environ).port == 9100
    assert config.load({}, environ=environ).role == "worker"


def test_spec_defaults():
    s = config.load({}, environ={})
    # The role scripts/test-env makes: a stock PostgreSQL asks a password over TCP (docs/operate/install.md)
    assert s.database_url == "postgresql://coderund:coderund@127.0.0.1:5432/coderund"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert s.role == "all" and s.runtime == "runc" and s.output_limit == 64 * 1024


@pytest.mark.parametrize(
    "environ, needle",
    [
        ({"CODERUND_PORT": "x"}, "CODERUND_PORT='x'"),
        ({"CODERUND_PORT": "70000"}, "CODERUND_PORT=70000"),
        ({"CODERUND_REDIS_URL": "http://x"}, "CODERUND_REDIS_URL"),
        ({"CODERUND_ROLE": "boss"}, "CODERUND_ROLE"),
        ({"CODERUND_PLUGINS_DIR": "/nonexistent"}, "CODERUND_PLUGINS_DIR"),
    ],
)
def test_bad_values_name_the_setting(environ, needle):
    with pytest.raises(config.ConfigError, match=needle.replace("(", r"\(")):
        config.load({}, environ=environ)


def test_help_shows_defaults_as_a_reader_should_see_them(capsys):
    from coderund.cli import parser

    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())  # as one line: argparse wraps its help
    assert "default: CPU count" in shown and "default: ~/.cache/coderund" in shown and str(Path.home()) not in shown


def test_every_setting_is_documented():
    """In the README's table of settings or on a page of docs/."""
    import dataclasses

    root = config.PACKAGE_DIR.parent
    text = "".join(path.read_text() for path in [root / "README.md", *sorted((root / "docs").glob("**/*.md"))])
    for f in dataclasses.fields(config.Settings):
        assert f"`{config.env_name(f.name)}`" in text, f.name
