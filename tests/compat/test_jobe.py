"""Jobe (Moodle CodeRunner's sandbox): its translation on its own (pure), and its REST API against a
live coderund under both runtimes, written from what Jobe's own testsubmit.py checks."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid

import pytest

from coderund import plugins as plugin_loader
from coderund.compat import jobe
from coderund.config import DEFAULT_PLUGINS_DIR
from coderund.domain import Limits, Result, Task, Verdict
from tests.conftest import own_server

PLUGINS = plugin_loader.load(DEFAULT_PLUGINS_DIR)
RUNS = "/jobe/index.php/restapi/runs"


def spec(**run) -> jobe.RunSpec:
    return jobe.parse_run({"run_spec": {"language_id": "c", "sourcecode": "int main(){}", **run}}, PLUGINS)


def test_languages_are_jobes_with_the_plugins_versions():
    listed = dict(jobe.languages(PLUGINS))
    assert set(listed) == {"c", "cpp", "python3", "java", "nodejs", "php", "octave", "pascal"}
    assert listed["python3"] == "3.11" and listed["pascal"] == "3.2.2" and listed["c"] == "12"


@pytest.mark.parametrize("body, status, message", [
    ([], 400, "Non-JSON post data received"),
    ({}, 400, "No run_spec attribute found in post data"),
    ({"run_spec": {}}, 400, "run_spec is missing the required attribute 'sourcecode'"),
    ({"run_spec": {"sourcecode": "x"}}, 400, "run_spec is missing the required attribute 'language_id'"),
    ({"run_spec": {"sourcecode": "x", "language_id": "cobol"}}, 400, "Language 'cobol' is not known"),
    ({"run_spec": {"sourcecode": "x", "language_id": "C", "parameters": {"cputime": 151}}}, 400,
     "cputime exceeds maximum allowed on this Jobe server (120 secs)"),
    ({"run_spec": {"sourcecode": "x", "language_id": "c", "sourcefilename": "../x.c"}}, 400,
     "The sourcefilename for the run_spec is illegal"),
    ({"run_spec": {"sourcecode": "x", "language_id": "c", "sourcefilename": ".hidden.c"}}, 400,
     "The sourcefilename for the run_spec is illegal"),
    ({"run_spec": {"sourcecode": "x", "language_id": "c", "file_list": [["short", "f"]]}}, 400,
     "Invalid file specifier: Array\n(\n    [0] => short\n    [1] => f\n)\n"),
    ({"run_spec": {"sourcecode": "x", "language_id": "c", "file_list": [["abcdefgh12", "a/b"]]}}, 400,
     "Invalid file specifier: Array\n(\n    [0] => abcdefgh12\n    [1] => a/b\n)\n"),
    ({"run_spec": {"sourcecode": "x", "language_id": "c", "parameters": {"runargs": "-v"}}}, 400,
     "parameter 'runargs' must be a list of strings"),
])
def test_errors_are_jobes_in_its_order(body, status, message):
    with pytest.raises(jobe.JobeError) as refused:
        jobe.parse_run(body, PLUGINS)
    assert (refused.value.status, refused.value.message) == (status, message)


def test_c_runs_with_jobes_commands_and_limits():
    request = jobe.task_request(spec(), PLUGINS, {})
    program = request.program
    assert request.language == "c" and program.source_file == "prog.c"
    assert program.compile == ("sh", "-c", "{ gcc -Wall -Werror -std=c99 -x c -o prog.c.exe prog.c ; } >/dev/null")
    assert program.run == ("sh", "-c", "./prog.c.exe")
    assert (program.address_space_mb, program.file_size_mb, program.processes) == (400, 20, 31)
    assert request.limits == {"time_ms": 5000} and request.compat == {"api": "jobe", "language_id": "c", "compiled": True}
    tuned = jobe.task_request(spec(parameters={"compileargs": ["-O2"], "linkargs": ["-lm"], "runargs": ["a b", "c"],
                                               "memorylimit": 0, "numprocs": "lots", "cputime": 60}), PLUGINS, {})
    assert tuned.program.compile[2] == "{ gcc -O2 -o prog.c.exe prog.c -lm; } >/dev/null"
    assert tuned.program.run[2] == "./prog.c.exe a b c"  # runargs are shell words, as Jobe joins them
    assert tuned.program.address_space_mb == 0 and tuned.program.processes == 31  # a number that is none: the default
    assert tuned.limits == {"time_ms": PLUGINS.get("c").max_limits.time_ms}  # coderund's own cap


def test_interpreted_languages_take_the_target_between_their_arguments():
    python = jobe.task_request(jobe.parse_run({"run_spec": {
        "language_id": "python3", "sourcecode": "", "sourcefilename": "__tester__.python3",
        "parameters": {"interpreterargs": ['-c "print(1)"'], "runargs": ["x"]}}}, PLUGINS), PLUGINS, {})
    assert python.program.run == ("sh", "-c", 'python3 -c "print(1)" __tester__.python3 x')
    assert python.program.compile == ("sh", "-c", "{ python3 -m py_compile __tester__.python3; } >/dev/null")
    assert python.program.address_space_mb == 1000  # Python's own default in Jobe
    octave = jobe.task_request(jobe.parse_run({"run_spec": {"language_id": "octave", "sourcecode": "x"}}, PLUGINS),
                               PLUGINS, {})
    assert octave.program.compile is None and octave.program.run[2] == "octave --norc --no-window-system --silent -H prog.m"


def test_java_is_named_by_its_public_class_and_runs_without_a_memory_limit():
    code = "public class Blah {\n public static void main(String[] args) {}\n}\n"
    unnamed = jobe.task_request(jobe.parse_run({"run_spec": {"language_id": "java", "sourcecode": code}}, PLUGINS),
                                PLUGINS, {})
    assert unnamed.program.source_file == "Blah.java" and unnamed.program.run[2] == "java -Xrs -Xss8m -Xmx200m Blah"
    assert unnamed.program.address_space_mb == 0 and unnamed.program.processes == 257
    legacy = jobe.parse_run({"run_spec": {"language_id": "java", "sourcecode": code, "sourcefilename": "prog.java"}}, PLUGINS)
    assert legacy.sourcefilename == ""  # CodeRunner's old wrong name is ignored, as Jobe does
    named = jobe.task_request(jobe.parse_run({"run_spec": {"language_id": "java", "sourcecode": code,
                                                           "sourcefilename": "Test.java",
                                                           "parameters": {"main_class": "Other"}}}, PLUGINS), PLUGINS, {})
    assert named.program.source_file == "Test.java" and named.program.run[2].endswith(" Other")


def test_stored_files_travel_as_text_or_decoded_in_the_sandbox():
    request = jobe.task_request(spec(file_list=[["abcdefgh1", "data.txt"], ["abcdefgh2", "blob.bin"]]), PLUGINS,
                                {"abcdefgh1": b"text\n", "abcdefgh2": b"\xff\x00"})
    assert request.files == (("data.txt", "text\n"), ("blob.bin.coderund-b64", base64.b64encode(b"\xff\x00").decode()))
    assert request.program.compile[2].startswith("base64 -d blob.bin.coderund-b64 > blob.bin && rm -f blob.bin.coderund-b64 && ")


def task(result: Result, language_id: str = "c", compiled: bool = True) -> Task:
    return Task(uuid.uuid4(), 1, "c", "", "", [], Limits(5000, 128), result=result,
                compat={"api": "jobe", "language_id": language_id, "compiled": compiled})


@pytest.mark.parametrize("result, outcome", [
    (Result(Verdict.OK, exit_code=0, stdout=b"hi\n"), 15),
    (Result(Verdict.RUNTIME_ERROR, exit_code=3), 15),  # the exit code does not matter
    (Result(Verdict.OK, exit_code=0, stderr=b"warning\n"), 12),  # any stderr does
    (Result(Verdict.RUNTIME_ERROR, signal=11), 12),
    (Result(Verdict.COMPILE_ERROR, exit_code=1, compile_output=b"error: x\n"), 11),
    (Result(Verdict.OK, exit_code=0, compile_output=b"warning: unused\n", stdout=b"ran\n"), 11),  # any compiler output
    (Result(Verdict.TIME_LIMIT, signal=9, stderr=b"killed"), 13),
    (Result(Verdict.OUTPUT_LIMIT, signal=9, stdout=b"x" * 10), 13),
    (Result(Verdict.INTERNAL_ERROR), 20),
])
def test_outcomes_are_decided_as_jobe_decides_them(result, outcome):
    answer = jobe.result(task(result))
    assert answer["outcome"] == outcome
    if outcome in (11, 13):
        assert answer["stderr"] == ""
    if outcome == 11:
        assert answer["cmpinfo"] == result.compile_output.decode() and answer["stdout"] == ""


def test_output_that_is_not_utf8_is_escaped_as_jobe_does():
    assert jobe.clean("Un rôle délétère\n".encode()) == "Un rôle délétère\n"
    assert jobe.clean(b"Hello world\n\x01\x06\xc0\xc9\n\t\x7f") == "Hello world\n\\x01\\x06\\xc0\\xc9\n\t\\x7f"


def test_octave_and_java_stderr_filtered_as_jobe_does():
    octave = jobe.result(task(Result(Verdict.RUNTIME_ERROR, exit_code=1, stderr=b"error: boom\r\nerror: ignoring"
                                     b" octave_execution_exception\n\n"), "octave", compiled=False))
    assert octave["stderr"] == "error: boom\n"
    java = jobe.result(task(Result(Verdict.RUNTIME_ERROR, exit_code=1, stderr=b"Exception\n\tat Main.main"), "java"))
    assert java["stderr"] == "Exception\n        at Main.main"


SPINNING_FORKS = r'''#include <stdio.h>
#include <unistd.h>
int main() {
    int successes = 0;
    for (int i = 0; i < 1000; i++) {
        int pid = fork();
        if (pid == 0) { %s; }
        if (pid > 0) successes += 1;
    }
    if (successes > 5 && successes <= 20) puts("OK"); else printf("%%d forks\n", successes);
}'''
MALLOC = r'''#include <stdio.h>
#include <stdlib.h>
int main() { puts(malloc(2000000000) == NULL ? "Memory limit worked" : "malloc worked"); }'''
PYLINT = r'''import os, subprocess
open('source.py', 'w').write('"""Doc string"""\nGLOBAL = 20\nprint("GLOBAL =", GLOBAL)\n')
os.mkdir('Home')
print(repr(subprocess.run(['pylint', '--reports=no', 'source.py'], capture_output=True, text=True,
                          env={**os.environ, 'HOME': os.getcwd() + '/Home'}).stdout))
'''


async def test_jobes_api_under_both_runtimes(runtime_api):
    """What testsubmit.py checks, through the REST API with X-API-KEY: outcomes per language, Jobe's
    parameters as rlimits (address space, processes), CodeRunner's file flow (404, PUT, HEAD, run)."""
    api = runtime_api
    token = await api.user(f"jobe_{api.runtime}")
    status, key, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "coderunner"})
    headers = {"X-API-KEY": key["key"]}

    room = asyncio.Semaphore(4)  # more at once would wait in the queue past Jobe's 10 s: an overload (21)

    async def run(language_id: str, sourcecode: str, **extra) -> dict:
        async with room:
            status, body, _ = await api.call("POST", RUNS, headers=dict(headers),
                                             json={"run_spec": {"language_id": language_id, "sourcecode": sourcecode,
                                                                **extra}})
        assert status == 200, body
        return body

    # Children that sleep under gVisor: spinning ones starve the parent's forks there (its ptrace platform).
    child = "while (1) {}" if api.runtime == "runc" else "pause()"
    checks = [
        (("python3", "print(input())\nprint(input())", {"input": "Line1\nLine2\n", "sourcefilename": "test.py"}),
         {"outcome": 15, "stdout": "Line1\nLine2\n"}),
        (("python3", 'print("Hello world!"\n', {}), {"outcome": 11}),
        (("python3", "data = [1]\nprint(data[2])", {}), {"outcome": 12}),
        (("python3", "", {"parameters": {"interpreterargs": [r'-c "print(\"Blah\")"']}}), {"outcome": 15, "stdout": "Blah\n"}),
        (("python3", "import sys\nprint(sys.argv[1:])", {"parameters": {"runargs": ["Arg1", "Arg2"]}}),
         {"outcome": 15, "stdout": "['Arg1', 'Arg2']\n"}),
        (("python3", PYLINT, {"parameters": {"memorylimit": 200000}}), {"outcome": 15, "stdout": "''\n"}),
        (("c", "#include <stdio.h>\nint main() { printf(\"Hello\\n\\01\\300\\n\"); }", {}),
         {"outcome": 15, "stdout": "Hello\n\\x01\\xc0\n"}),
        (("c", "int main() { return 0; }", {"parameters": {"compileargs": ["std=c89"]}}), {"outcome": 11}),
        (("c", MALLOC, {}), {"outcome": 15, "stdout": "Memory limit worked\n"}),
        (("c", SPINNING_FORKS % child, {"parameters": {"numprocs": 20}}), {"outcome": 15, "stdout": "OK\n"}),
        (("c", "int main() { while (1) {} }", {"parameters": {"cputime": 1}}), {"outcome": 13, "stderr": ""}),
        (("cpp", "#include <iostream>\nint main() { std::cout << \"hi\\n\"; }", {}), {"outcome": 15, "stdout": "hi\n"}),
        (("java", "public class Test {\n public static void main(String[] a) { System.out.println(\"Un rôle\"); }\n}", {}),
         {"outcome": 15, "stdout": "Un rôle\n"}),
        (("nodejs", "s = 'unclosed\nconsole.log(s)", {"parameters": {"memorylimit": 1000000}}), {"outcome": 12}),
        (("php", "<p><?php echo 'x' ?></p>\n", {}), {"outcome": 15, "stdout": "<p>x</p>\n"}),
        (("php", "<?php echo 'x ?>", {}), {"outcome": 11}),
        (("pascal", "begin\nwriteln('Hello world!');\nend.\n", {}), {"outcome": 15, "stdout": "Hello world!\n"}),
        (("pascal", "begin\nwriteln('Hello world!);\nend.\n", {}), {"outcome": 11}),
        (("octave", "fprintf('%s\\n', input('', 's'));", {"input": "Line1\n", "parameters": {"memorylimit": 200000}}),
         {"outcome": 15, "stdout": "Line1\n"}),
        (("octave", "s = \"hi there';", {"parameters": {"memorylimit": 200000}}), {"outcome": 12}),
        (("python3", jobe.OVERLOAD_PROBE, {}), {"outcome": 21}),
    ]
    answers = await asyncio.gather(*(run(language_id, code, **extra) for (language_id, code, extra), _ in checks))
    failures = [f"{args[:2]}: {answer}" for (args, expected), answer in zip(checks, answers, strict=True)
                if {k: answer.get(k) for k in expected} != expected]
    assert not failures, "\n".join(failures)

    # CodeRunner's flow: a run naming a file not stored is a 404; the client PUTs it, runs again.
    java_thing = "public class Thing { public void hi() { System.out.println(\"from Thing\"); } }\n"
    file_id = hashlib.md5(java_thing.encode()).hexdigest()
    main = "public class Blah {\n public static void main(String[] a) { new Thing().hi(); }\n}\n"
    missing = {"run_spec": {"language_id": "java", "sourcecode": main, "file_list": [[file_id, "Thing.java"]]}}
    status, body, _ = await api.call("POST", RUNS, headers=dict(headers), json=missing)
    assert (status, body) == (404, "One or more of the specified files is missing/unavailable")
    assert (await api.call("HEAD", f"/jobe/index.php/restapi/files/{file_id}", headers=dict(headers)))[0] == 404
    put = {"file_contents": base64.b64encode(java_thing.encode()).decode()}
    assert (await api.call("PUT", f"/jobe/index.php/restapi/files/{file_id}", headers=dict(headers), json=put))[0] == 204
    assert (await api.call("HEAD", f"/jobe/index.php/restapi/files/{file_id}/", headers=dict(headers)))[0] == 204
    assert (await run("java", main, file_list=[[file_id, "Thing.java"]]))["stdout"] == "from Thing\n"


