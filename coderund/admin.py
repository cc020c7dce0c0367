"""The operator's commands on the database: `coderund keys ...` and `coderund users set-quota`."""
from __future__ import annotations

import argparse
from typing import Any

from .access import KEY_FORMS, SCOPES, KeyRequest, parse_scopes
from .config import ConfigError, Settings
from .errors import AppError
from .repository.db import Database
from .repository.keys import Keys
from .repository.usage import Usage
from .repository.users import Users
from .usecases import ApiKeys

COMMANDS = ("keys", "users")


def add_commands(commands: Any, settings: argparse.ArgumentParser) -> None:
    keys = commands.add_parser("keys", allow_abbrev=False, help="API keys of a user (an operator's command)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    add = key_commands.add_parser("add", parents=[settings], allow_abbrev=False, help="make a key (printed once), or register a given one")
    add.add_argument("--user", required=True, help="the username")
    add.add_argument("--name", required=True, help="a label for the key")
    add.add_argument("--scopes", nargs="+", choices=SCOPES, help="default: tasks:write tasks:read")
    add.add_argument("--key", help="register this value (at least 24 characters), e.g. a key clients already have")
    add.add_argument("--form", choices=KEY_FORMS, default="coderund",
                     help="of a key made here: crd_... (default), or e2b_ and hex, as E2B's SDKs require")
    add.add_argument("--expires-in-days", type=int, help="default: never")
    listing = key_commands.add_parser("list", parents=[settings], allow_abbrev=False, help="a user's keys (never the keys themselves)")
    listing.add_argument("--user", required=True)
    revoke = key_commands.add_parser("revoke", parents=[settings], allow_abbrev=False, help="revoke a key by its id")
    revoke.add_argument("key_id", metavar="ID")
    users = commands.add_parser("users", allow_abbrev=False, help="users' quotas (an operator's command)")
    user_commands = users.add_subparsers(dest="users_command", required=True)
    quota = user_commands.add_parser("set-quota", parents=[settings], allow_abbrev=False, help="set a user's quotas (0 = unlimited)")
    quota.add_argument("username", metavar="NAME")
    quota.add_argument("--cpu-s-per-day", type=int, help="CPU seconds a UTC day")
    quota.add_argument("--max-pending", type=int, help="unfinished tasks at once")
    quota.add_argument("--per-minute", type=int, help="submissions a minute")
    quota.add_argument("--default", action="store_true", help="back to the server's defaults for the quotas named")


async def run(args: dict[str, Any], settings: Settings) -> int:
    db = Database(settings.database_url)
    await db.open()
    try:
        if args["command"] == "keys":
            return await _keys(args, db)
        return await _set_quota(args, db)
    except AppError as e:
        raise ConfigError(e.message) from None
    finally:
        await db.close()


async def _user_id(db: Database, username: str) -> int:
    user = await Users(db).by_username(username)
    if user is None:
        raise ConfigError(f"there is no user {username!r}")
    return user.id


async def _keys(args: dict[str, Any], db: Database) -> int:
    keys = ApiKeys(Keys(db), None)
    if args["keys_command"] == "add":
        request = KeyRequest(args["name"], parse_scopes(args["scopes"]), args["expires_in_days"], args["form"])
        row, key = await keys.create(await _user_id(db, args["user"]), request, args["key"])
        print(f"{key}\n(id {row.id}, scopes {' '.join(row.scopes)}: the key is shown only now)")
    elif args["keys_command"] == "list":
        for row in await keys.of_user(await _user_id(db, args["user"])):
            used = row.last_used_at.isoformat(timespec="seconds") if row.last_used_at else "never"
            print(f"{row.id}  {row.prefix}...  {row.name!r}  {' '.join(row.scopes)}  used {used}"
                  + (f"  expires {row.expires_at.isoformat(timespec='seconds')}" if row.expires_at else ""))
    else:
        await keys.revoke(args["key_id"])
        print(f"revoked {args['key_id']}")
    return 0


async def _set_quota(args: dict[str, Any], db: Database) -> int:
    given = {name: args[name] for name in ("cpu_s_per_day", "max_pending", "per_minute") if args[name] is not None}
    if not given:
        raise ConfigError("name at least one quota: --cpu-s-per-day, --max-pending, --per-minute")
    if any(value < 0 for value in given.values()):
        raise ConfigError("a quota is 0 (unlimited) or more")
    changes = {name: None if args["default"] else value for name, value in given.items()}
    if not await Usage(db).set_quota(args["username"], changes):
        raise ConfigError(f"there is no user {args['username']!r}")
    print(f"{args['username']}: " + ", ".join(f"{name} = {'default' if value is None else value}" for name, value in changes.items()))
    return 0
