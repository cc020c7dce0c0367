"""The command-line client through its real entry point (`python -m coderund`) against a live server:
login and its token file, runs with stdin from a file, a pipe and live, each exit code, --json, logout."""
from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import sys
import uuid
from pathlib import Path

import pytest

from coderund import plugins
from coderund.cli import parser
from coderund.client import EXIT_CODES, ClientError, exit_code, language_of
from coderund.config import DEFAULT_PLUGINS_DIR


async def coderund(*args: str, env: dict[str, str], stdin: bytes = b"") -> tuple[int, str, str]:
    # A subprocess of its own, awaited: the server under test runs on this event loop.
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "coderund", *args, env=env,
                                                   stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin), 120)
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
def home(tmp_path) -> dict[str, str]:
    """An environment whose config folder is the test's own, with no CODERUND_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODERUND_")}
    return env | {"XDG_CONFIG_HOME": str(tmp_path / "config")}


@pytest.fixture
async def logged_in(server, home) -> dict[str, str]:
    code, _, err = await coderund("login", "--server", server, "--username", f"cli-{uuid.uuid4().hex[:8]}", "--register",
                                  env=home, stdin=b"a good password\n")
    assert code == 0, err
    return home


async def test_login_keeps_the_token_readable_by_the_user_alone(logged_in, server):
    path = Path(logged_in["XDG_CONFIG_HOME"]) / "coderund" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert stored["server"] == server and len(stored["token"]) > 30


async def test_run_streams_output_with_stdin_from_a_file_a_pipe_and_live(logged_in, tmp_path):
    program = tmp_path / "echo.py"
    program.write_text("import sys\nprint('args', sys.argv[1:])\nprint(sys.stdin.read().upper(), end='')\n"
                       "print('to stderr', file=sys.stderr)\n")
    given = tmp_path / "input.txt"
    given.write_text("from a file\n")
    code, out, err = await coderund("run", str(program), "--stdin", str(given), "--arg", "a b", "--arg", "c",
                                    env=logged_in)
    assert (code, out) == (0, "args ['a b', 'c']\nFROM A FILE\n")
    assert err.startswith("to stderr\n") and "coderund: ok · exit 0" in err
    code, out, _ = await coderund("run", str(program), "--stdin", "-", env=logged_in, stdin=b"from a pipe\n")
    assert (code, out) == (0, "args []\nFROM A PIPE\n")
    code, out, _ = await coderund("run", str(program), env=logged_in, stdin=b"live\nlines\n")  # forwarded as it comes
    assert (code, out) == (0, "args []\nLIVE\nLINES\n")


@pytest.mark.parametrize("name, source, options, expected", [
    ("exit.py", "raise SystemExit(3)", [], 3),
    ("killed.py", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", [], 128 + 11),
    ("broken.c", "int main(void) { return nope; }", [], EXIT_CODES["compile_error"]),
    ("loop.py", "while True: pass", ["--time-ms", "300"], EXIT_CODES["time_limit"]),
    ("hog.py", "x = [b'x' * 2**20 + bytes([i % 256]) for i in range(4096)]", ["--memory-mb", "64"], EXIT_CODES["memory_limit"]),
    ("loud.py", "print('x' * 300000)", [], EXIT_CODES["output_limit"]),
    ("script.txt", "echo hi", ["--language", "bash"], 0),
    ("Exit.R", "quit(status = 3)", [], 3),
    ("exit.CC", "int main() { return 4; }", [], 4),
])
async def test_exit_codes_mirror_the_program_and_the_verdict(logged_in, tmp_path, name, source, options, expected):
    (tmp_path / name).write_text(source)
    code, _, err = await coderund("run", str(tmp_path / name), *options, env=logged_in)
    assert code == expected, err


@pytest.mark.parametrize("name, language", [
    ("hello.R", "r"), ("x.r", "r"), ("x.cc", "cpp"), ("x.cxx", "cpp"), ("X.CPP", "cpp"), ("x.c++", "cpp"),
    ("x.hs", "haskell"), ("x.ml", "ocaml"), ("x.py", "python"), ("x.c", "c"), ("x.pl", "perl"), ("x.pro", "prolog"),
    ("x.ts", "typescript"), ("x.mjs", "javascript"), ("x.kt", "kotlin"), ("x.exs", "elixir"), ("x.f", "fortran"),
    ("Main.java", "java"), ("x.rkt", "racket"), ("x.sh", "bash"),
])
def test_a_file_extension_names_its_language(name, language):
    languages = [plugin.describe() for plugin in plugins.load(DEFAULT_PLUGINS_DIR).all]
    assert language_of(name, languages) == language


def test_an_extension_of_several_languages_or_none_asks_for_language():
    languages = [plugin.describe() for plugin in plugins.load(DEFAULT_PLUGINS_DIR).all]
    with pytest.raises(ClientError) as asked:
        language_of("solve.m", languages)
    assert str(asked.value) == "solve.m could be objective-c or octave: pass --language"
    for name in ("x.unknown", "Makefile", "x."):
        with pytest.raises(ClientError, match=f"cannot tell the language of {re.escape(name)}: pass --language"):
            language_of(name, languages)


def test_each_command_shows_only_its_own_options(capsys):
    def help_of(*command: str) -> str:
        with pytest.raises(SystemExit):
            parser().parse_args([*command, "--help"])
        return capsys.readouterr().out

    assert "--warm-max" in help_of() and "--database-url" in help_of()  # the daemon's: every setting
    for command in (["keys"], ["users"], ["images"], ["run"], ["login"], ["logout"], ["mcp"]):
        assert "--warm-max" not in help_of(*command) and "--database-url" not in help_of(*command), command
    assert len(help_of("keys").splitlines()) < 15
    for command in (["keys", "add"], ["keys", "list"], ["keys", "revoke"], ["users", "set-quota"], ["migrate"]):
        shown = help_of(*command)
        assert "--database-url" in shown and "--warm-max" not in shown and "--runtime" not in shown, command
    assert "--plugins-dir" in help_of("images", "build") and "--docker-url" in help_of("images", "build")
    assert "--sandbox-idle-s" in help_of("mcp")
    # A setting still goes before the command, or after it where the command uses it.
    for argv in (["--database-url", "postgresql://h/d", "keys", "list", "--user", "a"],
                 ["keys", "list", "--user", "a", "--database-url", "postgresql://h/d"]):
        assert vars(parser().parse_args(argv))["database_url"] == "postgresql://h/d"


def test_exit_codes_of_the_platform():
    assert exit_code({"verdict": "internal_error"}) == EXIT_CODES["internal_error"] == 105
    assert exit_code({"verdict": "cancelled"}) == 104
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)


async def test_json_prints_the_result_document(logged_in, tmp_path):
    (tmp_path / "main.go").write_text('package main\nimport "fmt"\nfunc main() { fmt.Println("go!") }\n')
    code, out, _ = await coderund("run", str(tmp_path / "main.go"), "--json", env=logged_in)
    document = json.loads(out)
    assert code == 0 and document["verdict"] == "ok" and document["stdout"] == "go!\n" and document["language"] == "go"


async def test_client_errors_are_one_line_and_exit_2(server, home, logged_in, tmp_path):
    (tmp_path / "x.unknown").write_text("?")
    code, _, err = await coderund("run", str(tmp_path / "x.unknown"), env=logged_in)
    assert code == 2 and "pass --language" in err and err.count("\n") == 1
    code, _, err = await coderund("run", str(tmp_path / "missing.py"), env=logged_in)
    assert code == 2 and "missing.py" in err
    stranger = home | {"XDG_CONFIG_HOME": str(tmp_path / "elsewhere"), "CODERUND_SERVER": server}
    code, _, err = await coderund("run", str(tmp_path / "x.unknown"), env=stranger)
    assert code == 2 and "not logged in" in err


async def test_environment_overrides_and_logout(logged_in, server, tmp_path):
    path = Path(logged_in["XDG_CONFIG_HOME"]) / "coderund" / "credentials.json"
    token = json.loads(path.read_text())["token"]
    (tmp_path / "hi.rb").write_text('puts "hi from ruby"')
    elsewhere = {**logged_in, "XDG_CONFIG_HOME": str(tmp_path / "none"), "CODERUND_TOKEN": token,
                 "CODERUND_SERVER": server}
    code, out, _ = await coderund("run", str(tmp_path / "hi.rb"), env=elsewhere)
    assert (code, out) == (0, "hi from ruby\n")
    code, _, _ = await coderund("logout", env=logged_in)
    assert code == 0 and not path.exists()
    code, _, err = await coderund("run", str(tmp_path / "hi.rb"), env=elsewhere)  # the session is gone
    assert code == 2 and "coderund login" in err