async def test_jobe_keys_errors_and_files(api):
    token = await api.user("jobe_http")
    _, key, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "coderunner"})
    headers = {"X-API-KEY": key["key"]}
    for path in ("languages", "languages/"):
        status, listed, _ = await api.call("GET", f"/jobe/index.php/restapi/{path}", headers=dict(headers))
        assert status == 200 and ["pascal", "3.2.2"] in listed
    assert await _status_body(api, "GET", "languages", {}) == (403, "Missing API key")
    assert await _status_body(api, "GET", "languages", {"X-API-KEY": "2AAA7A5415B4A9B394B54BF1D2E9D"}) == (403, "Unknown API key")
    assert await _status_body(api, "POST", "runs", headers, data=b"{nope") == (400, "Non-JSON post data received")
    assert await _status_body(api, "PUT", "files/abcdefgh99", headers, json={}) == (400, "put: missing file_contents parameter")
    assert await _status_body(api, "PUT", "files/abcdefgh99", headers, json={"file_contents": "!!"}) == (
        400, "put: contents of file abcdefgh99 are not valid base-64")
    assert (await _status_body(api, "PUT", "files/not-alnum", headers, json={"file_contents": ""}))[0] == 404
    other = await api.user("jobe_other")  # stored files are the owner's alone
    _, other_key, _ = await api.call("POST", "/account/api-keys", token=other, json={"name": "other"})
    assert (await _status_body(api, "PUT", "files/abcdefgh98", headers, json={"file_contents": "eA=="}))[0] == 204
    assert (await api.call("HEAD", "/jobe/index.php/restapi/files/abcdefgh98", headers={"X-API-KEY": other_key["key"]}))[0] == 404


