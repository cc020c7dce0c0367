"""E2B's code interpreter (port 49999 of a sandbox: e2b-code-interpreter's run_code and its contexts)
as the hub's runs and contexts, which keep their state between runs as a notebook's cells do. Pure:
no I/O.

A run's events go back as E2B's NDJSON lines: stdout and stderr, each result as its MIME formats (the
cell's value marked `is_main_result`, a display() or a figure not; a string's text without its
quotes, as E2B's tells it), the error with its name, value and traceback, and the execution count.
"""
from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from typing import Any

from ...errors import PayloadTooLarge, ValidationFailed
from ...sandbox_requests import MAX_RUN_S, parse_env, parse_run
from .api import E2bError
from .envd import HOME

INTERPRETER_PORT = 49999
DEFAULT_CONTEXTS = ("python", "javascript")  # a language's own context is named by its language (hub.py)
LANGUAGES = {"python": "python", "javascript": "javascript", "js": "javascript", "typescript": "typescript",
             "ts": "typescript", "bash": "bash"}
FORMATS = {"text/plain": "text", "text/html": "html", "text/markdown": "markdown", "image/svg+xml": "svg",
           "image/png": "png", "image/jpeg": "jpeg", "application/pdf": "pdf", "text/latex": "latex",
           "application/json": "json", "application/javascript": "javascript",
           "application/vnd.coderund.data+json": "data"}  # a data frame's columns (kernel.py)


def _language(value: Any) -> str | None:
    if value is None:
        return None
    if value not in LANGUAGES:
        raise E2bError(400, f"Language {str(value)[:40]!r} is not served; this sandbox runs {', '.join(LANGUAGES)}.")
    return LANGUAGES[value]


def run_op(body: Any) -> dict[str, Any]:
    """POST /execute's body as the hub's run: in the context named, or the language's own. A run
    goes on while its client waits (its client leaving interrupts it), at most MAX_RUN_S."""
    if not isinstance(body, dict):
        raise E2bError(400, "The body must be a JSON object.")
    language = _language(body.get("language")) or (None if body.get("context_id") else "python")  # E2B's default
    code = body.get("code")
    try:  # a cell indented as a whole (code written inside a Python string) runs as E2B's do: dedented
        asked = parse_run({"code": textwrap.dedent(code) if isinstance(code, str) else code,
                           "context": body.get("context_id"), "language": language,
                           "timeout_s": MAX_RUN_S})
        env = parse_env(body.get("env_vars") or {}, "env_vars")
    except (ValidationFailed, PayloadTooLarge) as e:
        raise E2bError(400, e.message.replace("'context'", "'context_id'")) from None
    return {"op": "run", "code": asked.code, "context": asked.context, "language": asked.language,
            "timeout_s": asked.timeout_s, "env": env}


def lines(event: dict[str, Any], now: datetime | None = None) -> list[dict[str, Any]]:
    """One hub event of a run as E2B's NDJSON lines."""
    kind = event.get("type")
    stamp = (now or datetime.now(UTC)).isoformat()
    if kind in ("stdout", "stderr"):
        return [{"type": kind, "text": event["text"], "timestamp": stamp}]
    if kind == "result":
        data = event.get("data") or {}
        result: dict[str, Any] = {FORMATS[mime]: value for mime, value in data.items() if mime in FORMATS}
        text = result.get("text")
        if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            result["text"] = text[1:-1]  # a string's text without its quotes, as E2B's interpreter tells it
        extra = {mime: value for mime, value in data.items() if mime not in FORMATS}
        return [{"type": "result", **result, **({"extra": extra} if extra else {}),
                 "is_main_result": bool(event.get("main"))}]
    if kind != "end":
        return []
    out = []
    if error := event.get("error"):
        out.append({"type": "error", "name": error.get("name", ""), "value": error.get("value", ""),
                    "traceback": error.get("traceback", "")})
    if event.get("execution_count") is not None:
        out.append({"type": "number_of_executions", "execution_count": event["execution_count"]})
    return out


def parse_context(body: Any) -> str:
    """POST /contexts' body: the new context's language (Python unless asked). Contexts start in
    the work folder, /home/user."""
    if not isinstance(body, dict):
        raise E2bError(400, "The body must be a JSON object.")
    cwd = body.get("cwd")
    if cwd is not None and cwd not in (HOME, HOME + "/", "~"):
        raise E2bError(400, f"A context starts in {HOME}; change folder in its code (os.chdir, cd).")
    return _language(body.get("language")) or "python"


def context(found: dict[str, Any]) -> dict[str, Any]:
    return {"id": found["id"], "language": found["language"], "cwd": HOME}


def contexts(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The contexts, with the languages' own ones that start at their first run, as E2B's interpreter
    lists its default Python and JavaScript contexts from the start."""
    listed = [context(each) for each in found]
    have = {each["id"] for each in listed}
    return [{"id": own, "language": own, "cwd": HOME} for own in DEFAULT_CONTEXTS if own not in have] + listed
