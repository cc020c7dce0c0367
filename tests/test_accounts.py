"""Accounts and sessions through the HTTP API, on real PostgreSQL and Redis."""
from __future__ import annotations

import asyncio
import hashlib
import uuid

import aiohttp
import psycopg
import pytest
from redis import asyncio as aioredis

from coderund.addresses import client_network
from coderund.api.keys import SESSION_COOKIE
from tests.conftest import Api


def new_name() -> str:
    return f"u_{uuid.uuid4().hex[:12]}"


async def test_register_login_logout(api):
    name = new_name()
    status, body, _ = await api.call("POST", "/register", json={"username": name, "password": "correct horse"})
    assert status == 201 and body["username"] == name and isinstance(body["id"], int)

    status, body, headers = await api.call("POST", "/login", json={"username": name, "password": "correct horse"})
    assert status == 200 and body["expires_in"] > 0
    token = body["token"]
    assert len(token) >= 43  # 32 random bytes, urlsafe base64
    cookie = headers["Set-Cookie"]
    assert f"{SESSION_COOKIE}={token}" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie

    assert (await api.call("GET", "/status/" + str(uuid.uuid4()), token=token))[0] == 404  # authenticated
    status, _, _ = await api.call("POST", "/logout", token=token)
    assert status == 204
    status, body, headers = await api.call("GET", "/status/" + str(uuid.uuid4()), token=token)
    assert status == 401 and body["error"] == "unauthorized" and headers["WWW-Authenticate"] == "Bearer"
    assert (await api.call("POST", "/logout", token=token))[0] == 401


async def test_duplicate_username_is_409(api):
    name = new_name()
    assert (await api.call("POST", "/register", json={"username": name, "password": "password1"}))[0] == 201
    status, body, _ = await api.call("POST", "/register", json={"username": name, "password": "password2"})
    assert status == 409 and body["error"] == "conflict"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"password": "password1"}, "username"),
        ({"username": "abc"}, "password"),
        ({"username": "ab", "password": "password1"}, "username"),
        ({"username": "a" * 65, "password": "password1"}, "username"),
        ({"username": "bad name!", "password": "password1"}, "username"),
        ({"username": "good_name", "password": "short"}, "password"),
        ({"username": "good_name", "password": "x" * 257}, "password"),
        ({"username": 5, "password": "password1"}, "username"),
        ([1, 2], "body"),
    ],
)
async def test_validation_rules(api, body, field):
    status, answer, _ = await api.call("POST", "/register", json=body)
    assert status == 400 and answer["error"] == "validation_failed"
    assert field in answer["message"]


async def test_login_alias_and_cookie_auth(api):
    name = new_name()
    assert (await api.call("POST", "/register", json={"login": name, "password": "password123"}))[0] == 201
    status, body, _ = await api.call("POST", "/login", json={"login": name, "password": "password123"})
    assert status == 200
    cookies = {SESSION_COOKIE: body["token"]}
    # The cookie alone authenticates, as for a browser.
    status, body, _ = await api.call("GET", f"/status/{uuid.uuid4()}", cookies=cookies)
    assert status == 404 and body["error"] == "not_found"
    # A POST with the cookie from another site's page is refused (CSRF): the browser says which.
    assert (await api.call("POST", "/logout", cookies=cookies, headers={"Origin": "http://evil.example"}))[0] == 403
    status, _, _ = await api.call("POST", "/logout", cookies=cookies)
    assert status == 204
    assert (await api.call("GET", f"/status/{uuid.uuid4()}", cookies=cookies))[0] == 401


async def test_same_answer_for_unknown_user_and_wrong_password(api):
    name = new_name()
    await api.call("POST", "/register", json={"username": name, "password": "password123"})
    wrong = await api.call("POST", "/login", json={"username": name, "password": "password124"})
    unknown = await api.call("POST", "/login", json={"username": new_name(), "password": "password123"})
    assert wrong[0] == unknown[0] == 401
    assert wrong[1] == unknown[1]


async def test_protected_routes_need_a_session(api):
    for method, path in [("POST", "/task"), ("GET", f"/status/{uuid.uuid4()}"), ("GET", f"/result/{uuid.uuid4()}"),
                         ("POST", "/logout")]:
        # Even a broken body gets 401 first: nothing is read before authentication.
        status, body, headers = await api.call(method, path, data=b"{not json")
        assert status == 401 and body["error"] == "unauthorized", path
        assert headers["WWW-Authenticate"] == "Bearer"
    assert (await api.call("POST", "/task", token="made-up-token", json={}))[0] == 401


async def test_session_expires(settings, server):
    from coderund.repository.sessions import Sessions

    sessions = Sessions(settings.redis_url, ttl=1)
    token = await sessions.create(user_id=1)
    assert await sessions.user_id(token) == 1
    await asyncio.sleep(2.1)
    assert await sessions.user_id(token) is None
    await sessions.close()


