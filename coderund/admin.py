"""The operator's commands on the database: `coderund keys ...` and `coderund users ...`."""
from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from . import domain
from .access import KEY_FORMS, SCOPES, KeyRequest, parse_scopes
from .config import ConfigError, Settings
from .errors import AppError
from .repository.db import Database
from .repository.keys import Keys
from .repository.sessions import Sessions
from .repository.usage import QUOTA_FIELDS, Usage
from .repository.users import Users
from .usecases import ApiKeys, UserAdmin

COMMANDS = ("keys", "users")
LIST_LIMIT = 1000  # users a `users list` prints unless told


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
    users = commands.add_parser("users", allow_abbrev=False,
                                help="users: add, list, disable, enable, quotas (an operator's command)")
    user_commands = users.add_subparsers(dest="users_command", required=True)
    add_user = user_commands.add_parser("add", parents=[settings], allow_abbrev=False,
                                        help="make a user; the password is read from standard input (one line)")
    add_user.add_argument("username", metavar="NAME")
    add_user.add_argument("--password-stdin", action="store_true", required=True,
                          help="read the password from standard input (a prompt where it is a terminal)")
    list_users = user_commands.add_parser("list", parents=[settings], allow_abbrev=False,
                                          help="the users, their state and their own quotas")
    list_users.add_argument("--limit", type=int, default=LIST_LIMIT, help=f"at most this many (default {LIST_LIMIT})")
    for verb, what in (("disable", "refuse the user's logins, sessions and API keys at once (its data is kept)"),
                       ("enable", "let a disabled user log in again (its keys work again; its old sessions stay ended)")):
        user_commands.add_parser(verb, parents=[settings], allow_abbrev=False, help=what).add_argument("username", metavar="NAME")
    quota = user_commands.add_parser("set-quota", parents=[settings], allow_abbrev=False, help="set a user's quotas (0 = unlimited)")
    quota.add_argument("username", metavar="NAME")
    quota.add_argument("--cpu-s-per-day", type=int, help="CPU seconds a UTC day")
    quota.add_argument("--max-pending", type=int, help="unfinished tasks at once")
    quota.add_argument("--per-minute", type=int, help="submissions a minute")
    quota.add_argument("--default", action="store_true",
                       help="back to the server's defaults for the quotas named, or for all of them when none is named")


async def run(args: dict[str, Any], settings: Settings) -> int:
    db = Database(settings.database_url)
    await db.open()
    try:
        if args["command"] == "keys":
            return await _keys(args, db)
        if args["users_command"] == "set-quota":
            return await _set_quota(args, db)
        return await _users(args, settings, db)
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


def _password() -> str:
    """One line of standard input (its line end is not part of it), or a prompt at a terminal."""
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    line = sys.stdin.readline(domain.PASSWORD_LENGTH[1] + 3)  # one character too many is enough to refuse it
    return line.removesuffix("\n").removesuffix("\r")


async def _users(args: dict[str, Any], settings: Settings, db: Database) -> int:
    sessions = Sessions(settings.redis_url, ttl=settings.session_ttl)  # connects only when a disable ends sessions
    try:
        await _user_command(args, UserAdmin(Users(db), sessions))
    finally:
        await sessions.close()
    return 0


async def _user_command(args: dict[str, Any], admin: UserAdmin) -> None:
    command = args["users_command"]
    if command == "add":
        user = await admin.add(domain.parse_credentials({"username": args["username"], "password": _password()}))
        print(f"added {user.username} (id {user.id})")
    elif command == "list":
        if args["limit"] < 1:
            raise ConfigError("--limit is 1 or more")
        users = await admin.listing(args["limit"] + 1)
        for user in users[:args["limit"]]:
            quotas = " ".join(f"{name}={value}" for name, value in user.quotas.items() if value is not None)
            state = f"disabled {user.disabled_at.isoformat(timespec='seconds')}" if user.disabled_at else "active"
            print(f"{user.id}  {user.username}  {state}  created {user.created_at.isoformat(timespec='seconds')}"
                  + (f"  {quotas}" if quotas else ""))
        if len(users) > args["limit"]:
            print(f"(more than {args['limit']}: --limit shows more)")
    else:
        done = await admin.set_disabled(args["username"], command == "disable")
        if done is None:
            raise ConfigError(f"there is no user {args['username']!r}")
        ended, keys = done
        print(f"{args['username']}: disabled ({ended} session(s) ended, {keys} API key(s) refused)"
              if command == "disable" else f"{args['username']}: enabled")


async def _set_quota(args: dict[str, Any], db: Database) -> int:
    given = {name: args[name] for name in QUOTA_FIELDS if args[name] is not None}
    if not given and args["default"]:
        given = dict.fromkeys(QUOTA_FIELDS, 0)
    if not given:
        raise ConfigError("name at least one quota: --cpu-s-per-day, --max-pending, --per-minute (or --default for all)")
    if any(value < 0 for value in given.values()):
        raise ConfigError("a quota is 0 (unlimited) or more")
    changes = {name: None if args["default"] else value for name, value in given.items()}
    if not await Usage(db).set_quota(args["username"], changes):
        raise ConfigError(f"there is no user {args['username']!r}")
    print(f"{args['username']}: " + ", ".join(f"{name} = {'default' if value is None else value}" for name, value in changes.items()))
    return 0
