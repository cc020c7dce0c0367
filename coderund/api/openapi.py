"""The OpenAPI 3.1 document of the whole API, kept beside the route table it describes.

A test compares the two, so a route cannot exist undocumented or a documented one go missing.
"""
from __future__ import annotations

from typing import Any

from .. import __version__
from ..sandbox_requests import (CONTEXT_LANGUAGES, DEFAULT_RUN_S, LANGUAGES, MAX_COMMANDS, MAX_CONTEXTS, MAX_ENTRIES,
                                MAX_OUTPUT_BYTES, MAX_RESULT_BYTES, MAX_RESULTS, MAX_RUN_S, STATES)
from ..domain import (HISTORY_STATES, MAX_ARTIFACT_BYTES, MAX_ARTIFACTS, MAX_OUTPUTS, MAX_ARG_CHARS, MAX_ARGS, MAX_BATCH, MAX_FILES, MAX_TESTS, MAX_WAIT_S, PASSWORD_LENGTH,
                      Verdict)
from ..network import MAX_NAME, MAX_PATTERNS
from .keys import SESSION_COOKIE

ERROR_CODES = [
    "invalid_json", "validation_failed", "unauthorized", "not_found", "method_not_allowed", "conflict",
    "payload_too_large", "unsupported_language", "rate_limited", "queue_full", "unavailable", "internal",
    "request_timeout", "forbidden", "quota_exceeded", "bad_request", "sandbox_ended", "registration_closed",
    "account_disabled",
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, example: Any = None, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    response: dict[str, Any] = {"description": description, "content": {"application/json": media}}
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, example_code: str, *, retry_after: bool = False) -> dict[str, Any]:
    headers = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait"}} if retry_after else None
    return _json(_ref("Error"), description, {"error": example_code, "message": description}, headers)


ERRORS = {
    "400": _error("The body is not valid JSON or a field is wrong.", "validation_failed"),
    "401": _error("No valid session: log in and send the token or the cookie.", "unauthorized"),
    "404": _error("No such task (or not yours).", "not_found"),
    "403": _error("This API key lacks the scope the call needs, or a cookie request came from another origin.", "forbidden"),
    "408": _error("The body did not arrive in time (10 s).", "request_timeout"),
    "409": _error("The username is taken, or the task has finished.", "conflict"),
    "413": _error("The body, code or stdin is too large.", "payload_too_large"),
    "429": _error("Too many attempts; wait Retry-After seconds.", "rate_limited", retry_after=True),
    "503": _error("A dependency (database, session store, queue) is not answering.", "unavailable", retry_after=True),
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: ERRORS[code] for code in codes}


def _nullable(kind: str, description: str) -> dict[str, Any]:
    return {"type": [kind, "null"], "description": description}


