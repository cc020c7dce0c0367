"""E2B's REST API (sandboxes and templates), translated: its bodies into coderund's sandbox requests,
sandbox rows into its documents, its list filters and pages. Pure: no I/O.

E2B's templates are coderund's sandbox languages: "base" is the JavaScript image (bash, python3 and
node), "code-interpreter-v1" the Python one (numpy, pandas, matplotlib); "python" and "javascript"
name them too. Everything else a create asks goes through the same rules as coderund's own creates;
the sandbox's work folder, its HOME and its commands' first working folder, is /home/user, as E2B's.
"""
from __future__ import annotations

import dataclasses
import math
import re
import urllib.parse
from datetime import datetime
from typing import Any

from ...domain import iso
from ...errors import PayloadTooLarge, ValidationFailed
from ...network import NetworkPolicy, parse_patterns
from ...sandbox_requests import E2B_HOME, LANGUAGES, SandboxLimits, SandboxRequest, parse_sandbox_request

TEMPLATES = {"base": "javascript", "code-interpreter-v1": "python"}  # E2B's template → coderund's sandbox language
ALIASES = {**TEMPLATES, **{language: language for language in LANGUAGES}, "code-interpreter": "python"}
ENVD_VERSION = "0.6.4"  # the envd whose calls are served: commands' stdin (0.3.0), closing it (0.5.2), uploads
# (0.5.7), file metadata (0.6.2), watchers' entries (0.6.3) and their network mounts (0.6.4, none here)
CLIENT_ID = "coderund"
STATES = ("running", "paused")
PAGE_MAX = 100
MAX_QUERY_CHARS = 4096


SANDBOX_HOST = re.compile(r"(\d{1,5})-([A-Za-z0-9_-]{1,64})\.")  # E2B's per-sandbox host: {port}-{sandboxID}.{domain}


def sandbox_host(host: str, domain: str) -> tuple[str, str] | None:
    """The port and sandbox a host of the form {port}-{sandboxID}.{domain} names; None for another host."""
    found = SANDBOX_HOST.match(host.lower())
    if found is None or host.lower()[found.end():] != domain.lower():
        return None
    return found[1], host[found.start(2):found.end(2)]


class E2bError(Exception):
    """Answered as E2B's API does: {"code": status, "message": ...}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error(status: int, message: str) -> dict[str, Any]:
    return {"code": status, "message": message}


DENY_ALL = {"0.0.0.0/0", "::/0"}


def template_of(language: str) -> str:
    return next((template for template, of in TEMPLATES.items() if of == language), language)


def parse_new_sandbox(body: Any, limits: SandboxLimits, internet: NetworkPolicy | None = None) -> SandboxRequest:
    """A NewSandbox as coderund's request: its timeout clamped to the operator's lifetimes; what a
    coderund sandbox cannot be (MCP servers, volumes) a 400 naming it. Its network: network.allowOut's
    host names, or with allow_internet_access the operator's widest policy (internet; None where
    egress is off, and then E2B's default switch changes nothing)."""
    if not isinstance(body, dict):
        raise E2bError(400, "The body must be a JSON object.")
    template = body.get("templateID")
    if not isinstance(template, str) or not template:
        raise E2bError(400, "'templateID' names the template to start from.")
    if template not in ALIASES:
        raise E2bError(404, f"Template '{template[:100]}' not found; this server has {', '.join(TEMPLATES)}.")
    for name, why in (("mcp", "MCP servers"), ("volumeMounts", "volumes")):
        if body.get(name):
            raise E2bError(400, f"'{name}': {why} are not offered by this server.")
    timeout = body.get("timeout", 15)
    if not isinstance(timeout, int) or isinstance(timeout, bool):
        raise E2bError(400, "'timeout' must be a whole number of seconds.")
    native = {"language": ALIASES[template], "timeout_s": max(1, min(timeout, limits.max_lifetime_s)),
              "env": body.get("envVars") or {}, "metadata": body.get("metadata") or {}}
    try:
        return dataclasses.replace(parse_sandbox_request(native, limits), work_folder=E2B_HOME,
                                   network=_network(body, internet))
    except (ValidationFailed, PayloadTooLarge) as e:
        raise E2bError(400, e.message.replace("'env'", "'envVars'")) from None


def _network(body: dict[str, Any], internet: NetworkPolicy | None) -> NetworkPolicy | None:
    """E2B's egress rules as a policy: coderund's is an allow list of names, denying the rest, so
    denyOut may only say that (0.0.0.0/0); addresses are never allowed, only names. The wire's names
    are camelCase (the SDK's allow_out is allowOut)."""
    network = body.get("network")
    if network is None:
        return internet if body.get("allow_internet_access") is True else None
    # allowPublicTraffic and maskRequestHost concern calls into the sandbox, which always need its token here
    if not isinstance(network, dict) or set(network) - {"allowOut", "denyOut", "allowPublicTraffic", "maskRequestHost"}:
        raise E2bError(400, "'network' takes allowOut (host names) and denyOut (0.0.0.0/0 only).")
    if not isinstance(network.get("allowPublicTraffic", True), bool) or not isinstance(network.get("maskRequestHost", ""), str):
        raise E2bError(400, "'network.allowPublicTraffic' is true or false, 'network.maskRequestHost' a string.")
    deny = network.get("denyOut") or []
    if not isinstance(deny, list) or not all(isinstance(item, str) for item in deny) or set(deny) - DENY_ALL:
        raise E2bError(400, "'network.denyOut': this server allows a list of host names and denies the rest;"
                            " denyOut may only be 0.0.0.0/0.")
    if "allowOut" not in network and "denyOut" not in network:
        return internet if body.get("allow_internet_access") is True else None
    return NetworkPolicy(parse_patterns(network.get("allowOut") or [], "network.allowOut"))


