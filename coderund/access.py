"""Who may do what: API keys' form and scopes, the principal a request acts as, daily quotas.
Pure rules, no I/O."""
from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import ValidationFailed

KEY_PREFIX = "crd_"  # fixed, so that secret scanners can recognise a leaked key
E2B_KEY_PREFIX = "e2b_"  # the form E2B's SDKs accept: "e2b_" and lowercase hex
KEY_FORMS = ("coderund", "e2b")
KEY_BYTES = 32
IMPORTED_MIN_CHARS = 24  # a key brought from Jobe or Judge0 keeps its value; shorter ones are too guessable
TASKS_WRITE, TASKS_READ, ACCOUNT = "tasks:write", "tasks:read", "account"
SCOPES = (TASKS_WRITE, TASKS_READ, ACCOUNT)
DEFAULT_SCOPES = (TASKS_WRITE, TASKS_READ)
MAX_KEY_NAME = 100
MAX_EXPIRY_DAYS = 3650


@dataclass(frozen=True)
class Principal:
    """Whom a request acts for, and what it may do: a login session may do everything."""

    user_id: int
    scopes: frozenset[str] = frozenset(SCOPES)
    key_id: uuid.UUID | None = None


@dataclass(frozen=True)
class KeyRequest:
    name: str
    scopes: tuple[str, ...]
    expires_in_days: int | None
    form: str = "coderund"


def new_key(form: str = "coderund") -> str:
    """256 random bits either way: "crd_" and URL-safe base64, or "e2b_" and hex for E2B's SDKs."""
    return E2B_KEY_PREFIX + secrets.token_hex(KEY_BYTES) if form == "e2b" else KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def key_hash(key: str) -> bytes:
    """SHA-256: a key made here is 256 random bits, so no slow hash is needed against guessing, and a
    lookup costs microseconds (docs/security.md)."""
    return hashlib.sha256(key.encode()).digest()


def key_prefix(key: str) -> str:
    """What lists show of a key: enough to tell keys apart, far too little to use."""
    return key[: len(KEY_PREFIX) + 6] if key.startswith((KEY_PREFIX, E2B_KEY_PREFIX)) else key[:4]


def check_imported(key: str) -> str:
    if len(key) < IMPORTED_MIN_CHARS or not key.isascii() or not key.isprintable() or " " in key:
        raise ValidationFailed(f"An imported key must be at least {IMPORTED_MIN_CHARS} printable ASCII characters, no spaces.")
    return key


def parse_scopes(scopes: Any) -> tuple[str, ...]:
    if scopes is None:
        return DEFAULT_SCOPES
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) and s in SCOPES for s in scopes):
        raise ValidationFailed(f"'scopes' must be a non-empty list of: {', '.join(SCOPES)}.")
    return tuple(s for s in SCOPES if s in scopes)


def parse_key_request(body: Any) -> KeyRequest:
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.")
    name = body.get("name")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_KEY_NAME or not name.isprintable():
        raise ValidationFailed(f"'name' must be 1 to {MAX_KEY_NAME} printable characters.")
    days = body.get("expires_in_days")
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_EXPIRY_DAYS):
        raise ValidationFailed(f"'expires_in_days' must be a whole number from 1 to {MAX_EXPIRY_DAYS}.")
    form = body.get("form", "coderund")
    if form not in KEY_FORMS:
        raise ValidationFailed(f"'form' must be one of {', '.join(KEY_FORMS)}.")
    return KeyRequest(name.strip(), parse_scopes(body.get("scopes")), days, form)


def expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at <= now


def seconds_to_next_day(now: datetime) -> int:
    """Until the next UTC midnight, when daily quotas start again."""
    now = now.astimezone(UTC)
    tomorrow = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return max(1, int((tomorrow - now).total_seconds() + 0.999))


def cpu_quota_left(used_cpu_ms: int, quota_cpu_s: int) -> bool:
    """Whether a submission may start today (0 is no quota)."""
    return quota_cpu_s <= 0 or used_cpu_ms < quota_cpu_s * 1000
