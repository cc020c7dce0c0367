"""Docker options of a sandbox container, built from limits by a pure function."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from docker.types import Mount

WORKDIR = "/box"  # the task's files; writable by the task
TOOLS_DIR = "/.coderund"  # the supervisor, from a read-only volume, so a run cannot tamper with it
SUPERVISOR = f"{TOOLS_DIR}/supervise"
HUB = f"{TOOLS_DIR}/hub.py"  # a stateful sandbox's first process, on the image's python3
# The supervisor's identity: root with only the capabilities it needs to start the program as
# another user (nobody, 65534, set by the supervisor) and to clean up after it. The program has none.
SUPERVISOR_USER = "0:0"
SUPERVISOR_CAPS = ["SETUID", "SETGID", "KILL", "CHOWN"]
LABEL = "coderund"
# A container with a network policy: the folder of the worker's egress socket for it (egress.py), and
# the address its forwarder (supervise.c's EGRESS_PORT) listens on, which the proxy variables name.
EGRESS_MOUNT, EGRESS_SOCKET = "/.coderund-egress", "s"
EGRESS_PROXY = "http://127.0.0.1:3128"
PATH = "/usr/local/bin:/usr/bin:/bin"
MB = 1024 * 1024
# Options of the container itself; the rest of container_options() is host configuration.
CREATE_KEYS = frozenset({"image", "command", "user", "environment", "labels", "hostname", "stdin_open",
                         "network_disabled"})


@dataclass(frozen=True)
class Isolation:
    """Everything about a container that is not the task's own limits."""

    runtime: str = "runc"
    tmpfs_mb: int = 64
    pids_limit: int = 128
    nofile: int = 256


def egress_environment() -> dict[str, str]:
    """What a container with a policy gets: its forwarder's socket, and the proxy variables that
    every common client reads (NO_PROXY keeps the sandbox's own loopback direct)."""
    proxies = {name: EGRESS_PROXY for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                                               "all_proxy", "npm_config_proxy", "npm_config_https_proxy")}
    local = "localhost,127.0.0.1,::1"
    # pip installs into the user's home, the root being read-only; Debian's pip needs leave to do so.
    return {"CODERUND_EGRESS": f"{EGRESS_MOUNT}/{EGRESS_SOCKET}", **proxies, "NO_PROXY": local, "no_proxy": local,
            "PIP_BREAK_SYSTEM_PACKAGES": "1"}


def container_options(
    *, image: str, memory_mb: int, isolation: Isolation, env: dict[str, str], labels: dict[str, str],
    tools_volume: str, pids_limit: int | None = None, command: list[str] | None = None, cpus: float = 1.0,
    disk_mb: int | None = None, work_folder: str = WORKDIR, egress: str | None = None,
) -> dict[str, Any]:
    """A task's container, or with command, disk_mb, cpus and work_folder a stateful sandbox's (its hub
    in place of the supervisor, with the same identity and the same locks). With egress (a host folder
    holding the worker's egress socket for it), that folder is mounted and the proxy variables set:
    the container still has no network of its own (egress.py)."""
    tmpfs = f"size={isolation.tmpfs_mb}m,nosuid,nodev"
    work_tmpfs = f"size={disk_mb or isolation.tmpfs_mb}m,nosuid,nodev"
    fsize = max(isolation.tmpfs_mb, disk_mb or 0) * MB
    return {
        "image": image,
        # The supervisor is the first process: it waits on the attached stdin for its one task.
        # (Not Docker's working_dir: Docker would make that folder root's, over the tmpfs's mode.)
        "command": command or [SUPERVISOR, WORKDIR],
        "stdin_open": True,
        "user": SUPERVISOR_USER,
        "environment": {"PATH": PATH, "LANG": "C.UTF-8", "HOME": work_folder, **env,
                        **(egress_environment() if egress else {})},
        "labels": labels,
        "network_mode": "none",
        # No network at all, not even Docker's "none" endpoint: an empty namespace with its own
        # loopback. It halves the start, and keeps sandboxes out of libnetwork, whose locks
        # deadlock dockerd 20.10 under heavy container churn (moby/moby#46661).
        "network_disabled": True,
        "read_only": True,
        # World-writable: the program (nobody) writes its build outputs beside its sources.
        "tmpfs": {work_folder: f"{work_tmpfs},exec,mode=1777", "/tmp": f"{tmpfs},mode=1777"},
        "mounts": [Mount(TOOLS_DIR, tools_volume, type="volume", read_only=True, no_copy=True),
                   *([Mount(EGRESS_MOUNT, egress, type="bind", read_only=True)] if egress else [])],
        "shm_size": 16 * MB,
        "cap_drop": ["ALL"],
        "cap_add": SUPERVISOR_CAPS,
        "security_opt": ["no-new-privileges"],
        "pids_limit": pids_limit or isolation.pids_limit,
        "mem_limit": memory_mb * MB,
        "memswap_limit": memory_mb * MB,
        "nano_cpus": int(cpus * 10**9),
        "ulimits": [
            {"Name": "nofile", "Soft": isolation.nofile, "Hard": isolation.nofile},
            {"Name": "fsize", "Soft": fsize, "Hard": fsize},
            {"Name": "core", "Soft": 0, "Hard": 0},
        ],
        "oom_score_adj": 1000,  # under host memory pressure, a task goes before anything else
        "log_config": {"Type": "none", "Config": {}},
        "hostname": "sandbox",
        "runtime": isolation.runtime,
    }
