"""The egress proxy: the only way out of a sandbox with a network policy.

A sandbox container has no network (network_mode none). With a policy, the worker listens on a Unix
socket in a folder of its own for that container, bind-mounted into it; the container's forwarder
(supervise.c, start_egress) listens on 127.0.0.1:3128 inside and hands each connection to that socket,
and the proxy variables of the container's environment name that address, so pip, curl, git,
requests and urllib use it unchanged. Which socket a connection came in on tells whose it is.

The proxy speaks HTTP/1.1 forward-proxy: CONNECT host:port (a tunnel whose bytes it never reads: HTTPS
stays end to end) and plain-HTTP requests with an absolute URI (one request a connection, sent with
Connection: close). For either it takes only a host *name*, checks it against the policy in force
now (a sandbox's may be replaced at any time), resolves it itself (the system's resolver or the
operator's static table), keeps only the addresses the address policy allows (addresses.py, the
one webhooks use) and connects to exactly one of those: the address checked is the address reached.
Every connection and byte is counted per session and in /metrics; past a session's caps its
connections close.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .. import metrics
from ..addresses import Networks, is_allowed
from ..network import NetworkPolicy, normal_name
from .engine import SandboxError
from .options import EGRESS_SOCKET

log = logging.getLogger(__name__)
MAX_HEAD = 16 * 1024  # a request's line and headers
MAX_HEADERS = 100
HEAD_TIMEOUT_S = 30
RESOLVE_TIMEOUT_S = 10
CONNECT_TIMEOUT_S = 10
CHUNK = 64 * 1024
# Connections of one session open at once, a request's head awaited or a tunnel copied: each holds the
# worker's descriptors, which a program's own connections to its socket must not use up.
MAX_OPEN = 64
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# A lone CR or LF (or another control byte) in a value: an upstream that ends lines at a bare LF
# would read a header of the client's own after it, unchecked (Host, Transfer-Encoding).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "proxy-connection",
                        "te", "trailer", "upgrade"})
REASONS = {400: "Bad Request", 403: "Forbidden", 411: "Length Required", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 502: "Bad Gateway"}


@dataclass(frozen=True)
class Rules:
    """The operator's: how names resolve, what else may be reached, the caps, the widest policy."""

    widest: NetworkPolicy
    resolve: str = "system"  # or "static": only hosts
    hosts: dict[str, str] = field(default_factory=dict)  # name: address, before the system's resolver
    allow_private: Networks = ()
    max_bytes: int = 1 << 30
    max_connections: int = 256
    ports: frozenset[int] | None = frozenset((80, 443))  # None: any


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Ask:
    """What a client asked for: a tunnel to host:port, or one plain-HTTP request there."""

    host: str
    port: int
    tunnel: bool
    head: bytes = b""  # plain HTTP: the request as it goes upstream
    body: int = 0  # plain HTTP: the bytes of body that follow the head


def parse_request(raw: bytes) -> Ask:
    """A proxy request's head (through its blank line); Refused with a status otherwise. The host is
    whatever the client named: whether it is a name at all is the policy's check."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise Refused(400, "not an HTTP/1.1 request line")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name) or _CONTROL.search(value) or len(headers) >= MAX_HEADERS:
            raise Refused(400, "malformed or too many headers")
        headers.append((name, value.strip()))
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        return Ask(_authority_host(host), _port(port), tunnel=True)
    return _plain(method, target, version, headers)


def _authority_host(host: str) -> str:
    if not host or "@" in host:
        raise Refused(400, "the target must be host:port, without user information")
    return host


def _whole(text: str) -> bool:
    """Only ASCII digits: str.isdigit also takes ones int() refuses (latin-1's superscripts)."""
    return text.isascii() and text.isdigit()


def _port(text: str) -> int:
    if not _whole(text) or not 0 < int(text) < 65536:
        raise Refused(400, "the target's port is not a TCP port")
    return int(text)


def _plain(method: str, target: str, version: str, headers: list[tuple[str, str]]) -> Ask:
    if not target[:7].lower() == "http://":
        raise Refused(400, "a plain request needs an absolute http:// URI (https goes through CONNECT)")
    url = urlsplit(target)
    if "@" in url.netloc:
        raise Refused(400, "user information in the URI is not forwarded")
    host, port = url.netloc, "80"
    if not host.endswith("]") and ":" in host:
        host, port = host.rsplit(":", 1)
    asked = [value for name, value in headers if name.lower() == "host"]
    if len(asked) > 1 or (asked and asked[0].lower() not in (url.netloc.lower(), f"{host.lower()}:{port}",
                                                             host.lower() if port == "80" else None)):
        raise Refused(400, "the Host header names another host than the URI")
    if any(name.lower() == "transfer-encoding" for name, _ in headers):
        raise Refused(411, "a request body must come with Content-Length")
    lengths = {value for name, value in headers if name.lower() == "content-length"}
    if len(lengths) > 1 or (lengths and not _whole(next(iter(lengths)))):
        raise Refused(400, "a bad Content-Length")
    connection = {token.strip().lower() for name, value in headers if name.lower() == "connection"
                  for token in value.split(",")}
    kept = [(name, value) for name, value in headers
            if name.lower() not in HOP_BY_HOP and name.lower() not in connection and name.lower() != "host"]
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    head = "".join([f"{method} {path} {version}\r\nHost: {url.netloc}\r\n",
                    *(f"{name}: {value}\r\n" for name, value in kept), "Connection: close\r\n\r\n"])
    return Ask(_authority_host(host), _port(port), tunnel=False, head=head.encode("latin-1"),
               body=int(next(iter(lengths), "0")))


def refusal(status: int, reason: str) -> bytes:
    text = f"coderund egress: {reason}\n".encode()
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: text/plain\r\nContent-Length: {len(text)}\r\n"
            "Connection: close\r\n\r\n").encode() + text


