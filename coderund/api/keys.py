"""Typed keys of what the application carries."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from ..plugins import Plugins
from ..usecases import Accounts, ApiKeys, FileStore, LiveRuns, Sandboxes, TaskService

SESSION_COOKIE = "coderund_session"


@dataclass
class Services:
    accounts: Accounts
    tasks: TaskService
    plugins: Plugins
    live: LiveRuns
    keys: ApiKeys
    files: FileStore
    sandboxes: Sandboxes
    # name → a coroutine that raises when that dependency does not answer
    checks: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)


SERVICES = web.AppKey("services", Services)
PROTECTED = web.AppKey("protected", dict)  # (method, resource) of a protected route: the scope it needs
USER_ID = web.RequestKey("user_id", int)
TOKEN = web.RequestKey("token", str)
