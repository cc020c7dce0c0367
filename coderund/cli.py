"""The coderund command: run a role, migrate, build images, list languages; and the client's
commands (run, login, logout: client.py), which need no server settings."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import NoReturn

import docker

from . import __version__, admin, client, config, docs_tables
from . import plugins as plugin_loader
from .config import ConfigError, Settings
from .errors import UnsupportedLanguage



# The settings each command uses: its --help shows those, not the daemon's every setting.
DATABASE = ("database_url", "log_level")
OPERATOR = (*DATABASE, "redis_url")  # disabling a user ends its sessions, which Redis holds
IMAGES = ("plugins_dir", "docker_url", "image_source", "debian_mirror", "log_level")


def settings_flags(names: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """A parent parser of the settings' flags: all of them, or the named ones."""
    flags = argparse.ArgumentParser(add_help=False)
    config.add_arguments(flags, names)
    return flags


class Parser(argparse.ArgumentParser):
    """Bad command-line input is one line, not the usage of every setting (that is --help's)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    main = Parser(
        prog="coderund",
        allow_abbrev=False,  # the operator commands take --user beside the settings --user-*
        parents=[settings_flags()],
        description="Run untrusted code over a REST API. Without a command, runs the daemon in --role api, worker or all.",
        epilog="Every option can also be set by the CODERUND_* environment variable shown with it.",
    )
    main.add_argument("--version", action="version", version=f"coderund {__version__}")
    commands = main.add_subparsers(dest="command", metavar="{run,login,logout,mcp,migrate,images,languages,keys,users}")
    client.add_commands(commands)
    admin.add_commands(commands, settings_flags(OPERATOR))
    mcp = commands.add_parser("mcp", help="serve the Model Context Protocol over stdio, as a client of a coderund server "
                                          "(CODERUND_SERVER, CODERUND_TOKEN: an API key)")
    mcp.add_argument("--server", help="server URL (CODERUND_SERVER; default: the one logged in to)")
    mcp.add_argument("--sandbox-idle-s", type=int, metavar="S", help="seconds without a call after which a sandbox it "
                     f"made ends (CODERUND_MCP_SANDBOX_IDLE_S; default {client.MCP_SANDBOX_IDLE_S})")
    commands.add_parser("migrate", parents=[settings_flags(DATABASE)], help="apply sql/*.sql migrations and exit")
    images = commands.add_parser("images", help="sandbox images of the language plugins")
    image_commands = images.add_subparsers(dest="images_command", required=True)
    build = image_commands.add_parser("build", parents=[settings_flags(IMAGES)],
                                      help="build missing images from Debian packages")
    build.add_argument("languages", nargs="*", metavar="LANG", help="languages to build (default: all)")
    build.add_argument("--force", action="store_true", help="rebuild images that exist")
    build.add_argument("--base-only", action="store_true",
                       help="only the base the language images are built on (make image builds coderund's own on it)")
    languages = commands.add_parser("languages", parents=[settings_flags(("plugins_dir",))],
                                    help="print the loaded language plugins")
    languages.add_argument("--markdown", action="store_true", help="as the table of the documentation's languages page")
    return main


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    if args.get("command") == "mcp":  # its SDK runs its own event loop
        from . import mcp_server

        return mcp_server.main(args)
    if args.get("command") in client.COMMANDS:
        try:
            return client.main(str(args["command"]), args)
        except KeyboardInterrupt:
            return 130
    try:
        settings = config.load(args)
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return run(args, settings)
    except (ConfigError, plugin_loader.PluginError) as e:
        print(f"coderund: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run(args: dict[str, object], settings: Settings) -> int:
    command = args.get("command")
    if command == "languages":
        if args.get("markdown"):
            print(docs_tables.languages_table(plugin_loader.load(settings.plugins_dir).all), end="")
            return 0
        for plugin in plugin_loader.load(settings.plugins_dir).all:
            aliases = f" (aliases: {', '.join(plugin.aliases)})" if plugin.aliases else ""
            limits = f"time {plugin.limits.time_ms} ms, memory {plugin.limits.memory_mb} MB"
            print(f"{plugin.name:10} {plugin.version:14} {plugin.image:28} {limits}{aliases}")
        return 0
    if command == "migrate":
        from .daemon import reachable
        from .repository.db import migrate

        async def _migrate() -> list[str]:
            async with reachable("database_url", settings.database_url):
                return await migrate(settings.database_url)

        applied = asyncio.run(_migrate())
        print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
        return 0
    if command in admin.COMMANDS:
        return asyncio.run(admin.run(args, settings))
    if command == "images":
        return build_images(settings, list(args.get("languages") or []), bool(args.get("force")), bool(args.get("base_only")))
    from .daemon import serve

    asyncio.run(serve(settings))
    return 0


def _size(client: docker.DockerClient, image: str) -> str:
    return f"{client.api.inspect_image(image)['Size'] / 1e6:.0f} MB"


def build_images(settings: Settings, languages: list[str], force: bool, base_only: bool = False) -> int:
    from .daemon import docker_client
    from .sandbox import images

    if base_only and languages:
        raise ConfigError("--base-only builds no language: name none")
    loaded = plugin_loader.load(settings.plugins_dir)
    try:
        chosen = [loaded.get(name) for name in languages] if languages else None
    except UnsupportedLanguage as e:
        raise ConfigError(e.message) from None
    try:
        client = docker_client(settings)
        started = time.monotonic()
        base = images.base_of(settings.image_source)
        base_id, built = images.build_base(client, mirror=settings.debian_mirror, source=settings.image_source)
        print(f"base: {'built' if built else 'exists'} {base} ({_size(client, base)})", flush=True)
        if base_only:
            return 0
        steps: dict[str, float] = {}

        def say(line: str) -> None:  # one write per line: builds report from two threads
            print(line + "\n", end="", flush=True)

        def starting(plugin: plugin_loader.Plugin) -> None:
            steps[plugin.name] = time.monotonic()
            say(f"{plugin.name}: building ...")

        def done(plugin: plugin_loader.Plugin, built: bool) -> None:
            took = f" in {time.monotonic() - steps[plugin.name]:.0f} s" if built else ""
            say(f"{plugin.name}: {'built' if built else 'current'} {plugin.image} ({_size(client, plugin.image)}){took}")

        images.build_all(client, loaded.image_order(chosen), base=base, base_id=base_id, force=force, starting=starting,
                         done=done)
        print(f"images ready in {time.monotonic() - started:.0f} s")
    except docker.errors.DockerException as e:
        raise ConfigError(f"Docker: {e}") from None
    except images.ImageBuildError as e:
        raise ConfigError(str(e)) from None
    return 0
