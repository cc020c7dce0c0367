"""API keys, scopes, usage and quotas, on the real services; the operator's commands end to end."""
from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest

from coderund.access import cpu_quota_left, seconds_to_next_day
from tests.conftest import api_of, env_of, free_port


def cli(settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coderund", *args], env=env_of(settings), capture_output=True, text=True,
                          timeout=60)


async def make_key(api, token: str, **body) -> dict:
    status, key, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "ci", **body})
    assert status == 201, key
    return key


async def test_a_key_is_made_listed_used_and_revoked_everywhere_within_a_second(api, settings, spawn):
    token = await api.user("keys")
    key = await make_key(api, token)
    assert key["key"].startswith("crd_") and len(key["key"]) >= 4 + 43 and key["scopes"] == ["tasks:write", "tasks:read"]
    assert key["key"].startswith(key["prefix"]) and key["expires_at"] is None
    result = await api.run(key["key"], language="python", code="print('by key')")
    assert result["stdout"] == "by key\n"
    status, listed, _ = await api.call("GET", "/account/api-keys", token=token)
    [entry] = listed["api_keys"]
    assert entry["id"] == key["id"] and "key" not in entry and entry["last_used_at"] is not None
    # A second API process, warm with the key, refuses it within a second of the revocation.
    other = dataclasses.replace(settings, port=free_port())
    spawn(other, "--role", "api")
    async with api_of(other) as second:
        assert (await second.call("GET", "/tasks", token=key["key"]))[0] == 200
        assert (await api.call("DELETE", f"/account/api-keys/{key['id']}", token=token))[0] == 204
        revoked_at = time.monotonic()
        while (await second.call("GET", "/tasks", token=key["key"]))[0] != 401:
            assert time.monotonic() - revoked_at < 1, "the second API process still takes the revoked key"
            await asyncio.sleep(0.05)
    assert (await api.call("GET", "/tasks", token=key["key"]))[0] == 401
    assert (await api.call("DELETE", f"/account/api-keys/{key['id']}", token=token))[0] == 404


async def test_scopes_expiry_and_bad_requests(api, settings):
    token = await api.user("scopes")
    reader = await make_key(api, token, scopes=["tasks:read"])
    status, body, _ = await api.call("POST", "/task", token=reader["key"], json={"language": "python", "code": "1"})
    assert status == 403 and body["error"] == "forbidden" and "tasks:write" in body["message"]
    assert (await api.call("GET", "/tasks", token=reader["key"]))[0] == 200
    assert (await api.call("GET", "/account/api-keys", token=reader["key"]))[0] == 403
    writer = await make_key(api, token, scopes=["tasks:write"])
    task_id = await api.submit(writer["key"], language="python", code="1")
    assert (await api.call("GET", f"/result/{task_id}", token=writer["key"]))[0] == 403
    admin = await make_key(api, token, scopes=["account"])
    assert (await api.call("GET", "/account/api-keys", token=admin["key"]))[0] == 200
    expiring = await make_key(api, token, expires_in_days=1)
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = %s", (expiring["id"],))
    assert (await api.call("GET", "/tasks", token=expiring["key"]))[0] == 401
    for bad in ({}, {"name": ""}, {"name": "x", "scopes": ["root"]}, {"name": "x", "scopes": []},
                {"name": "x", "expires_in_days": 0}, {"name": "x", "expires_in_days": True}, []):
        status, body, _ = await api.call("POST", "/account/api-keys", token=token, json=bad)
        assert status == 400 and body["error"] == "validation_failed", (bad, body)
    assert (await api.call("DELETE", "/account/api-keys/not-a-uuid", token=token))[0] == 404
    await api.result(token, task_id)


async def test_no_raw_key_in_the_database(api, settings):
    token = await api.user("dump")
    key = await make_key(api, token)
    await api.run(key["key"], language="python", code="1")
    dump = subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", settings.database_name], capture_output=True,
                          timeout=120, check=True).stdout
    secret = key["key"][len(key["prefix"]):].encode()
    assert dump and secret not in dump and key["key"].encode() not in dump