CREDENTIALS_EXAMPLE = {"username": "alice", "password": "correct horse"}
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string", "enum": ERROR_CODES}, "message": {"type": "string"}},
    },
    "Credentials": {
        "type": "object",
        "description": "Older clients may send `login` in place of `username`.",
        "properties": {
            "username": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{3,64}$"},
            "login": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{3,64}$"},
            "password": {"type": "string", "minLength": PASSWORD_LENGTH[0], "maxLength": PASSWORD_LENGTH[1]},
        },
        "required": ["username", "password"],
    },
    "User": {"type": "object", "required": ["id", "username"],
             "properties": {"id": {"type": "integer"}, "username": {"type": "string"}}},
    "Login": {"type": "object", "required": ["token", "expires_in"],
              "properties": {"token": {"type": "string"}, "expires_in": {"type": "integer", "description": "seconds"}}},
    "Limits": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"time_ms": {"type": "integer", "minimum": 1}, "memory_mb": {"type": "integer", "minimum": 1}},
    },
    "TaskRequest": {
        "type": "object",
        "description": "Older clients may send `translator` in place of `language`; plugin aliases (`python3`) work too.",
        "required": ["language", "code"],
        "properties": {
            "language": {"type": "string", "examples": ["python", "c", "go"]},
            "translator": {"type": "string"},
            "code": {"type": "string", "description": "at most 512 KiB"},
            "stdin": {"type": "string", "description": "at most 1 MiB"},
            "args": {"type": "array", "maxItems": MAX_ARGS, "items": {"type": "string", "maxLength": MAX_ARG_CHARS}},
            "limits": _ref("Limits"),
            "files": {"type": "array", "maxItems": MAX_FILES, "description": "more source files beside `code` (the entry file)",
                      "items": {"type": "object", "required": ["name", "content"], "additionalProperties": False,
                                "properties": {"name": {"type": "string", "pattern": "^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"},
                                               "content": {"type": "string"}}}},
            "tests": {"type": "array", "maxItems": MAX_TESTS,
                      "description": "test cases: the program is compiled once, each case runs in a fresh sandbox",
                      "items": {"type": "object", "required": ["expected"], "additionalProperties": False,
                                "properties": {"stdin": {"type": "string"}, "expected": {"type": "string"},
                                               "args": {"type": "array", "items": {"type": "string"}}}}},
            "checker": {"description": "how a case's stdout is compared with `expected` (default `trim`)",
                        "oneOf": [{"type": "string", "enum": ["exact", "trim", "tokens"]},
                                  {"type": "object", "required": ["float"], "properties": {"float": {
                                      "type": "object", "properties": {"abs": {"type": "number"}, "rel": {"type": "number"}}}}}]},
            "stop_on_failure": {"type": "boolean", "description": "skip the cases after the first that fails"},
            "callback_url": {"type": "string", "maxLength": 2048, "description":
                             "http(s) URL that gets the result (POST, signed: see /account/webhook-secret) when the task finishes;"
                             " refused if its host is or resolves to a loopback, private or other non-global address"},
            "outputs": {"type": "array", "maxItems": MAX_OUTPUTS, "items": {"type": "string", "maxLength": 256},
                        "description": "files the run writes to bring back in `artifacts`: paths in the work folder, each "
                                       "part a shell pattern (`plot.png`, `out/*.csv`); a single run only, not with tests"},
            "network": _ref("NetworkPolicy"),
        },
    },
    "NetworkPolicy": {
        "type": "object", "required": ["allow"], "additionalProperties": False,
        "description": "the hosts the run (not its build) may reach through coderund's egress proxy (HTTP and HTTPS via "
                       "the proxy variables it sets); absent: no network. 400 when the operator has egress off; wider "
                       "than the operator's --egress-max is narrowed to it. Names only: what they resolve to is checked, "
                       "and loopback, private, link-local and metadata addresses are never reached.",
        "properties": {"allow": {"type": "array", "maxItems": MAX_PATTERNS, "items": {
            "type": "string", "maxLength": MAX_NAME + 2,
            "description": "a host name (`pypi.org`), `*.` and a domain (`*.githubusercontent.com`: names under it) or `*`"},
            "examples": [["pypi.org", "files.pythonhosted.org"]]}},
    },
    "Batch": {"type": "object", "required": ["tasks"],
              # Items are plain objects here (each is checked as POST /task checks its body): a $ref to TaskRequest
              # makes schemathesis's generator recurse past what CPython's parser takes.
              "properties": {"tasks": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH,
                                       "items": {"type": "object", "description": "a task body, as POST /task takes"}}}},
    "CaseResult": {
        "type": "object",
        "required": ["verdict", "exit_code", "signal", "time_ms", "wall_ms", "memory_kb", "stdout", "stderr", "truncated"],
        "properties": {
            "verdict": {"type": "string", "enum": [v.value for v in Verdict]},
            "exit_code": _nullable("integer", "null when killed by a signal"),
            "signal": _nullable("integer", "the signal that ended the program"),
            "time_ms": _nullable("integer", "CPU time"), "wall_ms": _nullable("integer", "wall-clock time"),
            "memory_kb": _nullable("integer", "peak resident memory"),
            "stdout": {"type": "string", "description": "the first 8 KiB"}, "stderr": {"type": "string"},
            "truncated": {"type": "boolean"},
        },
    },
    "Status": {"type": "object", "required": ["status"],
               "properties": {"status": {"type": "string", "enum": ["in_progress", "ready"]}}},
    "InProgress": {"type": "object", "required": ["status"],
                   "properties": {"status": {"type": "string", "const": "in_progress"}}},
    "Result": {
        "type": "object",
        "required": ["status", "result", "verdict", "exit_code", "signal", "stdout", "stderr", "compile_output",
                     "truncated", "time_ms", "wall_ms", "memory_kb", "language", "created_at", "started_at", "finished_at"],
        "properties": {
            "status": {"type": "string", "const": "ready"},
            "result": {"type": "string", "description": "stdout, as the seed API called it"},
            "verdict": {"type": "string", "enum": [v.value for v in Verdict]},
            "exit_code": _nullable("integer", "null when killed by a signal"),
            "signal": _nullable("integer", "the signal that ended the program"),
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "compile_output": {"type": "string"},
            "truncated": {"type": "boolean", "description": "output was cut at the cap"},
            "time_ms": _nullable("integer", "CPU time"),
            "wall_ms": _nullable("integer", "wall-clock time"),
            "memory_kb": _nullable("integer", "peak resident memory"),
            "language": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": _nullable("string", "when a worker started it"),
            "finished_at": _nullable("string", "when it finished"),
            "tests": {"type": "array", "items": _ref("CaseResult"),
                      "description": "with test cases: each one's run, in order (none after a compile error)"},
            "passed": {"type": "integer"}, "total": {"type": "integer"},
            "artifacts": {"type": "array", "description": f"with `outputs`: the matching files the run wrote, in name "
                          f"order, at most {MAX_ARTIFACTS} and {MAX_ARTIFACT_BYTES // 2**20} MiB in all",
                          "items": {"type": "object", "required": ["name", "size", "content_base64"],
                                    "properties": {"name": {"type": "string"}, "size": {"type": "integer"},
                                                   "content_base64": {"type": "string"}}}},
            "artifacts_truncated": {"type": "boolean", "description": "more files matched than the caps let through"},
            "network_usage": {"type": "object", "description": "with a network policy: what the run did with it",
                              "properties": {"allowed": {"type": "integer", "description": "connections made"},
                                             "refused": {"type": "integer", "description": "connections refused"},
                                             "bytes": {"type": "integer", "description": "both ways"}}},
        },
    },
    "Language": {
        "type": "object",
        "required": ["name", "version", "aliases", "extensions", "compiled", "takes_args", "entry_file", "limits",
                     "min_limits", "max_limits", "example"],
        "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "aliases": {"type": "array", "items": {"type": "string"}}, "compiled": {"type": "boolean"},
            "extensions": {"type": "array", "items": {"type": "string"},
                           "description": "file extensions of the language's source files, lower case (e.g. .cc)"},
            "takes_args": {"type": "boolean", "description": "false: the language has no command line (SQL); a task's `args` are refused"},
            "entry_file": {"type": "string", "description": "the file a task's `code` is saved as (e.g. Main.java)"},
            "limits": _ref("Limits"), "min_limits": _ref("Limits"), "max_limits": _ref("Limits"),
            "compile_limits": _ref("Limits"),  # compiled languages only: the compiler's limits
            "example": {"type": "string", "description": "a program in this language that reads a name from stdin and "
                        "greets it (`Hello, NAME!`), as the playground opens it; empty if the plugin has none"},
        },
    },
    "KeyRequest": {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100},
                       "scopes": {"type": "array", "minItems": 1,
                                  "items": {"enum": ["tasks:write", "tasks:read", "account"]},
                                  "description": "default: tasks:write, tasks:read"},
                       "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 3650},
                       "form": {"enum": ["coderund", "e2b"], "default": "coderund",
                                "description": "crd_… (default), or e2b_ and 64 hex digits, the form E2B's SDKs accept"}},
    },
    "ApiKey": {
        "type": "object", "required": ["id", "name", "prefix", "scopes", "created_at"],
        "properties": {"id": {"type": "string", "format": "uuid"}, "name": {"type": "string"},
                       "prefix": {"type": "string", "description": "the key's first characters"},
                       "scopes": {"type": "array", "items": {"type": "string"}},
                       "created_at": {"type": "string"}, "last_used_at": _nullable("string", "to the minute"),
                       "expires_at": _nullable("string", "never when null")},
    },
    "Usage": {
        "type": "object", "required": ["days", "quota"],
        "properties": {
            "days": {"type": "array", "items": {"type": "object", "properties": {
                "day": {"type": "string", "format": "date"}, "tasks": {"type": "integer"}, "cpu_ms": {"type": "integer"},
                "wall_ms": {"type": "integer"}, "languages": {"type": "object", "additionalProperties": {"type": "object"}}}}},
            "quota": {"type": "object", "properties": {
                "cpu_s_per_day": {"type": "integer", "description": "0: none"}, "cpu_ms_today": {"type": "integer"},
                "max_pending": {"type": "integer"}, "per_minute": {"type": "integer"}}},
            "sandbox_state_bytes": {"type": "integer", "description": "what your live sandboxes' persisted files take"
                                                                      " now (bounded by the operator's"
                                                                      " --sandbox-state-user-mb)"},
        },
    },
    "Readiness": {
        "type": "object",
        "properties": {"status": {"type": "string"}, "error": {"type": "string"}, "message": {"type": "string"},
                       "checks": {"type": "object", "additionalProperties": {"type": "string"}}},
    },
}

SCHEMAS["NewApiKey"] = {**SCHEMAS["ApiKey"], "required": [*SCHEMAS["ApiKey"]["required"], "key"],
                        "properties": {**SCHEMAS["ApiKey"]["properties"], "key": {"type": "string", "description": "crd_… or e2b_…"}}}

SCHEMAS["TaskCreated"] = {
    "type": "object", "required": ["task_id"],
    "description": "With `wait`, a task that finished in time comes with its whole result, as GET /result answers it.",
    "properties": {"task_id": {"type": "string", "format": "uuid"}, **SCHEMAS["Result"]["properties"]},
}