def parse_timeout(body: Any, name: str, limits: SandboxLimits, default: int | None = None) -> int:
    """A timeout in seconds from now, clamped to the operator's lifetimes."""
    value = body.get(name, default) if isinstance(body, dict) else default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise E2bError(400, f"'{name}' must be a whole number of seconds, 0 or more.")
    return max(1, min(value, limits.max_lifetime_s))


def state_of(row: Any) -> str:
    return "paused" if row.state == "paused" else "running"


def sandbox(row: Any) -> dict[str, Any]:
    """E2B's Sandbox: what a create or connect answers, the envd access token included."""
    return {"templateID": template_of(row.language), "sandboxID": str(row.id), "alias": template_of(row.language),
            "clientID": CLIENT_ID, "envdVersion": ENVD_VERSION, "envdAccessToken": row.access_token,
            "trafficAccessToken": row.access_token, "domain": None}  # the code interpreter's SDK sends the latter


def listed(row: Any) -> dict[str, Any]:
    return {"templateID": template_of(row.language), "alias": template_of(row.language), "sandboxID": str(row.id),
            "clientID": CLIENT_ID, "startedAt": iso(row.created_at), "endAt": iso(row.expires_at),
            "cpuCount": max(1, math.ceil(row.cpus)), "memoryMB": row.memory_mb, "diskSizeMB": row.disk_mb,
            "metadata": row.metadata, "state": state_of(row), "envdVersion": ENVD_VERSION}


def detail(row: Any) -> dict[str, Any]:
    return {**listed(row), "envdAccessToken": row.access_token, "domain": None,
            "allowInternetAccess": row.network is not None}


def parse_list(query: dict[str, str], default_states: tuple[str, ...]) -> dict[str, Any]:
    """GET /v2/sandboxes' filters and page: metadata ("k=v&k2=v2", URL-encoded), state (comma
    separated), template, startedAfter, order, limit and nextToken."""
    if any(len(value) > MAX_QUERY_CHARS for value in query.values()):
        raise E2bError(400, f"A query parameter is over {MAX_QUERY_CHARS} characters.")
    metadata = dict(urllib.parse.parse_qsl(query.get("metadata", ""), keep_blank_values=True))
    states = tuple(s for s in query.get("state", "").split(",") if s) or default_states
    if any(s not in STATES for s in states):
        raise E2bError(400, f"'state' takes {', '.join(STATES)}, comma separated.")
    template = query.get("template")
    after = None
    if "startedAfter" in query:
        try:
            after = datetime.fromisoformat(query["startedAfter"].replace("Z", "+00:00"))
        except ValueError:
            raise E2bError(400, "'startedAfter' must be an RFC 3339 time.") from None
        if after.tzinfo is None:
            raise E2bError(400, "'startedAfter' must name its time zone.")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise E2bError(400, "'order' is asc or desc.")
    limit, start = query.get("limit", str(PAGE_MAX)), query.get("nextToken", "0")
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= PAGE_MAX:
        raise E2bError(400, f"'limit' must be a whole number from 1 to {PAGE_MAX}.")
    if not (start.isascii() and start.isdigit()) or len(start) > 9:
        raise E2bError(400, "'nextToken' is not one this server gave.")
    return {"metadata": metadata, "states": states, "template": template, "after": after,
            "descending": order == "desc", "limit": int(limit), "start": int(start)}


def page(rows: list[Any], asked: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The sandboxes that pass the filters, one page of them, and the token of the next page if any."""
    chosen = [row for row in rows if state_of(row) in asked["states"]
              and (asked["template"] is None or ALIASES.get(asked["template"]) == row.language)
              and (asked["after"] is None or row.created_at >= asked["after"])]
    chosen.sort(key=lambda row: row.created_at, reverse=asked["descending"])
    start, end = asked["start"], asked["start"] + asked["limit"]
    return [listed(row) for row in chosen[start:end]], str(end) if end < len(chosen) else None


def templates(limits: SandboxLimits, started: datetime) -> list[dict[str, Any]]:
    """The templates, as E2B lists a team's."""
    return [{"templateID": template, "buildID": f"{language}-image", "cpuCount": max(1, math.ceil(limits.cpus)),
             "memoryMB": limits.memory_mb, "diskSizeMB": limits.disk_mb, "public": True, "aliases": [template],
             "names": [template], "createdAt": iso(started), "updatedAt": iso(started), "createdBy": None,
             "lastSpawnedAt": None, "spawnCount": 0, "buildCount": 1, "envdVersion": ENVD_VERSION,
             "buildStatus": "ready"} for template, language in TEMPLATES.items()]
