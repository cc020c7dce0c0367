"""The playground page in a real headless Chromium, driven over the DevTools protocol: log in, run a
program that reads stdin and see its output arrive live, run a compile error and see it. Screenshots
go to test-artifacts/."""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from coderund import plugins
from coderund.config import DEFAULT_PLUGINS_DIR
from tests.test_openapi import ARTIFACTS

SHIPPED = len(plugins.load(DEFAULT_PLUGINS_DIR).all)  # the playground offers every plugin


class Page:
    """One browser tab, over the Chrome DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = json.loads((await self.ws.receive(timeout=60)).data)
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60) -> Any:
        for _ in range(int(timeout * 10)):
            if value := await self.evaluate(expression):
                return value
            await asyncio.sleep(0.1)
        output = await self.evaluate("$('output').textContent")
        raise AssertionError(f"never true: {expression}; output {output!r}")

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        path.write_bytes(base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"]))
        return path

    async def ctrl_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, modifiers=2, key="Enter", code="Enter",
                            windowsVirtualKeyCode=13)


async def open_page(url: str, profile: str) -> tuple[subprocess.Popen[bytes], aiohttp.ClientSession, Page]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by scripts/test-env"
    browser = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1400,900",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = Path(profile) / "DevToolsActivePort"
    for _ in range(300):
        if port_file.exists() and port_file.read_text().strip():
            break
        await asyncio.sleep(0.1)
    port = port_file.read_text().split()[0]
    session = aiohttp.ClientSession()
    async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
        target = next(t for t in await response.json() if t["type"] == "page")
    page = Page(await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0))
    await page.call("Page.enable")
    await page.call("Page.navigate", url=url)
    return browser, session, page


async def test_playground_logs_in_runs_live_and_shows_a_compile_error(server):
    # Chromium's helpers may still write to the profile as it goes: its removal is best effort.
    with tempfile.TemporaryDirectory(prefix="coderund-chromium-", ignore_cleanup_errors=True) as profile:
        browser, session, page = await open_page(server + "/", profile)
        try:
            await page.wait_for("document.readyState === 'complete' && !$('login-panel').hidden")
            await page.screenshot("playground-login.png")
            await page.evaluate("$('username').value = 'player'; $('password').value = 'correct horse';"
                                " $('register').click()")
            await page.wait_for("!$('workspace').hidden && $('language').options.length === " + str(SHIPPED))
            assert await page.evaluate("$('who').textContent") == "player"
            # What is hidden is not drawn: the login form is gone, the live input line is not shown.
            assert await page.evaluate("$('login-panel').offsetParent === null && $('live-input').offsetParent === null")

            # A program that reads stdin, run with the keyboard shortcut; its first line shows while it still runs.
            await page.evaluate("$('language').value = 'python'; $('language').dispatchEvent(new Event('change'));"
                                " document.querySelector('.CodeMirror').CodeMirror.setValue("
                                "\"import time\\nname = input()\\nprint('hello ' + name, flush=True)\\ntime.sleep(1.5)\\nprint('bye')\");"
                                " $('stdin').value = 'world';"
                                " document.querySelector('.CodeMirror').CodeMirror.focus()")
            await page.ctrl_enter()
            await page.wait_for("$('output').textContent.includes('hello world')")
            assert await page.evaluate("$('verdict').textContent") == "running"  # live: before the end
            await page.wait_for("$('verdict').textContent === 'ok'")
            assert await page.evaluate("$('output').textContent") == "hello world\nbye\n"
            assert "ms" in await page.evaluate("$('stats').textContent")
            await page.screenshot("playground-run.png")

            # A compile error, with the Run button.
            await page.evaluate("$('language').value = 'c'; $('language').dispatchEvent(new Event('change'));"
                                " document.querySelector('.CodeMirror').CodeMirror.setValue('int main(void) { return nope; }');"
                                " $('run').click()")
            await page.wait_for("$('verdict').textContent === 'compile error'")
            compiled = "[...document.querySelectorAll('#output .compile')].map((e) => e.textContent).join('')"
            assert "nope" in await page.evaluate(compiled)  # in the compiler's colour, in one piece or several
            await page.wait_for("$('history').children.length >= 2")
            path = await page.screenshot("playground-compile-error.png")
            assert path.stat().st_size > 10_000
        finally:
            await session.close()
            browser.terminate()
            browser.wait(30)


NO_MODE = {"assembly", "elixir", "nim", "prolog"}  # CodeMirror 5 has no mode for NASM, Elixir, Nim or Prolog
SHOWN = ["haskell", "ocaml", "cobol"]  # run and photographed: compiled, and new to the playground's highlighting


async def test_playground_offers_every_language_with_its_example_and_highlighting(server):
    """Each language the server runs is offered and opens with its plugin's example, highlighted where
    CodeMirror has a mode; a few of them run as they open, on the stdin the page starts with."""
    with tempfile.TemporaryDirectory(prefix="coderund-chromium-", ignore_cleanup_errors=True) as profile:
        browser, session, page = await open_page(server + "/", profile)
        try:
            await page.wait_for("document.readyState === 'complete' && !$('login-panel').hidden")
            assert await page.evaluate("$('language-count').textContent") == str(SHIPPED)
            await page.evaluate("$('username').value = 'visitor'; $('password').value = 'correct horse';"
                                " $('register').click()")
            await page.wait_for("!$('workspace').hidden")
            opened = await page.evaluate("""(async () => {
                const listing = await (await fetch('/languages')).json();
                const cm = document.querySelector('.CodeMirror').CodeMirror;
                const seen = {};
                for (const lang of listing.languages) {
                    $('language').value = lang.name;
                    $('language').dispatchEvent(new Event('change'));
                    seen[lang.name] = {example: cm.getValue() === lang.example && lang.example.length > 0,
                                       mode: cm.getMode().name};
                }
                return {offered: [...$('language').options].map((o) => o.value), seen};
            })()""")
            names = sorted(plugin.name for plugin in plugins.load(DEFAULT_PLUGINS_DIR).all)
            assert sorted(opened["offered"]) == names and sorted(opened["seen"]) == names
            assert [name for name, seen in opened["seen"].items() if not seen["example"]] == []
            highlighted = {name for name, seen in opened["seen"].items() if seen["mode"] != "null"}
            assert highlighted == set(names) - NO_MODE, opened["seen"]
            assert await page.evaluate("$('stdin').value") == "world"
            for language in SHOWN:
                await page.evaluate(f"$('language').value = '{language}'; $('language').dispatchEvent(new Event('change'));"
                                    " $('run').click()")
                await page.wait_for("$('verdict').textContent === 'ok'", timeout=120)
                assert await page.evaluate("$('output').textContent") == "Hello, world!\n"
                await page.screenshot(f"playground-{language}.png")
        finally:
            await session.close()
            browser.terminate()
            browser.wait(30)
