"""Outbound HTTP to users' callback URLs: only to global addresses (unless the operator allows
others), checked again at every delivery on the very addresses the connection uses, so a name that
resolves elsewhere later (DNS rebinding) reaches nothing private."""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from ..addresses import ascii_host, is_allowed

TIMEOUT_S = 5


class CallbackFailed(Exception):
    """A callback URL could not be reached, or was not allowed to be."""


class AddressRefused(CallbackFailed):
    """The URL's host is, or resolves to, an address that is not global."""


class GlobalOnly(AbstractResolver):
    """A resolver that answers only a host's global addresses, and refuses a host that has none."""

    def __init__(self) -> None:
        self._resolver = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        usable = [entry for entry in found if is_allowed(entry["host"])]
        if not usable:
            raise AddressRefused(f"{host} resolves only to addresses that are not global")
        return usable

    async def close(self) -> None:
        await self._resolver.close()


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


async def check(url: str, allow_private: bool) -> None:
    """Raises AddressRefused for a host that is, or resolves to, a non-global address, and OSError for
    one that does not resolve."""
    host = ascii_host(urlsplit(url).hostname or "")
    if host is None:
        raise OSError("the host is not a DNS name")
    if _is_literal(host):
        addresses = [host]
    else:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        addresses = [str(info[4][0]) for info in infos]
    if not allow_private and not all(is_allowed(a) for a in addresses):
        raise AddressRefused(f"{host} is, or resolves to, an address that is not global")


class Callbacks:
    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, method: str, url: str, body: bytes, headers: dict[str, str]) -> int:
        """Sends body (POST, or PUT for Judge0's callbacks) and returns the status; CallbackFailed for a refused address, a timeout, a lost connection."""
        host = urlsplit(url).hostname or ""
        # A name is checked by the resolver, on the addresses it connects to; a literal here.
        if not self.allow_private and _is_literal(host) and not is_allowed(host):
            raise AddressRefused(f"{host} is not a global address")
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=None if self.allow_private else GlobalOnly(), use_dns_cache=False)
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        try:
            async with self._session.request(method, url, data=body, headers=headers, allow_redirects=False) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            refused = e.__cause__ if isinstance(e.__cause__, AddressRefused) else None
            raise refused or CallbackFailed(f"{type(e).__name__}: {e}") from e