RESULT_EXAMPLE = {
    "status": "ready", "result": "hello\n", "verdict": "ok", "exit_code": 0, "signal": None, "stdout": "hello\n",
    "stderr": "", "compile_output": "", "truncated": False, "time_ms": 12, "wall_ms": 14, "memory_kb": 7800,
    "language": "python", "created_at": "2026-01-01T12:00:00+00:00", "started_at": "2026-01-01T12:00:00.1+00:00",
    "finished_at": "2026-01-01T12:00:00.5+00:00",
}
TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "a task id (uuid)"}
WAIT = {"name": "wait", "in": "query", "required": False,
        "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
        "description": f"seconds (at most {MAX_WAIT_S}) to hold the answer until the task finishes"}
AUTH = [{"bearer": []}, {"cookie": []}]
RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}}}
BODY_ERRORS = ("400", "408", "413", "503")


def _body(schema: str, example: Any) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema), "example": example}}}


OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/register"): {
        "summary": "Create an account", "tags": ["accounts"], "requestBody": _body("Credentials", CREDENTIALS_EXAMPLE),
        "description": "Open to anyone unless the operator runs the server with `--registration closed`: then it answers "
                       "403 `registration_closed` and an operator adds users (`coderund users add NAME --password-stdin`).",
        "responses": {"201": _json(_ref("User"), "Created", {"id": 1, "username": "alice"}),
                      **_errors(*BODY_ERRORS, "409", "429"),
                      "403": _error("Sign-up is closed on this server (--registration closed).", "registration_closed")},
    },
    ("post", "/login"): {
        "summary": "Log in: a token, and the same as an HttpOnly session cookie", "tags": ["accounts"],
        "requestBody": _body("Credentials", CREDENTIALS_EXAMPLE),
        "responses": {"200": _json(_ref("Login"), "Logged in", {"token": "…", "expires_in": 86400},
                                   {"Set-Cookie": {"schema": {"type": "string"}}}),
                      **_errors(*BODY_ERRORS, "401", "429"),
                      "403": _error("The operator has disabled this account (said only when the password is right).",
                                    "account_disabled")},
    },
    ("post", "/logout"): {
        "summary": "End the session at once", "tags": ["accounts"], "security": AUTH,
        "responses": {"204": {"description": "Logged out"}, **_errors("401", "503")},
    },
    ("get", "/account/webhook-secret"): {
        "summary": "The secret that signs your webhooks: X-Coderund-Signature is sha256=HMAC-SHA256(secret, body) in hex",
        "tags": ["accounts"], "security": AUTH,
        "responses": {"200": _json({"type": "object", "required": ["secret"], "properties": {"secret": {"type": "string"}}},
                                   "The secret", {"secret": "9f86d081884c7d65…"}), **_errors("401", "503")},
    },
    ("post", "/account/webhook-secret"): {
        "summary": "Replace the secret that signs your webhooks", "tags": ["accounts"], "security": AUTH,
        "responses": {"200": _json({"type": "object", "required": ["secret"], "properties": {"secret": {"type": "string"}}},
                                   "The new secret", {"secret": "60303ae22b998861…"}), **_errors("401", "503")},
    },
    ("post", "/account/api-keys"): {
        "summary": "Make an API key (shown in this answer only) for machine clients: Authorization: Bearer <key>",
        "tags": ["accounts"], "security": AUTH,
        "requestBody": _body("KeyRequest", {"name": "grader", "scopes": ["tasks:write", "tasks:read"], "expires_in_days": 90}),
        "responses": {"201": _json(_ref("NewApiKey"), "The key", None), **_errors(*BODY_ERRORS, "401", "403")},
    },
    ("get", "/account/api-keys"): {
        "summary": "Your API keys (never the keys themselves)", "tags": ["accounts"], "security": AUTH,
        "responses": {"200": _json({"type": "object", "required": ["api_keys"], "properties": {
            "api_keys": {"type": "array", "items": _ref("ApiKey")}}}, "The keys"), **_errors("401", "403", "503")},
    },
    ("delete", "/account/api-keys/{key_id}"): {
        "summary": "Revoke an API key: every API process refuses it within a second", "tags": ["accounts"],
        "security": AUTH, "parameters": [{"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"204": {"description": "Revoked"}, **_errors("401", "403", "404", "503")},
    },
    ("get", "/account/usage"): {
        "summary": "What your tasks spent per UTC day, in all and by language, with your quotas", "tags": ["accounts"],
        "security": AUTH, "parameters": [{"name": "days", "in": "query", "required": False,
                                          "schema": {"type": "integer", "minimum": 1, "maximum": 90, "default": 7}}],
        "responses": {"200": _json(_ref("Usage"), "Usage"), **_errors("400", "401", "403", "503")},
    },
    ("post", "/task"): {
        "summary": "Submit code to run; with `wait`, also its result when it finishes in time", "tags": ["tasks"],
        "security": AUTH, "parameters": [WAIT],
        "requestBody": _body("TaskRequest", {"language": "python", "code": "print(input())", "stdin": "hi\n",
                                             "limits": {"time_ms": 2000, "memory_mb": 128}}),
        "responses": {"201": _json(_ref("TaskCreated"), "Queued", {"task_id": "5c98dfd8-ebcc-4dad-b8fd-2e25aa42b93d"},
                                   {"Location": {"schema": {"type": "string"}}}),
                      **_errors(*BODY_ERRORS, "401", "429")},
    },
    ("post", "/tasks"): {
        "summary": "Submit up to 100 tasks at once; each is checked and queued on its own", "tags": ["tasks"],
        "security": AUTH,
        "requestBody": _body("Batch", {"tasks": [{"language": "python", "code": "print(1)"}, {"language": "brainfuck", "code": "x"}]}),
        "responses": {"201": _json({"type": "object", "required": ["tasks"], "properties": {"tasks": {"type": "array", "items": {
            "oneOf": [_ref("TaskCreated"), _ref("Error")]}}}}, "In order: a task id, or why that one was refused",
            {"tasks": [{"task_id": "5c98dfd8-ebcc-4dad-b8fd-2e25aa42b93d"},
                       {"error": "unsupported_language", "message": "Language 'brainfuck' is not supported."}]}),
            **_errors(*BODY_ERRORS, "401")},
    },
    ("get", "/tasks"): {
        "summary": "With `ids`, those tasks' states and results; without, your tasks, newest first", "tags": ["tasks"],
        "security": AUTH,
        "parameters": [
            {"name": "ids", "in": "query", "required": False, "schema": {"type": "string"},
             "description": f"up to {MAX_BATCH} task ids, separated by commas"},
            {"name": "state", "in": "query", "required": False, "schema": {"type": "string", "enum": list(HISTORY_STATES)}},
            {"name": "language", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH}},
            {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "`next_cursor` of the previous page"},
        ],
        "responses": {"200": _json({"type": "object", "required": ["tasks"], "properties": {
            "tasks": {"type": "array", "items": {"type": "object", "properties": {
                "task_id": {"type": "string"}, "status": {"type": "string"}, "state": {"type": "string"},
                "language": {"type": "string"}, "verdict": {"type": ["string", "null"]},
                "created_at": {"type": ["string", "null"]}, "started_at": {"type": ["string", "null"]},
                "finished_at": {"type": ["string", "null"]}, "error": {"type": "string"}, "message": {"type": "string"}}}},
            "next_cursor": {"type": ["string", "null"]}}}, "Tasks (with `ids`: in that order, a result, a status or an error)"),
            **_errors("400", "401", "503")},
    },
    ("post", "/task/{task_id}/cancel"): {
        "summary": "Cancel a task: a queued one never runs, a running one is stopped within a second", "tags": ["tasks"],
        "security": AUTH, "parameters": [TASK_ID],
        "responses": {
            "200": _json({"type": "object"}, "Cancelled at once (it was queued)",
                         {"task_id": "5c98dfd8-ebcc-4dad-b8fd-2e25aa42b93d", "status": "ready", "verdict": "cancelled"}),
            "202": _json({"type": "object"}, "Its worker is stopping it; it ends `cancelled`",
                         {"task_id": "5c98dfd8-ebcc-4dad-b8fd-2e25aa42b93d", "status": "in_progress", "cancelling": True}),
            **_errors("401", "404", "409", "503")},
    },
    ("get", "/status/{task_id}"): {
        "summary": "Whether a task is done", "tags": ["tasks"], "security": AUTH, "parameters": [TASK_ID],
        "responses": {"200": _json(_ref("Status"), "The status", {"status": "ready"}), **_errors("401", "404", "503")},
    },
    ("get", "/result/{task_id}"): {
        "summary": "The result of a task; with `wait`, as soon as it finishes", "tags": ["tasks"], "security": AUTH,
        "parameters": [TASK_ID, WAIT],
        "responses": {"200": _json(_ref("Result"), "Ready", RESULT_EXAMPLE),
                      "202": _json(_ref("InProgress"), "Not ready yet", {"status": "in_progress"}, RETRY_AFTER),
                      **_errors("400", "401", "404", "503")},
    },
    ("get", "/languages"): {
        "summary": "The languages this server runs", "tags": ["public"],
        "responses": {"200": _json({"type": "object", "required": ["languages"],
                                    "properties": {"languages": {"type": "array", "items": _ref("Language")}}}, "Languages")},
    },
    ("get", "/ws"): {
        "summary": "Live runs over a WebSocket: output as it is written, stdin as it is typed", "tags": ["tasks"],
        "security": AUTH,
        "description": (
            "Upgrade to a WebSocket (authenticated before the upgrade). Messages are JSON objects with a `type`. "
            "Client → server: `{\"type\": \"run\", \"task\": {...a POST /task body...}, \"tty\": true}`, then any "
            "number of `{\"type\": \"stdin\", \"data\": \"...\"}`, `{\"type\": \"eof\"}` (the program's stdin ends; "
            "send it when the program reads to the end of its input), `{\"type\": \"cancel\"}`. `tty` (default true) "
            "gives the program a terminal, as a program run by hand has: its stdin and stdout are a pseudo-terminal "
            "made inside its sandbox, its stderr stays a pipe, so runtimes write each line and prompt as they print "
            "it. The terminal passes bytes as they are (no echo of input, no line editing, no signals from input, no "
            "translation of carriage returns or newlines); it hands input to the program by lines, and Ctrl-D "
            "(`\\u0004`) in the input ends a line without a newline, or at a line's start is an end of file, as "
            "on a terminal; `eof` is sent as that. `\"tty\": false` gives pipes instead: runtimes keep output until "
            "their buffer fills or they exit, and input passes with no line discipline at all. Server → client: "
            "`{\"type\": \"accepted\", \"task_id\": \"...\"}`, then `{\"type\": \"compile\"|\"stdout\"|\"stderr\", "
            "\"data\": \"...\"}` as the compiler and the program write, and last `{\"type\": \"result\", \"result\": "
            "{...as GET /result...}}`; a refused run or a bad message gets `{\"type\": \"error\", \"error\": code, "
            "\"message\": ...}` and the socket stays open. One run at a time, up to 100 per socket; a socket with no "
            "run is closed after 5 minutes without a message; a message over the body limit closes it with 1009. "
            "A client that disconnects mid-run cancels it. The task is a normal task: /status, /result and /tasks "
            "show it."),
        "responses": {"101": {"description": "Switching to the WebSocket protocol"}, **_errors("400", "401", "503")},
    },
    ("get", "/"): {
        "summary": "The playground: an editor, live runs, verdicts (HTML)", "tags": ["public"],
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
    },
    ("get", "/healthz"): {
        "summary": "Liveness", "tags": ["public"],
        "responses": {"200": _json({"type": "object", "properties": {"status": {"type": "string"}}}, "Alive", {"status": "ok"})},
    },
    ("get", "/readyz"): {
        "summary": "Readiness: whether every dependency of this role answers and (with a worker) every language's image is built",
        "tags": ["public"],
        "responses": {"200": _json(_ref("Readiness"), "Ready"), "503": _json(_ref("Readiness"), "Not ready, naming what")},
    },
    ("get", "/metrics"): {
        "summary": "Prometheus metrics", "tags": ["public"],
        "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    },
    ("get", "/openapi.json"): {
        "summary": "This document", "tags": ["public"],
        "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
    },
    ("get", "/docs"): {
        "summary": "Swagger UI", "tags": ["public"],
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
    },
}


JUDGE0_AUTH = [{"judge0": []}, {"bearer": []}]
JUDGE0_ANY = {"description": "As Judge0 CE 1.13.1 answers", "content": {"application/json": {"schema": {}}}}
JUDGE0_ERRORS = {
    "400": {**JUDGE0_ANY, "description": "Judge0's {\"error\": ...}: bad fields, paging, batch size, text that needs base64"},
    "401": {"description": "No key, or a wrong one: an empty body, as Judge0 answers"},
    "403": {**JUDGE0_ANY, "description": "The key lacks the scope"},
    "404": {**JUDGE0_ANY, "description": "No such submission of yours, or language"},
    "422": {**JUDGE0_ANY, "description": "Judge0's validation errors: {field: [messages]}"},
    "429": {**JUDGE0_ANY, "description": "A rate or quota of the account"},
    "503": {**JUDGE0_ANY, "description": "queue is full, or a dependency is down"},
}
JUDGE0_QUERY = [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                for name in ("base64_encoded", "wait", "fields", "page", "per_page", "tokens")]


JUDGE0_SUMMARIES = {
    ("POST", "/submissions"): "submit (wait=true: the finished submission)", ("GET", "/submissions"): "your submissions, paged",
    ("POST", "/submissions/batch"): "submit several", ("GET", "/submissions/batch"): "several submissions by token",
    ("GET", "/submissions/{token}"): "a submission", ("DELETE", "/submissions/{token}"): "delete a finished submission",
    ("GET", "/languages"): "languages", ("GET", "/languages/all"): "all languages", ("GET", "/languages/{language_id}"): "a language",
    ("GET", "/statuses"): "statuses", ("GET", "/about"): "about (the API version served)", ("GET", "/version"): "version",
    ("GET", "/config_info"): "configuration", ("GET", "/system_info"): "system", ("GET", "/workers"): "queue and workers",
}


def _judge0_operations() -> dict[tuple[str, str], dict[str, Any]]:
    """The Judge0 CE routes under /judge0 (see the README's "Coming from Judge0"; Judge0's own
    documentation describes their bodies)."""
    from .compat.judge0_routes import ROUTES as JUDGE0_ROUTES

    operations = {}
    for method, path, _ in JUDGE0_ROUTES:
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in ("token", "language_id") if "{" + name + "}" in path]
        success = {"201" if method == "POST" else "200": JUDGE0_ANY}
        if path == "/version":
            success = {"200": {"description": "1.13.1", "content": {"text/plain": {"schema": {"type": "string"}}}}}
        operation = {"summary": f"Judge0 CE: {JUDGE0_SUMMARIES[(method, path)]}",
                     "tags": ["judge0"], "security": JUDGE0_AUTH, "parameters": params + JUDGE0_QUERY,
                     "responses": {**success, **JUDGE0_ERRORS}}
        if method == "POST":
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
        operations[(method.lower(), "/judge0" + path)] = operation
    return operations


