"""The egress proxy itself (sandbox/egress.py) on real sockets: its caps and its reading of a request
hold against a client that talks to its Unix socket directly, as a sandbox's program may. Only
loopback: the one upstream is on 127.0.0.1, the only address the rules let in."""
from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from coderund.addresses import parse_networks
from coderund.network import NetworkPolicy
from coderund.sandbox.egress import MAX_OPEN, Egress, Rules
from coderund.sandbox.options import EGRESS_SOCKET
from tests.conftest import free_port

MAX_CONNECTIONS = 5


@pytest.fixture
async def proxy(tmp_path):
    """A session allowing a.test (127.0.0.1, where an upstream answers with the headers it got), and
    a function that sends bytes to its socket and returns the answer's status line."""
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    egress = Egress(Rules(NetworkPolicy(("*",)), resolve="static", hosts={"a.test": "127.0.0.1"},
                          allow_private=parse_networks("127.0.0.1/32"), max_connections=MAX_CONNECTIONS, ports=None),
                    tmp_path / "egress")
    session = await egress.open("probe", NetworkPolicy(("a.test",)))

    async def ask(data: bytes) -> bytes:
        reader, writer = await asyncio.open_unix_connection(str(session.folder / EGRESS_SOCKET))
        writer.write(data)
        await writer.drain()
        answer = await reader.read(200)
        writer.close()
        return answer.split(b"\r\n")[0]

    yield session, ask, port, seen
    await egress.close(session)
    await runner.cleanup()


async def test_connections_asked_for_at_once_do_not_pass_the_cap(proxy):
    session, ask, port, _ = proxy
    answers = await asyncio.gather(*(ask(b"CONNECT a.test:%d HTTP/1.1\r\n\r\n" % port) for _ in range(6 * MAX_CONNECTIONS)))
    assert sum(b" 200 " in a for a in answers) == MAX_CONNECTIONS == session.allowed
    assert sum(b" 429 " in a for a in answers) == 5 * MAX_CONNECTIONS


async def test_a_failed_connection_does_not_use_the_cap(proxy):
    session, ask, port, _ = proxy
    closed = free_port()  # nothing listens there
    for _ in range(MAX_CONNECTIONS + 1):
        assert b" 502 " in await ask(b"CONNECT a.test:%d HTTP/1.1\r\n\r\n" % closed)
    assert session.allowed == 0 and b" 200 " in await ask(b"CONNECT a.test:%d HTTP/1.1\r\n\r\n" % port)


async def test_connections_open_at_once_are_capped(proxy):
    """Idle connections (no head sent) hold the worker's descriptors: past MAX_OPEN a new one is
    refused at once, and once they close, new ones are served again."""
    session, ask, port, _ = proxy
    idle = [await asyncio.open_unix_connection(str(session.folder / EGRESS_SOCKET)) for _ in range(MAX_OPEN)]
    await asyncio.sleep(0.2)
    assert len(session.handlers) == MAX_OPEN
    assert b" 429 " in await ask(b"CONNECT a.test:%d HTTP/1.1\r\n\r\n" % port)
    for _, writer in idle:
        writer.close()
    for _ in range(50):
        if not session.handlers:
            break
        await asyncio.sleep(0.1)
    assert b" 200 " in await ask(b"CONNECT a.test:%d HTTP/1.1\r\n\r\n" % port)


async def test_an_allowed_name_opens_no_other_port_of_its_host(proxy, tmp_path):
    """--egress-ports: an allowed name's other services (a database, coderund's own API) stay shut."""
    _, _, port, _ = proxy
    egress = Egress(Rules(NetworkPolicy(("*",)), resolve="static", hosts={"a.test": "127.0.0.1"},
                          allow_private=parse_networks("127.0.0.1/32"), ports=frozenset((port,))), tmp_path / "ports")
    session = await egress.open("ports", NetworkPolicy(("a.test",)))
    try:
        async def ask(data: bytes) -> bytes:
            reader, writer = await asyncio.open_unix_connection(str(session.folder / EGRESS_SOCKET))
            writer.write(data)
            answer = await reader.read(200)
            writer.close()
            return answer.split(b"\r\n")[0]

        for other in (5432, port + 1 if port < 65535 else port - 1):
            assert b" 403 " in await ask(b"CONNECT a.test:%d HTTP/1.1\r\n\r\n" % other)
            assert b" 403 " in await ask(b"GET http://a.test:%d/ HTTP/1.1\r\nHost: a.test:%d\r\n\r\n" % (other, other))
        assert session.allowed == 0 and session.refused == 4
        assert b" 200 " in await ask(b"CONNECT a.test:%d HTTP/1.1\r\n\r\n" % port)
    finally:
        await egress.close(session)