async def test_operator_commands_import_list_revoke_and_set_quotas(api, settings):
    token = await api.user("operator")
    status, body, _ = await api.call("GET", "/account/usage", token=token)
    username = None
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        username = (await (await conn.execute("SELECT username FROM users ORDER BY id DESC LIMIT 1")).fetchone())[0]
    jobe_key = "2AAA7A5415B4A9B394B54BF1D2E9D"  # the key Jobe's clients ship with
    added = cli(settings, "keys", "add", "--user", username, "--name", "moodle", "--key", jobe_key, "--scopes", "tasks:write",
                "tasks:read")
    assert added.returncode == 0 and added.stdout.startswith(jobe_key), added.stderr
    assert (await api.run(jobe_key, language="python", code="print(2)"))["stdout"] == "2\n"
    listed = cli(settings, "keys", "list", "--user", username)
    assert "moodle" in listed.stdout and jobe_key not in listed.stdout
    assert cli(settings, "keys", "add", "--user", username, "--name", "short", "--key", "tooshort").returncode == 2
    assert cli(settings, "keys", "add", "--user", "nobody-at-all", "--name", "x").returncode == 2
    key_id = listed.stdout.split()[0]
    assert cli(settings, "keys", "revoke", key_id).returncode == 0
    for _ in range(20):
        if (await api.call("GET", "/tasks", token=jobe_key))[0] == 401:
            break
        await asyncio.sleep(0.1)
    assert (await api.call("GET", "/tasks", token=jobe_key))[0] == 401
    quota = cli(settings, "users", "set-quota", username, "--max-pending", "1", "--per-minute", "50")
    assert quota.returncode == 0, quota.stderr
    status, body, _ = await api.call("GET", "/account/usage", token=token)
    assert body["quota"]["max_pending"] == 1 and body["quota"]["per_minute"] == 50
    first = await api.submit(token, language="python", code="import time\ntime.sleep(1)")
    status, body, _ = await api.call("POST", "/task", token=token, json={"language": "python", "code": "1"})
    assert status == 429 and "1 unfinished" in body["message"]
    await api.result(token, first)
    assert cli(settings, "users", "set-quota", username, "--max-pending", "1", "--default").returncode == 0
    assert cli(settings, "users", "set-quota", "nobody-at-all", "--max-pending", "1").returncode == 2


async def test_usage_is_the_sum_of_the_tasks_and_the_cpu_quota_holds_until_the_day_turns(api, settings):
    token = await api.user("usage")
    results = [await api.run(token, language=language, code=code) for language, code in (
        ("python", "import time\nwhile time.process_time() < 0.3: pass"), ("python", "print(1)"), ("bash", "echo hi"))]
    status, usage, _ = await api.call("GET", "/account/usage?days=1", token=token)
    assert status == 200
    [today] = usage["days"]
    assert today["tasks"] == 3 and today["cpu_ms"] == sum(r["time_ms"] for r in results)
    assert today["wall_ms"] == sum(r["wall_ms"] for r in results)
    assert today["languages"]["python"]["tasks"] == 2 and today["languages"]["bash"]["tasks"] == 1
    assert (await api.call("GET", "/account/usage?days=0", token=token))[0] == 400
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        user_id = (await (await conn.execute("SELECT max(id) FROM users")).fetchone())[0]
        await conn.execute("UPDATE users SET quota_cpu_s_per_day = 1 WHERE id = %s", (user_id,))
        await conn.execute("UPDATE usage_daily SET cpu_ms = 1500 WHERE user_id = %s AND language = 'python'", (user_id,))
        status, body, headers = await api.call("POST", "/task", token=token, json={"language": "python", "code": "1"})
        assert status == 429 and body["error"] == "quota_exceeded" and "1 CPU seconds" in body["message"]
        assert 0 < int(headers["Retry-After"]) <= 86400
        # The day turns: today's usage is yesterday's, and the quota is whole again.
        await conn.execute("UPDATE usage_daily SET day = day - 1 WHERE user_id = %s", (user_id,))
    assert (await api.call("POST", "/task", token=token, json={"language": "python", "code": "1"}))[0] == 201


@pytest.mark.parametrize("now, seconds", [(datetime(2026, 12, 1, 23, 59, 30, tzinfo=UTC), 30),
                                          (datetime(2026, 12, 1, 0, 0, 0, tzinfo=UTC), 86400),
                                          (datetime(2026, 12, 1, 22, 0, tzinfo=timezone(timedelta(hours=2))), 3600 * 4)])
def test_seconds_until_the_quota_renews(now, seconds):
    assert seconds_to_next_day(now) == seconds


def test_cpu_quota_rule():
    assert cpu_quota_left(10**9, 0) and cpu_quota_left(999, 1) and not cpu_quota_left(1000, 1)