def _piston_operations() -> dict[tuple[str, str], dict[str, Any]]:
    """Piston v2 under /piston, the key as a Bearer token or as the path's first segment."""
    operations = {}
    summaries = {"runtimes": "runtimes", "execute": "run files, synchronously",
                 "connect": "the interactive WebSocket (Piston's protocol; the program gets a terminal, as on /ws)"}
    errors = {"400": {**JUDGE0_ANY, "description": "Piston's {\"message\"}"}, "401": {**JUDGE0_ANY, "description": "no or a wrong key"},
              "403": JUDGE0_ANY, "404": JUDGE0_ANY, "413": JUDGE0_ANY, "429": JUDGE0_ANY, "503": JUDGE0_ANY}
    for prefix in ("", "/{key}"):
        params = [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}] if prefix else []
        for method, name in (("get", "runtimes"), ("post", "execute"), ("get", "connect")):
            operation = {"summary": f"Piston v2: {summaries[name]}", "tags": ["piston"], "parameters": params,
                         "responses": {"200": JUDGE0_ANY, **errors}}
            if not prefix:
                operation["security"] = [{"bearer": []}]
            if method == "post":
                operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
            operations[(method, f"/piston{prefix}/api/v2/{name}")] = operation
    return operations


JOBE_SUMMARIES = {"/languages": "languages, as [[id, version], ...]", "/runs": "run a run_spec, synchronously",
                  "/files/{file_id}": "store a file for runs' file_list (PUT) or ask whether it is stored (HEAD)"}


