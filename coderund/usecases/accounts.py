"""Accounts: register, log in and out, sessions, the webhook secret; and the operator's side: users
added, listed, disabled."""
from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import metrics
from ..access import Principal
from ..addresses import client_network
from ..domain import Credentials
from ..errors import AccountDisabled, RateLimited, RegistrationClosed, Unauthorized
from ..passwords import DUMMY_HASH, hash_password, verify_password
from ..repository.rates import Rates
from ..repository.sessions import Sessions
from ..repository.users import UserListing, UserRow, Users
from .keys import ApiKeys, looks_like_key

T = TypeVar("T")
DISABLED = "This account is disabled; ask the operator of this server."


@dataclass(frozen=True)
class Login:
    token: str
    expires_in: int


class Accounts:
    def __init__(self, users: Users, sessions: Sessions, api_keys: ApiKeys, address_rates: Rates, *, max_failures: int,
                 failure_window: int, registration_open: bool = True) -> None:
        self.api_keys = api_keys
        self.users = users
        self.sessions = sessions
        self.address_rates = address_rates
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.registration_open = registration_open
        # Hashes are slow by design: a flood of them must queue, not take every core from the event loop.
        self._hashing = asyncio.Semaphore(os.cpu_count() or 1)

    async def _hash(self, client: str, fn: Callable[..., T], *args: Any) -> T:
        """A password hash for a client (its network), within its rate and the process's hashing slots."""
        if wait_s := await self.address_rates.take(client):
            metrics.LOGINS.labels("rate_limited").inc()
            raise RateLimited(f"More than {self.address_rates.per_minute} logins or registrations a minute from your"
                              f" address; try again in {wait_s} s.", wait_s)
        async with self._hashing:
            return await asyncio.to_thread(fn, *args)

    async def register(self, credentials: Credentials, address: str) -> UserRow:
        if not self.registration_open:
            raise RegistrationClosed("Sign-up is closed on this server: an operator adds users (coderund users add).")
        password_hash = await self._hash(client_network(address), hash_password, credentials.password)
        return await self.users.create(credentials.username, password_hash)

    async def login(self, credentials: Credentials, address: str) -> Login:
        # Failures count per username and client: a guesser elsewhere cannot lock the owner out.
        client = client_network(address)
        failures, retry_after = await self.sessions.login_failures(credentials.username, client)
        if failures >= self.max_failures:
            metrics.LOGINS.labels("rate_limited").inc()
            raise RateLimited("Too many failed logins for this username from your address; try again later.", retry_after)
        user = await self.users.by_username(credentials.username)
        # The same work and the same answer whether the user is unknown or the password wrong.
        valid = await self._hash(client, verify_password, credentials.password, user.password_hash if user else DUMMY_HASH)
        if user is None or not valid:
            await self.sessions.add_login_failure(credentials.username, client, self.failure_window)
            metrics.LOGINS.labels("failure").inc()
            raise Unauthorized("Unknown username or wrong password.")
        if user.disabled:  # said only to whoever knows the password
            raise AccountDisabled(DISABLED)
        login = Login(await self.sessions.create(user.id), self.sessions.ttl)
        # A disable between the read above and the session's making ends sessions before this one was
        # listed: asked again, now that it is, so it cannot outlive the disable.
        if await self.users.is_disabled(user.id):
            await self.sessions.delete(login.token)
            raise AccountDisabled(DISABLED)
        metrics.LOGINS.labels("success").inc()
        return login

    async def logout(self, token: str) -> None:
        await self.sessions.delete(token)

    async def webhook_secret(self, user_id: int, *, rotate: bool = False) -> str:
        """The key that signs the user's webhooks; made on first use, replaced by a rotation."""
        return await self.users.webhook_secret(user_id, secrets.token_hex(32) if rotate else None)

    async def named(self, username: str) -> Principal:
        """The user an operator named to serve requests that carry no credential (Judge0's keyless clients)."""
        user = await self.users.by_username(username)
        if user is None or user.disabled:
            raise Unauthorized(f"The user {username!r} that serves requests without a credential does not exist or is"
                               " disabled.")
        return Principal(user.id)

    async def authenticate(self, token: str) -> Principal:
        """A login session's user, with every scope, or an API key's principal."""
        if not looks_like_key(token) and (user_id := await self.sessions.user_id(token)) is not None:
            return Principal(user_id)
        if (principal := await self.api_keys.principal(token)) is not None:
            return principal
        raise Unauthorized("The session has expired, or the key is unknown, revoked or expired.")



class UserAdmin:
    """The operator's side of accounts (coderund users ...)."""

    def __init__(self, users: Users, sessions: Sessions) -> None:
        self.users = users
        self.sessions = sessions

    async def add(self, credentials: Credentials) -> UserRow:
        return await self.users.create(credentials.username, await asyncio.to_thread(hash_password, credentials.password))

    async def listing(self, limit: int) -> list[UserListing]:
        return await self.users.listing(limit)

    async def set_disabled(self, username: str, disabled: bool) -> tuple[int, int] | None:
        """Disables (or enables) the user, None if there is none; a disable refuses its keys and ends
        its sessions at once, and returns how many of each."""
        changed = await self.users.set_disabled(username, disabled)
        if changed is None:
            return None
        user, keys = changed
        return (await self.sessions.end_all(user.id) if disabled else 0), keys
