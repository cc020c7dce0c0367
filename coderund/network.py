"""Network policies: which host names a task or sandbox may reach through coderund's egress proxy.

A policy is a list of host patterns: a name ("pypi.org", that name only), a wildcard ("*.example.com",
any name under example.com, not example.com itself) or "*" (any name). Only names: an address is
never a pattern, since what a name resolves to is judged by the address policy (addresses.py), and a
program never picks the address it reaches. Pure rules, no I/O.
"""
from __future__ import annotations

import contextlib
import re
import socket
from dataclasses import dataclass
from typing import Any

from .errors import ValidationFailed

MAX_PATTERNS = 64
MAX_NAME = 253
ANY = "*"
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_NAME_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*")


@dataclass(frozen=True)
class NetworkPolicy:
    allow: tuple[str, ...]  # patterns, lower case, in the order asked, no duplicates

    def document(self) -> dict[str, Any]:
        return {"allow": list(self.allow)}

    def allows(self, host: str) -> bool:
        """Whether a host name (any case, a trailing dot or not) matches one of the patterns."""
        host = host.lower().rstrip(".")
        return any(covers(pattern, host) for pattern in self.allow)


def normal_name(host: str) -> str | None:
    """A host name in lower case without a trailing dot, or None when it is not one (an address
    literal, a name with other characters, labels empty or too long)."""
    name = host.lower().rstrip(".")
    if len(name) > MAX_NAME or not _NAME_RE.fullmatch(name) or _ipv4_literal(name):
        return None
    return name


def _ipv4_literal(name: str) -> bool:
    """Whether a resolver would take it for an IPv4 address (inet_aton's forms: 127.1, 0x7f.1, 2130706433)."""
    with contextlib.suppress(OSError):
        socket.inet_aton(name)
        return True
    return False


def _pattern(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ValidationFailed(f"'{where}' must be a string: a host name, '*.' and a domain, or '*'.")
    if value == ANY:
        return ANY
    name = normal_name(value[2:] if value.startswith("*.") else value)
    if name is None:
        raise ValidationFailed(f"'{where}' {value[:100]!r} is not a host name, '*.' and a domain, or '*' (addresses are"
                               " not allowed: a name's addresses are checked by the server).")
    return f"*.{name}" if value.startswith("*.") else name


def parse_policy(value: object, name: str = "network") -> NetworkPolicy:
    """A request's {"allow": [...]}; ValidationFailed naming `name` otherwise."""
    if not isinstance(value, dict) or set(value) != {"allow"}:
        raise ValidationFailed(f"'{name}' must be an object with one field, 'allow': a list of host names or patterns.")
    return NetworkPolicy(parse_patterns(value["allow"], f"{name}.allow"))


def parse_patterns(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_PATTERNS:
        raise ValidationFailed(f"'{name}' must be a list of at most {MAX_PATTERNS} host names or patterns.")
    patterns = [_pattern(item, f"{name}[{i}]") for i, item in enumerate(value)]
    return tuple(dict.fromkeys(patterns))


def covers(pattern: str, host: str) -> bool:
    """Whether a pattern matches a host name, or (host a wildcard itself) every name that one matches."""
    if pattern == ANY:
        return True
    if host == ANY:
        return False
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host


def clamp(policy: NetworkPolicy, widest: NetworkPolicy, name: str = "network") -> NetworkPolicy:
    """The policy within the operator's widest: a pattern inside it stays, a wider one is narrowed to
    the widest's patterns it covers; one that shares no name with it is refused (ValidationFailed),
    as a silent drop would leave a program failing for no reason it could see."""
    kept: list[str] = []
    for i, pattern in enumerate(policy.allow):
        if any(covers(most, pattern) for most in widest.allow):
            kept.append(pattern)
            continue
        narrowed = [most for most in widest.allow if covers(pattern, most)]
        if not narrowed:
            raise ValidationFailed(f"'{name}.allow[{i}]' {pattern!r} is outside what this server allows"
                                   f" ({', '.join(widest.allow) or 'nothing'}).")
        kept.extend(narrowed)
    return NetworkPolicy(tuple(dict.fromkeys(kept)))