def _jobe_operations() -> dict[tuple[str, str], dict[str, Any]]:
    """Jobe's REST API (Moodle CodeRunner's) under /jobe/index.php/restapi; errors are JSON strings."""
    from .compat.jobe_routes import PREFIX, ROUTES as JOBE_ROUTES

    errors = {code: {**JUDGE0_ANY, "description": f"Jobe's message, a JSON string{extra}"} for code, extra in (
        ("400", ""), ("403", ": no key, or an unknown one"), ("404", ": no such file"), ("413", ": too large"),
        ("429", ""), ("503", ""))}
    operations = {}
    for method, path, _ in JOBE_ROUTES:
        params = [{"name": "file_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9]+$", "maxLength": 128}}
                  ] if "{file_id}" in path else []
        success = {"200": JUDGE0_ANY} if method in ("GET", "POST") else {
            "204": {"description": "stored" if method == "PUT" else "it is stored"}}
        responses = {**success, **errors}
        if method == "HEAD":  # an answer without a body
            responses = {code: {"description": response["description"]} for code, response in responses.items()}
        operation = {"summary": f"Jobe: {JOBE_SUMMARIES[path.rstrip('/')]}", "tags": ["jobe"], "security": [{"jobe": []}],
                     "parameters": params, "responses": responses}
        if method in ("POST", "PUT"):
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
        operations[(method.lower(), PREFIX + path)] = operation
    return operations


