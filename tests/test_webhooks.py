"""Webhooks: signed deliveries a receiver can verify, retries, a restart in between, and SSRF refused."""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import time
import uuid

import psycopg
import pytest
from aiohttp import web

from coderund.addresses import is_allowed
from tests.conftest import api_of, drop_database, free_port


class Receiver:
    """A local HTTP endpoint that fails its first `failures` calls, then keeps what it gets."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.methods: list[str] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), await request.read()))
        self.methods.append(request.method)
        return web.Response(status=500 if len(self.calls) <= self.failures else 204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def until(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(self.calls) >= count, f"{len(self.calls)} of {count} calls in {timeout} s"


@pytest.fixture
def own_database(settings):
    """A database of the test's own: every coderund process on a database sends its webhooks, and the
    session's server, which refuses loopback callbacks, must not take these."""
    url = f"{settings.database_url}_hooks_{uuid.uuid4().hex[:6]}"
    yield url
    drop_database(url)


async def serving(settings, **changes):
    from coderund.daemon import serve

    s = dataclasses.replace(settings, **changes)
    stop = asyncio.Event()
    return s, stop, asyncio.create_task(serve(s, stop))


@pytest.mark.parametrize("address, answer", [("127.0.0.1", False), ("10.0.0.1", False), ("172.16.5.4", False),
                                             ("192.168.1.1", False), ("169.254.169.254", False), ("::1", False),
                                             ("fd00::1", False), ("100.64.0.1", False), ("0.0.0.0", False),
                                             ("::ffff:127.0.0.1", False), ("224.0.0.1", False), ("93.184.216.34", True),
                                             # IPv6 forms that embed loopback: NAT64, 6to4, compatible, translated
                                             ("64:ff9b::7f00:1", False), ("2002:7f00:1::", False), ("::127.0.0.1", False),
                                             ("::ffff:0:7f00:1", False), ("fec0::1", False), ("64:ff9b:1::1", False),
                                             ("2001:0::5efe:7f00:1", False), ("64:ff9b::5db8:d822", True),
                                             ("2002:5db8:d822::1", True), ("2606:4700::1111", True), ("not an ip", False)])
def test_only_global_addresses(address, answer):
    assert is_allowed(address) is answer


async def test_ssrf_is_refused_at_submit(api, settings):
    token = await api.user("hook")
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        before = (await (await conn.execute("SELECT count(*) FROM tasks")).fetchone())[0]
        for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://[::1]/x", "http://169.254.169.254/latest",
                    "http://10.1.2.3/", "ftp://example.com/x", "http:///x", "javascript:alert(1)", "http://a:b:c/",
                    # IPv6 forms that embed loopback, and hosts IDNA cannot encode (they were a 500)
                    "http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::]/", "http://[::127.0.0.1]/",
                    "http://[::ffff:0:7f00:1]/", "http://[fec0::1]/", "http://a..b/", f"http://{'a' * 64}.com/",
                    "http://.a/", "https://\u3002/"):
            status, body, _ = await api.call("POST", "/task", token=token,
                                             json={"language": "python", "code": "1", "callback_url": url})
            assert status == 400 and body["error"] == "validation_failed" and "'callback_url'" in body["message"], (url, body)
        assert (await (await conn.execute("SELECT count(*) FROM tasks")).fetchone())[0] == before


