"""Settings: one dataclass, read once from flags and CODERUND_* environment variables."""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .addresses import is_address, parse_networks
from .errors import ValidationFailed
from .network import NetworkPolicy, normal_name, parse_patterns

PACKAGE_DIR = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    """A folder the package ships (plugins, sql): inside it once installed from a wheel (setup.py maps
    it there), at the repository's top level in a checkout or an editable install."""
    inside = PACKAGE_DIR / "data" / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name


DEFAULT_PLUGINS_DIR = shipped("plugins")
ROLES = ("api", "worker", "all")


class ConfigError(Exception):
    """A setting that cannot work; the message names it."""


def _setting(default: object, help: str, **extra: object) -> object:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Settings:
    role: str = _setting("all", "which parts to run: api, worker or all", choices=ROLES)
    host: str = _setting("0.0.0.0", "address the HTTP API listens on")
    port: int = _setting(8080, "port the HTTP API listens on")
    metrics_port: int = _setting(0, "port of /metrics in --role worker, 0 for a free one, logged (in api and all, "
                                    "/metrics is on --port)")
    database_url: str = _setting("postgresql://coderund:coderund@127.0.0.1:5432/coderund",
                                 "PostgreSQL URL; the database is made if missing (the role needs CREATEDB then); the "
                                 "default's role is the one scripts/test-env makes, for a developer's machine")
    redis_url: str = _setting("redis://127.0.0.1:6379/0", "Redis URL (sessions, login limits)")
    amqp_url: str = _setting("amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL")
    queue: str = _setting("coderund.tasks", "name of the durable RabbitMQ task queue")
    plugins_dir: str = _setting(str(DEFAULT_PLUGINS_DIR), "folder of language plugin TOML files", shown="the checkout's plugins/")
    concurrency: int = _setting(os.cpu_count() or 1, "tasks a worker runs at once", shown="CPU count")
    runtime: str = _setting("runc", "OCI runtime of sandbox containers: runc, or runsc for gVisor")
    docker_url: str = _setting("", "Docker engine URL, a unix socket or plain tcp:// (not TLS or SSH: the sandboxes' "
                                   "streams run over it)", shown="DOCKER_HOST or the local socket")
    output_limit_kb: int = _setting(64, "cap of a task's stdout and of its stderr, each, in KiB")
    tmpfs_mb: int = _setting(64, "size of a task's writable work folder, in MiB")
    pids_limit: int = _setting(128, "processes and threads a task may have at once")
    max_queue: int = _setting(10000, "tasks waiting in the queue before POST /task answers 503 queue_full")
    user_max_pending: int = _setting(100, "unfinished tasks per user before POST /task answers 429")
    user_rate: int = _setting(600, "task submissions per user per minute before POST /task answers 429 (0: no limit)")
    max_attempts: int = _setting(3, "deliveries of a task before it ends as internal_error")
    session_ttl: int = _setting(86400, "session lifetime in seconds")
    registration: str = _setting("open", "who makes accounts: open (anyone, POST /register) or closed (POST /register "
                                         "answers 403 registration_closed; an operator runs coderund users add)",
                                 choices=("open", "closed"))
    login_max_failures: int = _setting(10, "failed logins per username from one client address (IPv6: its /64) before 429")
    login_failure_window: int = _setting(300, "seconds over which failed logins are counted")
    user_cpu_s_per_day: int = _setting(0, "CPU seconds a user's tasks may use a UTC day (0 = no quota); per user: coderund users set-quota")
    max_case_seconds: int = _setting(320, "a task's test cases times its time limit, at most (64 cases at 5 s)")
    judge0_batch_max: int = _setting(20, "submissions in one Judge0 batch (POST/GET /judge0/submissions/batch)")
    judge0_anonymous_user: str = _setting("", "a user's name: /judge0 requests with no credential run as that user, within "
                                           "their quotas, as Judge0 CE's default of no authentication (empty: a "
                                           "credential is needed)")
    e2b_domain: str = _setting("", "a domain whose hosts reach E2B's API as its SDKs' E2B_DOMAIN does: api.DOMAIN, and "
                                   "{port}-{sandbox}.DOMAIN for a sandbox's calls (empty: the paths under /e2b only)")
    jobe_queue_wait_s: int = _setting(10, "seconds a Jobe run may wait in the queue before it is answered as an overload (outcome 21), as Jobe waits for a free user")
    stored_files_mb: int = _setting(64, "disk a user's stored files (Jobe's file cache) may use, in MiB; the least recently used go first")
    login_per_address: int = _setting(30, "logins and registrations a minute per client address (0 = no limit)")
    warm_max: int = _setting(8, "warm sandbox containers a worker keeps ready, all languages together (0: none)")
    warm_max_age_s: int = _setting(300, "seconds a warm container may wait for a task before it is replaced")
    warm_idle_s: int = _setting(600, "seconds without a task after which a language keeps no warm container")
    compile_cache_mb: int = _setting(512, "disk the worker's compile cache may use, in MiB (0: no cache)")
    cache_dir: str = _setting(str(Path.home() / ".cache" / "coderund"),
                              "where the worker keeps the built sandbox supervisor and the compile cache",
                              shown="~/.cache/coderund")
    image_source: str = _setting("debootstrap", "how `images build` makes images: debootstrap (no registry) or registry",
                                 choices=("debootstrap", "registry"))
    debian_mirror: str = _setting("http://deb.debian.org/debian", "Debian mirror that `images build` installs from")
    retention_days: int = _setting(30, "days a finished task (code, output, result) is kept; 0 keeps them forever")
    webhook_allow_private: bool = _setting(False, "let callback URLs reach loopback, private and other non-global "
                                           "addresses (for tests and closed networks)")
    webhook_backoff_s: float = _setting(5.0, "seconds before a failed webhook delivery is tried again; each retry "
                                        "waits 3 times longer, 5 retries in all")
    sandbox_max_per_user: int = _setting(3, "live stateful sandboxes a user may have at once before POST /sandboxes answers 429")
    sandbox_max_lifetime_s: int = _setting(86400, "longest lifetime a stateful sandbox may ask for (timeout_s; default 1 h)")
    sandbox_memory_mb: int = _setting(1024, "a stateful sandbox's memory unless it asks (memory_mb), in MiB")
    sandbox_max_memory_mb: int = _setting(4096, "most memory a stateful sandbox may ask for, in MiB")
    sandbox_disk_mb: int = _setting(256, "a stateful sandbox's writable disk unless it asks (disk_mb), in MiB; it is "
                                         "memory-backed and counts in its memory")
    sandbox_max_disk_mb: int = _setting(2048, "most disk a stateful sandbox may ask for, in MiB")
    sandbox_max_cpus: float = _setting(2.0, "most CPUs a stateful sandbox may ask for (default 1)")
    warm_sandboxes: int = _setting(1, "stateful sandboxes of the default size a worker keeps started ahead of creates (0: none)")
    sandbox_state_max_mb: int = _setting(1024, "most a paused sandbox's persisted files may take, in MiB (a pause past "
                                         "it answers 413; an idle sandbox past it is frozen in place instead)")
    sandbox_state_user_mb: int = _setting(4096, "most a user's paused sandboxes' persisted files may take together, in MiB")
    worker_max_sandboxes: int = _setting(16, "stateful sandboxes a worker hosts at once; more wait for another worker")
    egress: str = _setting("off", "network egress of tasks and sandboxes through coderund's proxy: off (a request with "
                                  "a 'network' policy is refused) or on", choices=("off", "on"))
    egress_resolve: str = _setting("system", "how the egress proxy resolves names: system (the host's resolver) or "
                                             "static (only --egress-hosts, for mirrors and tests)",
                                   choices=("system", "static"))
    egress_hosts: str = _setting("", "NAME=ADDRESS,... names the egress proxy resolves itself, before (static: instead "
                                     "of) the system's resolver")
    egress_allow_private: str = _setting("", "CIDR,... non-global networks egress may reach all the same (default none: "
                                             "loopback, private, link-local, CGNAT, metadata and the like are refused)")
    egress_max: str = _setting("*", "the widest network policy a request may ask for: host names, *.domain or *, "
                                    "comma-separated; wider requests are narrowed to it")
    egress_ports: str = _setting("80,443", "PORT,... the ports egress connects to (HTTP's and HTTPS's by default), or * "
                                          "for any: an allowed name opens no other service of its host")
    egress_max_mb: int = _setting(1024, "bytes a task or sandbox may move through egress, both ways, in MiB; its "
                                        "connections are closed past it")
    egress_max_connections: int = _setting(256, "connections a task or sandbox may open through egress")
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING or ERROR")

    @property
    def database_name(self) -> str:
        return urlsplit(self.database_url).path.lstrip("/") or "postgres"

    @property
    def egress_widest(self) -> NetworkPolicy | None:
        """--egress-max as a policy; None when egress is off."""
        if self.egress == "off":
            return None
        return NetworkPolicy(parse_patterns([p.strip() for p in self.egress_max.split(",") if p.strip()], "egress_max"))

    @property
    def egress_port_set(self) -> frozenset[int] | None:
        """--egress-ports as ports; None: any."""
        if self.egress_ports.strip() == "*":
            return None
        return frozenset(int(port) for port in self.egress_ports.split(",") if port.strip())

    @property
    def egress_host_table(self) -> dict[str, str]:
        """--egress-hosts as name: address."""
        pairs = (part.split("=", 1) for part in self.egress_hosts.split(",") if part.strip())
        return {name.strip().lower().rstrip("."): address.strip() for name, address in pairs}

    @property
    def output_limit(self) -> int:
        return self.output_limit_kb * 1024