class CapReached(Exception):
    pass


@dataclass(eq=False)
class Session:
    """One task's or sandbox's way out: its socket, its policy (replaceable), its counts."""

    key: str
    policy: NetworkPolicy
    folder: Path
    server: asyncio.AbstractServer | None = None
    allowed: int = 0
    refused: int = 0
    bytes: int = 0
    over: str = ""  # the cap reached, once it is
    handlers: dict[asyncio.Task[None], str] = field(default_factory=dict)  # each connection's, and its host once known

    def counts(self) -> dict[str, int]:
        return {"allowed": self.allowed, "refused": self.refused, "bytes": self.bytes}


class Egress:
    def __init__(self, rules: Rules, root: Path) -> None:
        self.rules = rules
        self.root = root

    async def open(self, key: str, policy: NetworkPolicy) -> Session:
        """A session's socket, listening; close it when its container is gone."""
        folder = self.root / key
        shutil.rmtree(folder, ignore_errors=True)  # a worker's leftover of an earlier attempt
        session = Session(key, policy, folder)
        path = str(folder / EGRESS_SOCKET)
        try:
            # Only root (the engine, at the mount) passes the root folder: no one else on the host finds
            # or reaches a session's socket. Inside the container its own folder is all there is.
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.root.chmod(0o700)
            folder.mkdir(mode=0o755)
            session.server = await asyncio.start_unix_server(functools.partial(self._serve, session), path, limit=MAX_HEAD)
            os.chmod(path, 0o666)  # the forwarder runs as nobody
        except OSError as e:
            await self.close(session)
            raise SandboxError(f"egress: cannot listen on {path}: {e}") from e
        return session

    def replace(self, session: Session, policy: NetworkPolicy) -> None:
        """A new policy, in force at once: open connections to hosts outside it are closed."""
        session.policy = policy
        for handler, host in list(session.handlers.items()):
            if host and not policy.allows(host):
                handler.cancel()

    async def close(self, session: Session) -> None:
        if session.server is not None:
            session.server.close()
        for handler in list(session.handlers):
            handler.cancel()
        if session.handlers:
            await asyncio.wait(list(session.handlers), timeout=5)
        shutil.rmtree(session.folder, ignore_errors=True)
        log.info("egress %s: %s", session.key, session.counts())

    async def _serve(self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        session.handlers[handler] = ""
        try:
            if len(session.handlers) > MAX_OPEN:
                raise Refused(429, f"this run has {MAX_OPEN} connections open")
            await self._handle(session, reader, writer)
        except Refused as e:
            await self._refuse(session, writer, e)
        except (ConnectionError, CapReached, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled: its session closed, its host fell out of the policy, or a cap was reached
        finally:
            session.handlers.pop(handler, None)
            writer.close()

    async def _handle(self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            except asyncio.LimitOverrunError:
                raise Refused(431, f"the request's head is over {MAX_HEAD} bytes") from None
            except (asyncio.IncompleteReadError, TimeoutError):
                return  # nothing was asked
            ask = parse_request(raw)
            upstream = await self._connect(session, ask)
        except Refused as e:
            await self._refuse(session, writer, e)
            return
        up_reader, up_writer = upstream
        try:
            if ask.tunnel:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                self._count(session, len(ask.head), "out")
                up_writer.write(ask.head)
            out = asyncio.ensure_future(self._copy(session, reader, up_writer, "out", None if ask.tunnel else ask.body))
            try:
                await self._copy(session, up_reader, writer, "in", None)
            finally:
                out.cancel()
                await asyncio.gather(out, return_exceptions=True)
        finally:
            up_writer.close()

    async def _refuse(self, session: Session, writer: asyncio.StreamWriter, refused: Refused) -> None:
        session.refused += 1
        metrics.EGRESS_CONNECTIONS.labels("refused").inc()
        log.info("egress %s: refused (%d): %s", session.key, refused.status, refused.reason)
        writer.write(refusal(refused.status, refused.reason))
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _connect(self, session: Session, ask: Ask) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to an allowed address of an allowed name; Refused otherwise."""
        host = normal_name(ask.host)
        if host is None:
            raise Refused(403, f"{ask.host[:100]!r} is not a host name (addresses are never reached directly)")
        if not (session.policy.allows(host) and self.rules.widest.allows(host)):
            raise Refused(403, f"{host} is not in this sandbox's network policy")
        if self.rules.ports is not None and ask.port not in self.rules.ports:
            raise Refused(403, f"port {ask.port} is not one egress reaches ({', '.join(map(str, sorted(self.rules.ports)))})")
        current = asyncio.current_task()
        assert current is not None
        session.handlers[current] = host
        if session.over:
            raise Refused(429, session.over)
        if session.allowed >= self.rules.max_connections:
            raise Refused(429, f"this run's {self.rules.max_connections} connections are used")
        # Counted before the awaits below, so that connections asked for at once cannot all pass the cap;
        # given back when none is made.
        session.allowed += 1
        try:
            addresses = [a for a in await self._resolve(host, ask.port) if is_allowed(a, self.rules.allow_private)]
            if not addresses:
                raise Refused(403, f"{host} resolves to no address that may be reached (private, loopback and the like)")
            for address in addresses:
                with contextlib.suppress(OSError, TimeoutError):
                    connected = await asyncio.wait_for(asyncio.open_connection(address, ask.port, limit=CHUNK),
                                                       CONNECT_TIMEOUT_S)
                    metrics.EGRESS_CONNECTIONS.labels("allowed").inc()
                    log.debug("egress %s: %s:%d at %s", session.key, host, ask.port, address)
                    return connected
            raise Refused(502, f"{host}:{ask.port} does not answer")
        except BaseException:
            session.allowed -= 1
            raise

    async def _resolve(self, host: str, port: int) -> list[str]:
        if host in self.rules.hosts:
            return [self.rules.hosts[host]]
        if self.rules.resolve == "static":
            raise Refused(502, f"{host} does not resolve here")
        try:
            found = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), RESOLVE_TIMEOUT_S)
        except (OSError, TimeoutError):
            raise Refused(502, f"{host} does not resolve") from None
        return list(dict.fromkeys(str(info[4][0]) for info in found))

    async def _copy(self, session: Session, source: asyncio.StreamReader, target: asyncio.StreamWriter, direction: str,
                    limit: int | None) -> None:
        """Bytes from source to target until its end (or limit bytes), counted; then the target's
        writing half is closed, as a tunnel's client or server expects."""
        left = limit
        while left is None or left > 0:
            data = await source.read(CHUNK if left is None else min(CHUNK, left))
            if not data:
                break
            if left is not None:
                left -= len(data)
            self._count(session, len(data), direction)
            target.write(data)
            await target.drain()
        if limit is None and target.can_write_eof():
            with contextlib.suppress(OSError):
                target.write_eof()

    def _count(self, session: Session, size: int, direction: str) -> None:
        session.bytes += size
        metrics.EGRESS_BYTES.labels(direction).inc(size)
        if session.bytes > self.rules.max_bytes and not session.over:
            session.over = f"this run's {self.rules.max_bytes // (1024 * 1024)} MiB of network traffic are used"
            log.info("egress %s: %s", session.key, session.over)
            current = asyncio.current_task()
            for handler in list(session.handlers):
                if handler is not current:
                    handler.cancel()
            raise CapReached(session.over)
