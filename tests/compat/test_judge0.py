"""The Judge0 CE API: its translation on its own (pure), and the official judge0 SDK, unmodified,
against a live coderund."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import uuid
import zipfile
from datetime import UTC, datetime

import judge0
import pytest

from coderund import plugins as plugin_loader
from coderund.compat import judge0 as adapter
from coderund.config import DEFAULT_PLUGINS_DIR
from coderund.domain import Limits, Result, Task, TaskState, Verdict
from coderund.network import NetworkPolicy

PLUGINS = plugin_loader.load(DEFAULT_PLUGINS_DIR)
LIMITS = adapter.Limits()


def parse(body, *, b64=False):
    return adapter.parse_submission(body, PLUGINS, LIMITS, base64_encoded=b64)


def task(result: Result | None, state=TaskState.DONE, **compat) -> Task:
    return Task(uuid.uuid4(), 1, "python", "print(1)", "", [], Limits(5000, 128), state=state, result=result,
                created_at=datetime(2026, 1, 2, 3, 4, 5, 678900, tzinfo=UTC), compat={"language_id": 71, **compat})


NOT_IN_JUDGE0 = {"tcl", "pypy3", "nim", "racket", "scheme"}  # languages Judge0 CE 1.13.1 does not have


def test_every_shipped_language_has_a_judge0_id_and_the_table_names_only_plugins():
    mapped = {name for name, _ in adapter.LANGUAGES.values()}
    assert mapped == {p.name for p in PLUGINS.all} - NOT_IN_JUDGE0
    ids = {lang["id"] for lang in adapter.languages(PLUGINS)}
    assert {71, 50, 52, 54, 62, 63, 60, 73, 74, 72, 68, 46, 64, 51, 78, 43, 44, 89} <= ids
    names = [lang["name"] for lang in adapter.languages(PLUGINS)]
    assert names == sorted(names) and {"Python (CPython 3.11)", "Go (1.19)", "C (gcc 12)"} <= set(names)


def test_a_submission_becomes_a_task_request():
    request = parse({"source_code": "print(input())", "language_id": "71", "stdin": "x", "expected_output": "x",
                     "command_line_arguments": "a 'b c'", "cpu_time_limit": 2, "memory_limit": 65536})
    assert request.language == "python" and request.code == "print(input())" and request.args == ("a", "b c")
    assert request.limits == {"time_ms": 3000, "memory_mb": 64} and request.compat["expected_output"] == "x"
    encoded = parse({"source_code": base64.b64encode(b"print(2)").decode(), "language_id": 71}, b64=True)
    assert encoded.code == "print(2)"


@pytest.mark.parametrize("body, field, message", [
    ({"language_id": 71}, "source_code", "can't be blank"),
    ({"source_code": "x"}, "language_id", "can't be blank"),
    ({"source_code": "x", "language_id": 9999}, "language_id", "language with id 9999 doesn't exist"),
    ({"source_code": "x", "language_id": 71, "cpu_time_limit": 99}, "cpu_time_limit", "must be less than or equal to 15.0"),
    ({"source_code": "x", "language_id": 71, "memory_limit": 100}, "memory_limit", "must be greater than or equal to 2048"),
    ({"source_code": "x", "language_id": 71, "wall_time_limit": "abc"}, "wall_time_limit", "is not a number"),
    ({"source_code": "x", "language_id": 71, "enable_network": True}, "enable_network", "enabling network is not allowed"),
    ({"source_code": "x", "language_id": 50, "compiler_options": "-O3"}, "compiler_options", "setting compiler options is not allowed"),
    ({"source_code": "x", "language_id": 71, "number_of_runs": 5}, "number_of_runs", "must be less than or equal to 1"),
])
def test_validation_errors_are_judge0s(body, field, message):
    errors = parse(body)
    assert isinstance(errors, dict) and message in errors[field], errors


def test_enable_network_asks_for_the_widest_policy_where_egress_is_on():
    on = dataclasses.replace(LIMITS, allow_enable_network=True)
    asked = adapter.parse_submission({"source_code": "x", "language_id": 71, "enable_network": True}, PLUGINS, on,
                                     base64_encoded=False)
    assert asked.network == NetworkPolicy(("*",))  # admission narrows it to --egress-max
    assert parse({"source_code": "x", "language_id": 71}).network is None
    assert adapter.config_info(on, max_queue=1)["allow_enable_network"] is True


def zipped(files: dict[str, bytes]) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return base64.b64encode(buffer.getvalue()).decode()


def test_additional_files_are_extracted_safely():
    request = parse({"language_id": 89, "additional_files": zipped({"run": b"cat data/x", "data/x": b"hi"})})
    assert dict(request.files) == {"run": "cat data/x", "data/x": "hi"} and request.language == "bash"
    for bad in ({"../escape": b"x"}, {"/abs": b"x"}, {"bin": b"\xff\xfe"}):
        assert "additional_files" in parse({"language_id": 89, "additional_files": zipped(bad)})
    bomb = zipped({"zeros": b"0" * (11 * 1024 * 1024)})  # over the 10 MB extract limit, tiny compressed
    assert "more than" in parse({"language_id": 89, "additional_files": bomb})["additional_files"][0]
    assert parse({"language_id": 89, "additional_files": "not base64!"})["additional_files"]


@pytest.mark.parametrize("verdict, signal, exit_code, expected, status", [
    (Verdict.OK, None, 0, None, 3), (Verdict.OK, None, 0, "1  \n\n", 3), (Verdict.OK, None, 0, "2", 4),
    (Verdict.TIME_LIMIT, 9, None, None, 5), (Verdict.COMPILE_ERROR, None, 1, None, 6),
    (Verdict.RUNTIME_ERROR, 11, None, None, 7), (Verdict.RUNTIME_ERROR, 25, None, None, 8),
    (Verdict.RUNTIME_ERROR, 8, None, None, 9), (Verdict.RUNTIME_ERROR, 6, None, None, 10),
    (Verdict.RUNTIME_ERROR, None, 3, None, 11), (Verdict.RUNTIME_ERROR, 15, None, None, 12),
    (Verdict.MEMORY_LIMIT, 9, None, None, 12), (Verdict.INTERNAL_ERROR, None, None, None, 13),
])
def test_statuses(verdict, signal, exit_code, expected, status):
    done = task(Result(verdict, exit_code=exit_code, signal=signal, stdout=b"1\n"), expected_output=expected)
    assert adapter.status(done) == status
    assert adapter.status(task(None, TaskState.QUEUED)) == 1 and adapter.status(task(None, TaskState.RUNNING)) == 2


def test_documents_as_judge0_writes_them():
    done = task(Result(Verdict.OK, exit_code=0, stdout=b"x" * 100, time_ms=12, wall_ms=40, memory_kb=7000))
    doc = adapter.document(done, PLUGINS, adapter.ALL_FIELDS, base64_encoded=True)
    b64 = base64.b64encode(b"x" * 100).decode()  # 136 characters: lines of 60, 60 and 16
    assert doc["stdout"] == f"{b64[:60]}\n{b64[60:120]}\n{b64[120:]}\n"
    assert doc["time"] == "0.012" and doc["wall_time"] == "0.040" and doc["memory"] == 7000
    assert doc["stderr"] is None and doc["status"] == {"id": 3, "description": "Accepted"}
    assert doc["created_at"] == "2026-01-02T03:04:05.678Z" and doc["language"] == {"id": 71, "name": "Python (CPython 3.11)"}
    assert set(adapter.document(done, PLUGINS, adapter.DEFAULT_FIELDS, base64_encoded=False)) == set(adapter.DEFAULT_FIELDS)
    with pytest.raises(adapter.NotUtf8):
        adapter.document(task(Result(Verdict.OK, stdout=b"\xff")), PLUGINS, ("stdout",), base64_encoded=False)
    assert adapter.parse_fields("token,nope") == "invalid fields: [nope]" and adapter.parse_fields("*") == adapter.ALL_FIELDS


@pytest.fixture
async def sdk(api):
    token = await api.user("judge0")
    status, key, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "sdk"})
    assert status == 201
    client = await asyncio.to_thread(judge0.Client, f"{api.base}/judge0", headers={"X-Auth-Token": key["key"]})
    return client, key["key"]


HELLO = {
    "python": ("print(input())", "hi", "hi\n"), "c": ("#include <stdio.h>\nint main(){char s[9];scanf(\"%8s\",s);puts(s);}", "hi", "hi\n"),
    "cpp": ("#include <iostream>\nint main(){std::string s;std::cin>>s;std::cout<<s<<\"\\n\";}", "hi", "hi\n"),
    "java": ("public class Main{public static void main(String[] a){System.out.println(new java.util.Scanner(System.in).next());}}", "hi", "hi\n"),
    "javascript": ("console.log(require('fs').readFileSync(0,'utf8').trim())", "hi", "hi\n"),
    "go": ("package main\nimport \"fmt\"\nfunc main(){var s string;fmt.Scan(&s);fmt.Println(s)}", "hi", "hi\n"),
    "ruby": ("puts gets", "hi", "hi\n"), "bash": ("read x; echo $x", "hi", "hi\n"), "lua": ("print(io.read())", "hi", "hi\n"),
    "php": ("<?php echo trim(fgets(STDIN)), \"\\n\";", "hi", "hi\n"),
    "rust": ("use std::io::Read;\nfn main(){let mut s=String::new();std::io::stdin().read_to_string(&mut s).unwrap();println!(\"{}\",s.trim());}", "hi", "hi\n"),
    "csharp": ("class Program{static void Main(){System.Console.WriteLine(System.Console.ReadLine());}}", "hi", "hi\n"),
    "kotlin": ("fun main() { println(readLine()) }", "hi", "hi\n"),
    # As Judge0's TypeScript programs start: Node's require declared by hand.
    "typescript": ("declare var require: any;\nconsole.log(require('fs').readFileSync(0, 'utf8').trim());", "hi", "hi\n"),
}


async def test_the_sdk_runs_languages_checks_answers_and_batches(sdk):
    client, _ = sdk
    assert (await asyncio.to_thread(client.get_about))["version"] == "1.13.1"
    config = await asyncio.to_thread(client.get_config_info)
    assert config.enable_network is False and config.max_submission_batch_size == 20
    assert len(await asyncio.to_thread(client.get_statuses)) == 14
    for language, (code, stdin, expected) in HELLO.items():
        alias = {"cpp": judge0.CPP, "c": judge0.C, "python": judge0.PYTHON, "java": judge0.JAVA,
                 "javascript": judge0.JAVASCRIPT, "go": judge0.GO, "ruby": judge0.RUBY, "bash": judge0.BASH,
                 "lua": judge0.LUA, "php": judge0.PHP, "typescript": judge0.TYPESCRIPT, "rust": judge0.RUST,
                 "csharp": judge0.CSHARP, "kotlin": judge0.KOTLIN}[language]
        done = await asyncio.to_thread(judge0.run, client=client, source_code=code, stdin=stdin, language=alias,
                                       expected_output=expected)
        assert done.status == judge0.Status.ACCEPTED and done.stdout == expected, (language, done)
    wrong = await asyncio.to_thread(judge0.run, client=client, source_code="print(1)", expected_output="2", language=judge0.PYTHON)
    assert wrong.status == judge0.Status.WRONG_ANSWER
    broken = await asyncio.to_thread(judge0.run, client=client, source_code="int main() {", language=judge0.C)
    assert broken.status == judge0.Status.COMPILATION_ERROR and "error" in broken.compile_output
    crash = await asyncio.to_thread(judge0.run, client=client, source_code="import sys\nsys.exit(3)", language=judge0.PYTHON)
    assert crash.status == judge0.Status.RUNTIME_ERROR_NZEC and crash.exit_code == 3
    cases = [judge0.TestCase(input=str(n), expected_output=str(n * n)) for n in range(5)]
    judged = await asyncio.to_thread(judge0.run, client=client, source_code="n = int(input())\nprint(n * n)",
                                     language=judge0.PYTHON, test_cases=cases)
    assert [s.status for s in judged] == [judge0.Status.ACCEPTED] * 5
    for size in (42, 84):  # the SDK sends them 20 at a time
        batch = [judge0.Submission(source_code=f"print({i})", language=judge0.PYTHON) for i in range(size)]
        ran = await asyncio.to_thread(judge0.run, client=client, submissions=batch)
        assert [s.stdout for s in ran] == [f"{i}\n" for i in range(size)]


async def test_the_raw_api_errors_and_ownership(api, sdk):
    _, key = sdk
    headers = {"X-Auth-Token": key}
    assert (await api.call("GET", "/judge0/submissions"))[0] == 401
    status, body, _ = await api.call("GET", "/judge0/submissions", headers={"X-Auth-Token": "wrong"})
    assert status == 401 and body == ""
    status, body, _ = await api.call("POST", "/judge0/submissions?wait=true", headers=headers,
                                     json={"source_code": "import sys; sys.stdout.buffer.write(b'\\xff')", "language_id": 71})
    assert status == 201 and "base64_encoded=true" in body["error"] and body["token"]
    status, body, _ = await api.call("GET", f"/judge0/submissions/{body['token']}?base64_encoded=true&fields=stdout,status_id",
                                     headers=headers)
    assert status == 200 and body == {"stdout": "/w==\n", "status_id": 3}
    assert (await api.call("GET", "/judge0/submissions/x?fields=nope", headers=headers))[1] == {"error": "invalid fields: [nope]"}
    status, body, _ = await api.call("GET", "/judge0/submissions?fields=%0Dx%0F", headers=headers)  # once a 500
    assert status == 400 and body["error"].startswith("invalid fields")
    assert (await api.call("GET", f"/judge0/submissions/{uuid.uuid4()}", headers=headers))[0] == 404
    status, body, _ = await api.call("POST", "/judge0/submissions", headers=headers, json={"language_id": 71})
    assert status == 422 and body == {"source_code": ["can't be blank"]}
    status, body, _ = await api.call("POST", "/judge0/submissions/batch", headers=headers, json={"submissions": [
        {"source_code": "print(1)", "language_id": 71}, {"language_id": 71}]})
    assert status == 201 and "token" in body[0] and body[1] == {"source_code": ["can't be blank"]}
    status, body, _ = await api.call("POST", "/judge0/submissions/batch", headers=headers, json={"submissions": [{}] * 21})
    assert status == 400 and "less than or equal to 20" in body["error"]
    token = (await api.call("POST", "/judge0/submissions?wait=true", headers=headers,
                            json={"source_code": "print(5)", "language_id": 71}))[1]["token"]
    other = await api.user("other")
    assert (await api.call("GET", f"/judge0/submissions/{token}", headers={"Authorization": f"Bearer {other}"}))[0] == 404
    status, listed, _ = await api.call("GET", "/judge0/submissions?per_page=2", headers=headers)
    assert status == 200 and len(listed["submissions"]) == 2 and listed["meta"]["total_count"] == 3 and listed["meta"]["total_pages"] == 2
    status, deleted, _ = await api.call("DELETE", f"/judge0/submissions/{token}?fields=stdout", headers=headers)
    assert status == 200 and deleted == {"stdout": "NQo=\n"}
    assert (await api.call("GET", f"/judge0/submissions/{token}", headers=headers))[0] == 404
    status, body, _ = await api.call("GET", f"/judge0/submissions/batch?tokens={token},{uuid.uuid4()}", headers=headers)
    assert status == 200 and body == {"submissions": [None, None]}
    assert (await api.call("GET", "/judge0/languages/71", headers=headers))[1]["source_file"] == "main.py"
    assert (await api.call("GET", "/judge0/version", headers=headers))[1] == "1.13.1"