def _boolean(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _parser(default: object) -> Any:
    """How a flag's or a variable's text becomes the setting's value: bool("false") would be True."""
    return _boolean if isinstance(default, bool) else type(default)


def shown_default(f: dataclasses.Field[Any]) -> str:
    """A setting's default as a reader should see it: not this machine's CPU count or home folder."""
    return str(f.metadata.get("shown", f.default))


def env_name(name: str) -> str:
    return "CODERUND_" + name.upper()


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] = ()) -> None:
    """One flag per setting (or per setting named); defaults are filled later so the environment can stand between."""
    fields = [f for f in dataclasses.fields(Settings) if not names or f.name in names]
    if names and len(fields) != len(set(names)):
        raise ValueError(f"not all settings: {names}")
    for f in fields:
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_parser(f.default),
            choices=f.metadata.get("choices"),
            default=argparse.SUPPRESS,
            help=f"{f.metadata['help']} [{env_name(f.name)}, default: {shown_default(f)}]",
        )


def load(flags: dict[str, object], environ: dict[str, str] | None = None) -> Settings:
    """Flag over environment over default; every value checked, errors name the setting."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in dataclasses.fields(Settings):
        if f.name in flags:
            values[f.name] = flags[f.name]
        elif env_name(f.name) in environ:
            raw = environ[env_name(f.name)]
            try:
                values[f.name] = _parser(f.default)(raw)
            except ValueError:
                raise ConfigError(f"{env_name(f.name)}={raw!r} is not a valid {type(f.default).__name__}") from None
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    for name, schemes in (
        ("database_url", ("postgresql", "postgres")),
        ("redis_url", ("redis", "rediss", "unix")),
        ("amqp_url", ("amqp", "amqps")),
    ):
        value = getattr(s, name)
        if urlsplit(value).scheme not in schemes:
            raise ConfigError(f"{env_name(name)}={value!r} is not a {schemes[0]}:// URL")
    for f in dataclasses.fields(s):
        choices = f.metadata.get("choices")
        if choices and getattr(s, f.name) not in choices:
            raise ConfigError(f"{env_name(f.name)}={getattr(s, f.name)!r} is not one of {', '.join(choices)}")
    for name, lowest in (("port", 1), ("metrics_port", 0)):
        if not lowest <= getattr(s, name) < 65536:
            raise ConfigError(f"{env_name(name)}={getattr(s, name)} is not a TCP port")
    for name in ("concurrency", "output_limit_kb", "tmpfs_mb", "pids_limit", "max_attempts", "session_ttl", "max_queue",
                 "user_max_pending", "warm_max_age_s", "warm_idle_s", "sandbox_max_per_user", "sandbox_max_lifetime_s",
                 "sandbox_memory_mb", "sandbox_max_memory_mb", "sandbox_disk_mb", "sandbox_max_disk_mb",
                 "worker_max_sandboxes", "sandbox_state_max_mb", "sandbox_state_user_mb"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{env_name(name)}={getattr(s, name)} must be at least 1")
    if not 0.1 <= s.sandbox_max_cpus <= 64:
        raise ConfigError(f"{env_name('sandbox_max_cpus')}={s.sandbox_max_cpus} must be from 0.1 to 64")
    for default, most in (("sandbox_memory_mb", "sandbox_max_memory_mb"), ("sandbox_disk_mb", "sandbox_max_disk_mb")):
        if getattr(s, default) > getattr(s, most):
            raise ConfigError(f"{env_name(default)}={getattr(s, default)} is over {env_name(most)}={getattr(s, most)}")
    if not 0 < s.webhook_backoff_s <= 3600:
        raise ConfigError(f"{env_name('webhook_backoff_s')}={s.webhook_backoff_s} must be above 0 and at most 3600")
    for name in ("warm_max", "compile_cache_mb", "user_rate", "retention_days"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{env_name(name)}={getattr(s, name)} must be at least 0")
    if s.e2b_domain and not re.fullmatch(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{1,63}", s.e2b_domain):
        raise ConfigError(f"{env_name('e2b_domain')}={s.e2b_domain!r} is not a lower-case DNS name such as e2b.example.com")
    _check_egress(s)
    if not Path(s.plugins_dir).is_dir():
        raise ConfigError(f"{env_name('plugins_dir')}={s.plugins_dir!r} is not a folder")


def _check_egress(s: Settings) -> None:
    for part in (p for p in s.egress_hosts.split(",") if p.strip()):
        name, _, address = part.partition("=")
        if normal_name(name.strip()) is None or not is_address(address.strip()):
            raise ConfigError(f"{env_name('egress_hosts')}: {part!r} is not NAME=ADDRESS")
    try:
        parse_networks(s.egress_allow_private)
    except ValueError as e:
        raise ConfigError(f"{env_name('egress_allow_private')}: {e}") from None
    try:
        parse_patterns([p.strip() for p in s.egress_max.split(",") if p.strip()], "egress_max")
    except ValidationFailed as e:
        raise ConfigError(f"{env_name('egress_max')}: {e}") from None
    ports = [p.strip() for p in s.egress_ports.split(",")]
    if ports != ["*"] and not all(p.isascii() and p.isdigit() and 0 < int(p) < 65536 for p in ports):
        raise ConfigError(f"{env_name('egress_ports')}={s.egress_ports!r} is not * nor PORT,... (1 to 65535)")
    # A Unix socket's path is at most 107 bytes: the folder, a session's 32 hex digits and "/s".
    if s.egress == "on" and len(str(Path(s.cache_dir).resolve() / "egress")) + 35 > 107:
        raise ConfigError(f"{env_name('cache_dir')}={s.cache_dir!r} is too long a path for egress sockets (72 bytes at most)")
    for name in ("egress_max_mb", "egress_max_connections"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{env_name(name)}={getattr(s, name)} must be at least 1")