E2B_ERROR = {"type": "object", "required": ["code", "message"],
             "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}}
E2B_SANDBOX = {"type": "object", "required": ["templateID", "sandboxID", "clientID", "envdVersion"],
               "properties": {"templateID": {"type": "string"}, "sandboxID": {"type": "string"}, "alias": {"type": "string"},
                              "clientID": {"type": "string"}, "envdVersion": {"type": "string"},
                              "envdAccessToken": {"type": "string", "description": "the sandbox's own credential for"
                                                  " the calls inside it (X-Access-Token)"},
                              "trafficAccessToken": {"type": "string", "description": "the same token, which the code"
                                                     " interpreter's SDK sends as E2B-Traffic-Access-Token"},
                              "domain": {"type": ["string", "null"]}}}
E2B_LISTED = {"type": "object", "required": ["templateID", "sandboxID", "clientID", "startedAt", "endAt", "cpuCount",
                                             "memoryMB", "diskSizeMB", "state", "envdVersion"],
              "properties": {**E2B_SANDBOX["properties"], "startedAt": {"type": "string", "format": "date-time"},
                             "endAt": {"type": "string", "format": "date-time"}, "cpuCount": {"type": "integer"},
                             "memoryMB": {"type": "integer"}, "diskSizeMB": {"type": "integer"},
                             "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                             "state": {"enum": ["running", "paused"]}, "allowInternetAccess": {"type": "boolean"}}}
E2B_NEW_SANDBOX = {"type": "object", "required": ["templateID"], "properties": {
    "templateID": {"type": "string", "description": "base (bash, python3, node), code-interpreter-v1 (Python with"
                                                   " numpy, pandas, matplotlib), python or javascript"},
    "timeout": {"type": "integer", "minimum": 0, "description": "seconds; clamped to the operator's lifetimes"},
    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    "envVars": {"type": "object", "additionalProperties": {"type": "string"}},
    "secure": {"type": "boolean"}, "allow_internet_access": {
        "type": "boolean", "description": "true: the operator's widest network policy where egress is on (else no network)"},
    "network": {"type": "object", "additionalProperties": False, "properties": {
        "allowOut": {"type": "array", "items": {"type": "string"}, "description": "host names and *.domain patterns"},
        "denyOut": {"type": "array", "items": {"enum": ["0.0.0.0/0", "::/0"]}},
        "allowPublicTraffic": {"type": "boolean", "description": "accepted; calls into a sandbox always need its token"},
        "maskRequestHost": {"type": "string", "description": "accepted, unused"}}},
    "autoPause": {"type": "boolean"}}}
E2B_TEMPLATE = {"type": "object", "required": ["templateID", "buildID", "cpuCount", "memoryMB", "public", "aliases"],
                "properties": {"templateID": {"type": "string"}, "buildID": {"type": "string"},
                               "cpuCount": {"type": "integer"}, "memoryMB": {"type": "integer"},
                               "diskSizeMB": {"type": "integer"}, "public": {"type": "boolean"},
                               "aliases": {"type": "array", "items": {"type": "string"}}}}
E2B_SUMMARIES = {
    ("GET", "/health"): "health", ("POST", "/sandboxes"): "create a sandbox from a template",
    ("GET", "/sandboxes"): "your running sandboxes", ("GET", "/v2/sandboxes"): "your sandboxes, filtered and paged",
    ("GET", "/sandboxes/{sandbox_id}"): "a sandbox", ("DELETE", "/sandboxes/{sandbox_id}"): "kill a sandbox",
    ("POST", "/sandboxes/{sandbox_id}/timeout"): "end it `timeout` seconds from now",
    ("POST", "/sandboxes/{sandbox_id}/refreshes"): "keep it at least `duration` seconds more",
    ("POST", "/sandboxes/{sandbox_id}/pause"): "pause it", ("POST", "/sandboxes/{sandbox_id}/resume"): "resume a paused one",
    ("POST", "/sandboxes/{sandbox_id}/connect"): "resume it if paused; its end only moves later",
    ("GET", "/templates"): "the templates (coderund's sandbox languages)",
}


def _e2b_operations() -> dict[tuple[str, str], dict[str, Any]]:
    """E2B's REST API under /e2b (its SDKs' E2B_API_URL), the key in X-API-Key; envd's calls inside a
    sandbox, under /e2b/sandbox, speak the Connect protocol and are described in docs/coming-from/e2b.md."""
    from .compat.e2b_routes import ENVD, PREFIX, ROUTES as E2B_ROUTES

    def answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"description": description, **({"content": {"application/json": {"schema": schema}}} if schema else {})}

    errors = {code: answer(f"E2B's error{why}", E2B_ERROR) for code, why in (
        ("400", ": a bad body or query"), ("401", ": no key, or an unknown one"), ("403", ": the key lacks the scope"),
        ("404", ": no such sandbox of yours, or template"), ("408", ": the body was too slow"),
        ("409", ": paused already, busy, or not paused"), ("413", ": the body is too large"),
        ("429", ": a rate, quota or cap of the account"), ("503", ": no worker, or a dependency down"))}
    sandbox, listed = answer("The sandbox", E2B_SANDBOX), answer("The sandbox", E2B_LISTED)
    successes = {
        ("GET", "/health"): {"200": answer("Up", {"type": "object"})}, ("POST", "/sandboxes"): {"201": sandbox},
        ("GET", "/sandboxes"): {"200": answer("Sandboxes", {"type": "array", "items": E2B_LISTED})},
        ("GET", "/v2/sandboxes"): {"200": {**answer("Sandboxes", {"type": "array", "items": E2B_LISTED}), "headers": {
            "X-Next-Token": {"schema": {"type": "string"}, "description": "nextToken of the next page, if any"}}}},
        ("GET", "/sandboxes/{sandbox_id}"): {"200": listed},
        ("POST", "/sandboxes/{sandbox_id}/resume"): {"201": sandbox},
        ("POST", "/sandboxes/{sandbox_id}/connect"): {"200": answer("It was running", E2B_SANDBOX),
                                                      "201": answer("It was paused, and is resumed", E2B_SANDBOX)},
        ("GET", "/templates"): {"200": answer("Templates", {"type": "array", "items": E2B_TEMPLATE})},
    }
    bodies = {"/sandboxes": E2B_NEW_SANDBOX, "/timeout": {"type": "object", "required": ["timeout"], "properties": {
        "timeout": {"type": "integer", "minimum": 0}}}, "/refreshes": {"type": "object", "properties": {
            "duration": {"type": "integer", "minimum": 0}}}, "/resume": {"type": "object", "properties": {
                "timeout": {"type": "integer", "minimum": 0}}}, "/connect": {"type": "object", "required": ["timeout"],
                                                                             "properties": {"timeout": {"type": "integer", "minimum": 0}}}}
    operations = {}
    for method, path, _ in E2B_ROUTES:
        if path.startswith(ENVD):
            continue
        operation: dict[str, Any] = {
            "summary": f"E2B: {E2B_SUMMARIES[(method, path)]}", "tags": ["e2b"],
            "parameters": [SANDBOX_ID] if "{sandbox_id}" in path else [],
            "responses": {**successes.get((method, path), {"204": {"description": "Done"}}), **errors}}
        if path != "/health":
            operation["security"] = [{"e2b": []}, {"bearer": []}]
        if path == "/v2/sandboxes":
            operation["parameters"] = [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                                       for name in ("metadata", "state", "template", "startedAfter", "order", "limit", "nextToken")]
        if body := next((schema for suffix, schema in bodies.items() if method == "POST" and path.endswith(suffix)), None):
            operation["requestBody"] = {"required": path in ("/sandboxes", "/sandboxes/{sandbox_id}/timeout"),
                                        "content": {"application/json": {"schema": body}}}
        operations[(method.lower(), PREFIX + path)] = operation
    return operations


SANDBOX_SCHEMAS = {
    "SandboxRequest": {
        "type": "object",
        "properties": {
            "language": {"enum": list(LANGUAGES), "description": "the image (python: numpy, pandas, matplotlib; javascript: "
                         "Node 18) and the default context's language; bash contexts run in any"},
            "memory_mb": {"type": "integer", "minimum": 64, "description": "default 1024; the operator sets the most"},
            "cpus": {"type": "number", "minimum": 0.1, "description": "default 1"},
            "disk_mb": {"type": "integer", "minimum": 16,
                        "description": "the work folder's size (default 256), memory-backed: it counts in memory_mb"},
            "timeout_s": {"type": "integer", "minimum": 1, "description": "lifetime, default 3600; the operator's most 86400"},
            "idle_timeout_s": {"type": "integer", "minimum": 1,
                               "description": "paused after this long without a call (default 600); the next call resumes it"},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"},
                         "description": "yours to filter GET /sandboxes by"},
            "network": _ref("NetworkPolicy"),
        },
    },
    "Sandbox": {
        "type": "object", "required": ["id", "state", "language", "expires_at"],
        "properties": {"id": {"type": "string", "format": "uuid"}, "state": {"enum": list(STATES)},
                       "language": {"type": "string"}, "memory_mb": {"type": "integer"}, "cpus": {"type": "number"},
                       "disk_mb": {"type": "integer"}, "idle_timeout_s": {"type": "integer"},
                       "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                       "created_at": {"type": "string"}, "expires_at": {"type": "string"},
                       "network": {"oneOf": [_ref("NetworkPolicy"), {"type": "null"}]},
                       "stored": {"type": "boolean", "description": "paused with its files persisted and no container:"
                                  " the next call restores it on any worker"},
                       "persisted_bytes": {"type": "integer", "description": "what its persisted files take (0: none)"},
                       "restored": {"enum": ["files", None], "description": "files: it came back from its persisted"
                                    " files with fresh contexts (interpreter memory is not kept); null: never restored"}},
    },
    "SandboxRun": {
        "type": "object", "required": ["code"],
        "properties": {"code": {"type": "string"},
                       "language": {"enum": list(CONTEXT_LANGUAGES),
                                    "description": "that language's own context (default: the sandbox's language)"},
                       "context": {"type": "string", "description": "a context made by POST …/contexts"},
                       "timeout_s": {"type": "number", "minimum": 0.1, "maximum": MAX_RUN_S,
                                     "description": f"default {DEFAULT_RUN_S}; then KeyboardInterrupt, and after 2 s more "
                                                    "the interpreter is killed and restarted (its state is lost)"}},
    },
    "RunOutcome": {
        "type": "object", "required": ["stdout", "stderr", "results", "error", "execution_count"],
        "properties": {
            "stdout": {"type": "string"}, "stderr": {"type": "string"},
            "results": {"type": "array", "items": {"type": "object", "additionalProperties": True}, "maxItems": MAX_RESULTS,
                        "description": "MIME bundles as Jupyter's display data: text/plain for the last expression's value, "
                                       "image/png (base64) for each matplotlib figure, text/html, application/json…; "
                                       f"at most {MAX_RESULTS} per run and {MAX_RESULT_BYTES // 2**20} MiB of JSON together "
                                       "(a result that does not fit is dropped whole)"},
            "error": {"type": ["object", "null"], "properties": {"name": {"type": "string"}, "value": {"type": "string"},
                                                                 "traceback": {"type": "string"}}},
            "execution_count": {"type": ["integer", "null"]}, "context": {"type": ["string", "null"]},
            "truncated": {"type": "boolean", "description": f"stdout or stderr went over {MAX_OUTPUT_BYTES // 2**20} MiB, or "
                                                            "the results over their caps: the rest was dropped"},
        },
    },
    "SandboxCommand": {
        "type": "object", "required": ["cmd"],
        "properties": {"cmd": {"oneOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1},
                                         {"type": "string", "description": "run by bash -c"}],
                               "description": "no NUL in any argument"},
                       "cwd": {"type": "string", "description": "in the work folder"},
                       "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "no NUL"},
                       "stdin": {"type": "string"}, "timeout_s": {"type": "number", "minimum": 0.1, "maximum": MAX_RUN_S}},
    },
    "CommandOutcome": {
        "type": "object", "required": ["stdout", "stderr", "exit_code", "signal", "timed_out"],
        "properties": {"stdout": {"type": "string"}, "stderr": {"type": "string"},
                       "exit_code": {"type": ["integer", "null"]}, "signal": {"type": ["integer", "null"]},
                       "timed_out": {"type": "boolean"},
                       "truncated": {"type": "boolean", "description": f"stdout or stderr went over {MAX_OUTPUT_BYTES // 2**20} "
                                                                       "MiB: the rest was dropped"}},
    },
    "SandboxTimeout": {"type": "object", "required": ["timeout_s"],
                       "properties": {"timeout_s": {"type": "integer", "minimum": 1, "description": "seconds from now"}}},
    "ContextRequest": {"type": "object", "properties": {"language": {"enum": list(CONTEXT_LANGUAGES)}}},
    "Context": {"type": "object", "required": ["id", "language"],
                "properties": {"id": {"type": "string"}, "language": {"type": "string"},
                               "execution_count": {"type": "integer"}, "busy": {"type": "boolean"}}},
    "FileEntry": {"type": "object", "required": ["name", "kind", "size"],
                  "properties": {"name": {"type": "string"}, "kind": {"enum": ["file", "folder", "symlink", "other"]},
                                 "size": {"type": "integer"}}},
}
SCHEMAS.update(SANDBOX_SCHEMAS)
ERRORS["410"] = _error("The sandbox has ended; the message says why (deleted, expired, out_of_memory, worker_lost…).",
                       "sandbox_ended")