async def test_a_signed_delivery_retried_through_failures(settings, own_database):
    receiver = Receiver(failures=2)
    await receiver.start()
    s, stop, running = await serving(settings, queue=f"{settings.queue}.hooks", port=free_port(), database_url=own_database,
                                     webhook_allow_private=True, webhook_backoff_s=0.5)
    try:
        async with api_of(s) as api:
            token = await api.user("hook")
            _, secret, _ = await api.call("GET", "/account/webhook-secret", token=token)
            _, again, _ = await api.call("GET", "/account/webhook-secret", token=token)
            assert secret == again and len(secret["secret"]) == 64
            task_id = await api.submit(token, language="python", code="print('hooked')", callback_url=receiver.url)
            result = await api.result(token, task_id)
            await receiver.until(3)
            headers, body = receiver.calls[-1]
            expected = "sha256=" + hmac.new(secret["secret"].encode(), body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-Coderund-Signature"], expected)
            sent = json.loads(body)
            assert sent["task_id"] == task_id and sent["stdout"] == "hooked\n" and sent == {"task_id": task_id, **result}
            assert len({h["X-Coderund-Delivery"] for h, _ in receiver.calls}) == 1  # one delivery, three attempts
            assert [h["X-Coderund-Attempt"] for h, _ in receiver.calls] == ["1", "2", "3"]
            assert abs(int(headers["X-Coderund-Timestamp"]) - time.time()) < 60
            await asyncio.sleep(2)
            assert len(receiver.calls) == 3  # delivered: no more
            # A rotated secret signs what comes next, and the old one no longer does.
            _, rotated, _ = await api.call("POST", "/account/webhook-secret", token=token)
            assert rotated["secret"] != secret["secret"]
            await api.run(token, language="python", code="print(2)", callback_url=receiver.url)
            await receiver.until(4)
            headers, body = receiver.calls[-1]
            assert headers["X-Coderund-Signature"] == "sha256=" + hmac.new(rotated["secret"].encode(), body,
                                                                              hashlib.sha256).hexdigest()
        async with await psycopg.AsyncConnection.connect(s.database_url) as conn:
            row = await (await conn.execute("SELECT attempts, delivered_at FROM webhook_deliveries WHERE task_id = %s",
                                            (task_id,))).fetchone()
        assert row[0] == 3 and row[1] is not None
    finally:
        stop.set()
        await running
        await receiver.stop()


async def test_a_delivery_survives_a_restart_and_is_checked_again_when_sent(settings, own_database):
    receiver = Receiver()
    queue = f"{settings.queue}.hookrestart"
    settings = dataclasses.replace(settings, database_url=own_database)
    s, stop, running = await serving(settings, queue=queue, port=free_port(), webhook_allow_private=True,
                                     webhook_backoff_s=0.5)
    try:
        async with api_of(s) as api:
            token = await api.user("hook")
            task_id = await api.submit(token, language="python", code="print(1)", callback_url=receiver.url)
            await api.result(token, task_id)
            for _ in range(100):  # the receiver is down: the first attempt fails (the outbox is read every second)
                async with await psycopg.AsyncConnection.connect(s.database_url) as conn:
                    rows = await (await conn.execute("SELECT attempts, delivered_at FROM webhook_deliveries"
                                                     " WHERE task_id = %s", (task_id,))).fetchall()
                if rows and rows[0][0] >= 1:
                    break
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await running
    assert len(rows) == 1 and rows[0][0] >= 1 and rows[0][1] is None
    await receiver.start()
    # Restarted, and now refusing private addresses: the one to /hook is still owed, but it now points
    # at a loopback address, so it is not sent either; with the operator's permission back, it is.
    s2, stop2, running2 = await serving(settings, queue=queue, port=free_port(), webhook_backoff_s=0.5)
    try:
        for _ in range(200):
            async with await psycopg.AsyncConnection.connect(s.database_url) as conn:
                error = (await (await conn.execute("SELECT last_error FROM webhook_deliveries WHERE task_id = %s",
                                                   (task_id,))).fetchone())[0]
            if "global" in error:
                break
            await asyncio.sleep(0.1)
        assert "global" in error and receiver.calls == []
    finally:
        stop2.set()
        await running2
    s3, stop3, running3 = await serving(settings, queue=queue, port=free_port(), webhook_allow_private=True,
                                        webhook_backoff_s=0.5)
    try:
        await receiver.until(1, timeout=30)
        assert json.loads(receiver.calls[0][1])["task_id"] == task_id
    finally:
        stop3.set()
        await running3
        await receiver.stop()


async def test_a_judge0_callback_is_a_signed_put_of_judge0s_document(settings, own_database):
    receiver = Receiver()
    await receiver.start()
    s, stop, running = await serving(settings, queue=f"{settings.queue}.j0hooks", port=free_port(), database_url=own_database,
                                     webhook_allow_private=True, webhook_backoff_s=0.5)
    try:
        async with api_of(s) as api:
            token = await api.user("j0hook")
            status, body, _ = await api.call("POST", "/judge0/submissions", headers={"Authorization": f"Bearer {token}"},
                                             json={"source_code": "print(7)", "language_id": 71, "callback_url": receiver.url})
            assert status == 201, body
            await receiver.until(1)
            headers, sent = receiver.calls[-1]
            assert receiver.methods[-1] == "PUT" and headers["X-Coderund-Signature"].startswith("sha256=")
            document = json.loads(sent)
            assert document["token"] == body["token"] and document["stdout"] == "Nwo=\n"
            assert document["status"] == {"id": 3, "description": "Accepted"}
    finally:
        stop.set()
        await running
        await receiver.stop()