async def test_expired_session_is_401(api, settings):
    token = await api.user()
    redis = aioredis.Redis.from_url(settings.redis_url)
    key = "coderund:session:" + hashlib.sha256(token.encode()).hexdigest()
    assert await redis.ttl(key) > 0
    await redis.pexpire(key, 1)
    await asyncio.sleep(0.05)
    assert (await api.call("GET", f"/status/{uuid.uuid4()}", token=token))[0] == 401
    await redis.aclose()


async def test_secrets_never_stored_in_clear(api, settings):
    name = new_name()
    await api.call("POST", "/register", json={"username": name, "password": "my-clear-password"})
    status, body, _ = await api.call("POST", "/login", json={"username": name, "password": "my-clear-password"})
    token = body["token"]
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        row = await (await conn.execute("SELECT password_hash FROM users WHERE username = %s", (name,))).fetchone()
    assert "my-clear-password" not in row[0] and row[0].startswith("scrypt$")
    redis = aioredis.Redis.from_url(settings.redis_url)
    keys = [k.decode() async for k in redis.scan_iter("coderund:*")]
    assert keys and not any(token in k for k in keys)
    for key in keys:
        if (await redis.type(key)) == b"string":
            assert token.encode() not in (await redis.get(key) or b"")
    assert f"coderund:session:{hashlib.sha256(token.encode()).hexdigest()}" in keys
    await redis.aclose()


async def test_login_brute_force_is_limited(api, settings):
    name = new_name()
    await api.call("POST", "/register", json={"username": name, "password": "password123"})
    for _ in range(settings.login_max_failures):
        assert (await api.call("POST", "/login", json={"username": name, "password": "wrong-password"}))[0] == 401
    status, body, headers = await api.call("POST", "/login", json={"username": name, "password": "password123"})
    assert status == 429 and body["error"] == "rate_limited"
    assert 0 < int(headers["Retry-After"]) <= settings.login_failure_window


async def test_a_guesser_locks_a_username_out_only_from_the_guessers_address(api, settings):
    """Failed logins count per username and client address: 15 wrong passwords from one address
    lock that address out of the account, and the owner logs in from another (127.0.0.2)."""
    name = new_name()
    wrong, right = {"username": name, "password": "wrong-password"}, {"username": name, "password": "password123"}
    await api.call("POST", "/register", json=right)
    for i in range(settings.login_max_failures + 5):
        status = (await api.call("POST", "/login", json=wrong))[0]
        assert status == (401 if i < settings.login_max_failures else 429)
    assert (await api.call("POST", "/login", json=right))[0] == 429
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as session:
        owner = Api(session, api.base)
        status, body, _ = await owner.call("POST", "/login", json=right)
        assert status == 200 and body["token"]
        for _ in range(settings.login_max_failures):  # and its own failures count apart from the guesser's
            assert (await owner.call("POST", "/login", json=wrong))[0] == 401
        assert (await owner.call("POST", "/login", json=right))[0] == 429


def test_a_client_is_counted_by_its_ipv4_address_or_its_ipv6_64():
    assert client_network("203.0.113.7") == "203.0.113.7"
    assert client_network("::ffff:203.0.113.7") == "203.0.113.7"  # an IPv4 client of a dual-stack socket
    assert client_network("2001:db8:1:2:aaaa::1") == client_network("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_network("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert client_network("") == ""


async def test_a_logout_ends_the_session_in_every_api_process_at_once(settings):
    """Each API process remembers the sessions it has seen (its /status then asks Redis nothing), and
    forgets one the moment any process logs it out: the logout is announced to all."""
    from tests.conftest import own_server

    async with own_server(settings, role="api") as first, own_server(settings, role="api") as second:
        token = await first.user("everywhere")
        for _ in range(3):  # seen, then remembered, by both
            assert (await first.call("GET", "/account/api-keys", token=token))[0] == 200
            assert (await second.call("GET", "/account/api-keys", token=token))[0] == 200
        redis = aioredis.from_url(settings.redis_url)
        digest = hashlib.sha256(token.encode()).hexdigest()
        try:
            assert await redis.delete(f"coderund:session:{digest}") == 1  # behind their backs: still remembered
            assert (await first.call("GET", "/account/api-keys", token=token))[0] == 200
            assert (await second.call("POST", "/logout", token=token))[0] == 204
            await asyncio.sleep(0.2)  # the announcement's way through Redis
            assert (await first.call("GET", "/account/api-keys", token=token))[0] == 401
            assert (await second.call("GET", "/account/api-keys", token=token))[0] == 401
        finally:
            await redis.aclose()
