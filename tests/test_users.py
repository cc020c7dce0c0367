"""The operator's user commands end to end (coderund users ...), and closed registration."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

from tests.conftest import env_of, own_server


def cli(settings, *args: str, stdin: str = "", extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coderund", *args], env={**env_of(settings), **(extra_env or {})},
                          input=stdin, capture_output=True, text=True, timeout=60)


def refused(done: subprocess.CompletedProcess[str], needle: str) -> bool:
    """A bad command: exit 2, and one line that says why."""
    return done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and needle in done.stderr and not done.stdout


async def until_status(api, path: str, token: str, status: int, seconds: float = 2) -> int:
    """The answer to path, asked until it is `status` or the seconds are up (news travels by NOTIFY and pub/sub)."""
    deadline = time.monotonic() + seconds
    while (got := (await api.call("GET", path, token=token))[0]) != status and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return got


def listed(settings, name: str) -> str:
    lines = [line for line in cli(settings, "users", "list").stdout.splitlines() if f"  {name}  " in line]
    return lines[0] if lines else ""


async def test_an_operator_adds_lists_disables_and_enables_a_user(api, settings):
    name = f"op_{uuid.uuid4().hex[:10]}"
    added = cli(settings, "users", "add", name, "--password-stdin", stdin="correct horse\n")
    assert added.returncode == 0 and added.stdout.startswith(f"added {name} (id "), added.stderr
    status, login, _ = await api.call("POST", "/login", json={"username": name, "password": "correct horse"})
    assert status == 200, login
    token = login["token"]
    status, key, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "ci"})
    assert status == 201, key
    for credential in (token, key["key"], token, key["key"]):  # seen, then remembered, by the API process
        assert (await api.call("GET", "/tasks", token=credential))[0] == 200
    assert " active " in f"{listed(settings, name)} "

    disabled = cli(settings, "users", "disable", name)
    assert disabled.returncode == 0, disabled.stderr
    assert disabled.stdout.strip() == f"{name}: disabled (1 session(s) ended, 1 API key(s) refused)"
    assert await until_status(api, "/tasks", token, 401) == 401
    assert await until_status(api, "/tasks", key["key"], 401) == 401
    status, body, _ = await api.call("POST", "/login", json={"username": name, "password": "correct horse"})
    assert status == 403 and body["error"] == "account_disabled", body
    status, body, _ = await api.call("POST", "/login", json={"username": name, "password": "wrong password"})
    assert status == 401, body  # nothing said of the account to whoever lacks its password
    assert " disabled 20" in listed(settings, name)

    enabled = cli(settings, "users", "enable", name)
    assert enabled.returncode == 0 and enabled.stdout.strip() == f"{name}: enabled", enabled.stderr
    status, login, _ = await api.call("POST", "/login", json={"username": name, "password": "correct horse"})
    assert status == 200 and (await api.call("GET", "/tasks", token=login["token"]))[0] == 200
    assert (await api.call("GET", "/tasks", token=token))[0] == 401  # a session the disable ended stays ended


async def test_quotas_back_to_the_defaults_all_at_once(api, settings):
    name = f"quota_{uuid.uuid4().hex[:10]}"
    assert cli(settings, "users", "add", name, "--password-stdin", stdin="password123").returncode == 0
    done = cli(settings, "users", "set-quota", name, "--max-pending", "1", "--per-minute", "5", "--cpu-s-per-day", "9")
    assert done.returncode == 0, done.stderr
    assert listed(settings, name).endswith("cpu_s_per_day=9 max_pending=1 per_minute=5")
    reset = cli(settings, "users", "set-quota", name, "--default")
    assert reset.returncode == 0 and "cpu_s_per_day = default" in reset.stdout, reset.stderr
    assert " created " in listed(settings, name) and "max_pending" not in listed(settings, name)


async def test_bad_commands_fail_with_one_line_and_change_nothing(api, settings):
    name = f"bad_{uuid.uuid4().hex[:10]}"
    assert refused(cli(settings, "users", "add", name, "--password-stdin", stdin="short\n"), "'password' must be 8")
    assert refused(cli(settings, "users", "add", name, "--password-stdin", stdin="x" * 300), "'password' must be 8")
    assert refused(cli(settings, "users", "add", name, "--password-stdin"), "'password' must be 8")  # no input at all
    assert refused(cli(settings, "users", "add", "a b", "--password-stdin", stdin="password123\n"), "'username' must be")
    assert refused(cli(settings, "users", "add", name, stdin="password123\n"), "--password-stdin")
    assert listed(settings, name) == ""
    assert cli(settings, "users", "add", name, "--password-stdin", stdin="password123\n").returncode == 0
    assert refused(cli(settings, "users", "add", name, "--password-stdin", stdin="other-password\n"), "is taken")
    assert (await api.call("POST", "/login", json={"username": name, "password": "password123"}))[0] == 200
    for args in (("disable", "nobody-at-all"), ("enable", "nobody-at-all"), ("set-quota", "nobody-at-all", "--default")):
        assert refused(cli(settings, "users", *args), "there is no user 'nobody-at-all'"), args
    assert refused(cli(settings, "users", "set-quota", name), "name at least one quota")
    assert refused(cli(settings, "users", "list", "--limit", "0"), "--limit is 1 or more")
    assert refused(cli(settings, "users", "frobnicate", name), "invalid choice")
    assert refused(cli(settings, "--registration", "maybe", "users", "list"), "argument --registration: invalid choice")
    assert refused(cli(settings, "users", "list", extra_env={"CODERUND_REGISTRATION": "maybe"}),
                   "CODERUND_REGISTRATION='maybe' is not one of open, closed")
    assert " active " in f"{listed(settings, name)} "


async def test_closed_registration_answers_403_and_makes_no_account(api, settings):
    name = f"closed_{uuid.uuid4().hex[:10]}"
    async with own_server(settings, role="api", registration="closed") as closed:
        status, body, _ = await closed.call("POST", "/register", json={"username": name, "password": "password123"})
        assert status == 403 and body["error"] == "registration_closed" and "coderund users add" in body["message"], body
        assert listed(settings, name) == ""
        assert cli(settings, "users", "add", name, "--password-stdin", stdin="password123\n").returncode == 0
        assert (await closed.call("POST", "/login", json={"username": name, "password": "password123"}))[0] == 200
    status, body, _ = await api.call("POST", "/register", json={"username": f"open_{name}", "password": "password123"})
    assert status == 201, body  # the session's server is open: the setting is the server's own