SANDBOX_ID = {"name": "sandbox_id", "in": "path", "required": True, "schema": {"type": "string"}}
FILE_PATH = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "relative to the work folder (/box); no '..', no symlink followed"}
CONTEXT_ID = {"name": "context_id", "in": "path", "required": True, "schema": {"type": "string"}}
NDJSON_EVENTS = {"application/x-ndjson": {"schema": {"type": "string"},
                                          "example": '{"type": "stdout", "text": "hi\\n"}\n{"type": "end"}\n'}}
CALL_ERRORS = ("401", "404", "409", "410", "503")


def _sandbox_op(summary: str, responses: dict[str, Any], *params: dict[str, Any], body: str | None = None,
                errors: tuple[str, ...] = CALL_ERRORS, description: str | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "tags": ["sandboxes"], "security": AUTH,
                                 "parameters": [SANDBOX_ID, *params], "responses": {**responses, **_errors(*errors)}}
    if body:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if description:
        operation["description"] = description
    return operation


def _streamed(schema: str, description: str) -> dict[str, Any]:
    ok = _json(_ref(schema), description)
    ok["content"].update(NDJSON_EVENTS)
    return ok


ONE = "/sandboxes/{sandbox_id}"
SANDBOX_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/sandboxes"): {
        "summary": "Create a stateful sandbox: persistent interpreters, files, paused when idle", "tags": ["sandboxes"],
        "security": AUTH, "requestBody": _body("SandboxRequest", {"language": "python", "idle_timeout_s": 600}),
        "responses": {"201": _json(_ref("Sandbox"), "Running"), **_errors(*BODY_ERRORS, "401", "429")},
    },
    ("get", "/sandboxes"): {
        "summary": "Your live sandboxes; ?metadata.KEY=VALUE filters", "tags": ["sandboxes"], "security": AUTH,
        "responses": {"200": _json({"type": "object", "required": ["sandboxes"],
                                    "properties": {"sandboxes": {"type": "array", "items": _ref("Sandbox")}}}, "Sandboxes"),
                      **_errors("401", "503")},
    },
    ("get", ONE): _sandbox_op("A sandbox", {"200": _json(_ref("Sandbox"), "The sandbox")}),
    ("delete", ONE): _sandbox_op("End a sandbox now", {"204": {"description": "Ended"}}),
    ("post", f"{ONE}/timeout"): _sandbox_op("Set its lifetime's end to timeout_s from now, never past the operator's"
                                            " longest lifetime after its creation",
                                            {"200": _json(_ref("Sandbox"), "Extended")}, body="SandboxTimeout",
                                            errors=(*CALL_ERRORS, "400", "408", "413")),
    ("put", f"{ONE}/network"): _sandbox_op("Replace its network policy, in force at once: open connections to hosts "
                                           "outside it are closed",
                                           {"200": _json(_ref("Sandbox"), "The policy is in force")}, body="NetworkPolicy",
                                           errors=(*CALL_ERRORS, "400", "413"),
                                           description="409 for a sandbox created without `network`: it has no way out "
                                                       "to open."),
    ("post", f"{ONE}/pause"): _sandbox_op(
        "Pause it: its files (work folder and home, /tmp) persisted, its container released",
        {"200": _json(_ref("Sandbox"), "Stored")}, errors=(*CALL_ERRORS, "413"),
        description="409 if it is paused already or busy with a call; 413 if its files are over the operator's bound "
                    "of a sandbox's state (--sandbox-state-max-mb) or of a user's together (--sandbox-state-user-mb), "
                    "and then nothing changes. The next call restores it, on any worker, with `restored: \"files\"`."),
    ("post", f"{ONE}/resume"): _sandbox_op(
        "Bring a paused sandbox back now (any call would)", {"200": _json(_ref("Sandbox"), "Running")}),
    ("post", f"{ONE}/fork"): _sandbox_op(
        "A new sandbox from a copy of this one's files as they are now", {"201": _json(_ref("Sandbox"), "Running")},
        errors=(*CALL_ERRORS, "413", "429"),
        description="Yours, with the source's language, limits, environment, metadata and remaining lifetime; "
                    "counted against your sandboxes as a create is (429 past the cap). A running source is "
                    "persisted first and keeps running; the two never share a write."),
    ("post", f"{ONE}/run"): _sandbox_op(
        "Run code in a persistent context (Python keeps variables, imports, definitions; bash keeps cwd and env)",
        {"200": _streamed("RunOutcome", "The run's outcome; with Accept: application/x-ndjson, events as they happen")},
        body="SandboxRun", errors=(*CALL_ERRORS, "400", "408", "413", "429"),
        description="NDJSON events: `stdout` and `stderr` (`text`), `result` (`data`, a MIME bundle), `error` (`name`, "
                    "`value`, `traceback`), `execution_count`, then `end`. One run at a time per context (else 409); a "
                    "client that disconnects interrupts its run. stdout and stderr are cut at "
                    f"{MAX_OUTPUT_BYTES // 2**20} MiB each, results at {MAX_RESULTS} and {MAX_RESULT_BYTES // 2**20} MiB "
                    "together; past a cap the rest is dropped and `truncated` is true. A run in a language whose "
                    f"context is not there yet makes it: 409 when the sandbox has {MAX_CONTEXTS} contexts already. "
                    "A bash run's code is kept in the sandbox's /tmp: 409 while /tmp is full."),
    ("post", f"{ONE}/commands"): _sandbox_op(
        "Run a program beside the interpreters", {"200": _streamed("CommandOutcome", "Its outcome; NDJSON when asked")},
        body="SandboxCommand", errors=(*CALL_ERRORS, "400", "408", "413", "429"),
        description=f"stdout and stderr are cut at {MAX_OUTPUT_BYTES // 2**20} MiB each. At most {MAX_COMMANDS} run "
                    "at once in a sandbox (else 409, as when the sandbox has no room for another process); `cwd` is "
                    "a folder (no symlink) in the work folder."),
    ("post", f"{ONE}/contexts"): _sandbox_op(
        "A new context (its own interpreter)", {"201": _json(_ref("Context"), "Made")}, body="ContextRequest",
        errors=(*CALL_ERRORS, "400", "408", "413"),
        description=f"A sandbox has at most {MAX_CONTEXTS} contexts, its language's own among them: past them, 409."),
    ("get", f"{ONE}/contexts"): _sandbox_op(
        "Its contexts", {"200": _json({"type": "object", "required": ["contexts"], "properties": {
            "contexts": {"type": "array", "items": _ref("Context")}}}, "Contexts")}),
    ("delete", f"{ONE}/contexts/{{context_id}}"): _sandbox_op("Stop a context", {"204": {"description": "Stopped"}},
                                                              CONTEXT_ID),
    ("get", f"{ONE}/files"): _sandbox_op(
        "A folder's entries (?path=, default the work folder)",
        {"200": _json({"type": "object", "required": ["path", "entries"], "properties": {
            "path": {"type": "string"}, "entries": {"type": "array", "items": _ref("FileEntry"), "maxItems": MAX_ENTRIES},
            "truncated": {"type": "boolean", "description": f"the folder holds more than {MAX_ENTRIES} entries: "
                                                            "these are some of them"}}}, "Entries")},
        {"name": "path", "in": "query", "required": False, "schema": {"type": "string"}}, errors=(*CALL_ERRORS, "400")),
    ("put", f"{ONE}/files/{{path}}"): {
        **_sandbox_op("Write a file: the raw body, any size up to the disk quota (else 413 naming it)",
                      {"201": _json({"type": "object", "required": ["path", "size"], "properties": {
                          "path": {"type": "string"}, "size": {"type": "integer"}}}, "Written")},
                      FILE_PATH, errors=(*CALL_ERRORS, "400", "413")),
        "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                               "format": "binary"}}}},
    },
    ("get", f"{ONE}/files/{{path}}"): _sandbox_op(
        "Read a file (raw bytes)", {"200": {"description": "The file", "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}}, FILE_PATH, errors=(*CALL_ERRORS, "400"),
        description="A regular file only (a FIFO, socket or device is 400). It comes a chunk at a time, each fetched "
                    "from the sandbox once the client has taken the last, up to the size the file had when the "
                    "answer began."),
    ("delete", f"{ONE}/files/{{path}}"): _sandbox_op("Delete a file or folder", {"204": {"description": "Deleted"}},
                                                      FILE_PATH, errors=(*CALL_ERRORS, "400")),
}


def _protected(operation: dict[str, Any]) -> dict[str, Any]:
    """Every operation behind a session or key may answer 403: a key without its scope, or a cookie
    request from another site."""
    if operation.get("security") is not AUTH:
        return operation
    return {**operation, "responses": {**operation["responses"], **_errors("403")}}


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), operation in {**OPERATIONS, **SANDBOX_OPERATIONS, **_judge0_operations(), **_piston_operations(),
                                      **_jobe_operations(), **_e2b_operations()}.items():
        operation_id = method + path.replace("/", "_").replace("{", "").replace("}", "").replace(".", "_")
        paths.setdefault(path, {})[method] = {"operationId": operation_id, **_protected(operation)}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "coderund",
            "version": __version__,
            "description": "Run untrusted code over a REST API. Log in, press **Authorize** and paste the token.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "the token from POST /login"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
                "judge0": {"type": "apiKey", "in": "header", "name": "X-Auth-Token",
                           "description": "a coderund API key, for the Judge0 API under /judge0"},
                "jobe": {"type": "apiKey", "in": "header", "name": "X-API-KEY",
                         "description": "a coderund API key, for the Jobe API under /jobe/index.php/restapi"},
                "e2b": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                        "description": "a coderund API key (of E2B's form, e2b_…, for E2B's SDKs), for the E2B API under /e2b"},
            },
        },
    }