async def _status_body(api, method: str, path: str, headers: dict, **kwargs) -> tuple[int, object]:
    status, body, _ = await api.call(method, f"/jobe/index.php/restapi/{path}", headers=dict(headers), **kwargs)
    return status, body


async def test_a_full_queue_is_jobes_overload_and_stored_files_stay_bounded(settings):
    """No room for a run is outcome 21 with HTTP 200, at once, as Jobe answers when it has no free
    user; a user's stored files keep within their bound, the least recently used going first."""
    async with own_server(settings, role="api", max_queue=0, stored_files_mb=1) as api:
        token = await api.user("jobe_full")
        _, key, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "coderunner"})
        headers = {"X-API-KEY": key["key"]}
        status, body, _ = await api.call("POST", RUNS, headers=dict(headers),
                                         json={"run_spec": {"language_id": "python3", "sourcecode": "print(1)"}})
        assert (status, body["outcome"]) == (200, 21)
        chunk = base64.b64encode(b"x" * 400 * 1024).decode()
        for file_id in ("filefirst1", "filesecond", "filethird1"):
            assert (await _status_body(api, "PUT", f"files/{file_id}", headers, json={"file_contents": chunk}))[0] == 204
        present = [(await _status_body(api, "HEAD", f"files/{f}", headers))[0] for f in ("filefirst1", "filesecond", "filethird1")]
        assert present == [404, 204, 204]
        too_big = base64.b64encode(b"x" * (1024 * 1024 + 1)).decode()
        assert (await _status_body(api, "PUT", "files/filehuge11", headers, json={"file_contents": too_big}))[0] == 413


async def test_a_run_still_queued_after_the_wait_is_withdrawn_as_an_overload(settings):
    """No worker takes this queue: after Jobe's wait the run is answered 21 and taken off the queue
    (cancelled), never left to run later for nobody."""
    async with own_server(settings, role="api", queue=f"{settings.queue}.jobe-wait", jobe_queue_wait_s=1) as api:
        token = await api.user("jobe_wait")
        _, key, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "coderunner"})
        status, body, _ = await api.call("POST", RUNS, headers={"X-API-KEY": key["key"]},
                                         json={"run_spec": {"language_id": "python3", "sourcecode": "print(1)"}})
        assert (status, body["outcome"]) == (200, 21)
        status, listed, _ = await api.call("GET", "/tasks", token=token)
        assert status == 200 and [(t["state"], t["verdict"]) for t in listed["tasks"]] == [("done", "cancelled")]
