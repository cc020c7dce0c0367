"""A judge: test cases compiled once and run each in its own sandbox, checkers, multi-file programs."""
from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from coderund.checkers import Checker, parse_checker
from coderund.domain import CaseResult, RunReport, Verdict, case_result, judged
from coderund.errors import ValidationFailed
from coderund.plugins import parse

# -- pure parts


@pytest.mark.parametrize("checker, output, expected, accepted", [
    ("exact", "1 2\n", "1 2\n", True), ("exact", "1 2", "1 2\n", False),
    ("trim", "1 2  \n3\t\n\n\n", "1 2\n3", True), ("trim", " 1 2\n", "1 2\n", False), ("trim", "1\r\n2\r\n", "1\n2", True),
    ("tokens", " 1\n  2\t3 ", "1 2 3", True), ("tokens", "1 2", "1 2 3", False),
    ({"float": {"abs": 1e-6}}, "0.3333334 x", "0.333333 x", True), ({"float": {"abs": 1e-9}}, "0.3333334", "0.333333", False),
    ({"float": {"rel": 1e-3}}, "1000.5", "1000", True), ({"float": {"abs": 1}}, "nan", "nan", True),
    ({"float": {"abs": 1}}, "x", "y", False), ({"float": {}}, "1e3", "1000.0", True),
])
def test_checkers(checker, output, expected, accepted):
    assert parse_checker(checker).accepts(output, expected) is accepted


@pytest.mark.parametrize("bad", ["fuzzy", 3, None, {"float": 1}, {"float": {"abs": -1}}, {"float": {"abs": float("nan")}},
                                 {"float": {"x": 1}}, {"float": {}, "extra": 1}, {"float": {"abs": True}}])
def test_bad_checkers_are_refused(bad):
    with pytest.raises(ValidationFailed, match="'checker'"):
        parse_checker(bad)


def report(**changes) -> RunReport:
    values = dict(exit_code=0, signal=None, wall_ms=5, cpu_ms=4, memory_kb=900, timed_out=False, output_over=False,
                  oom=False, stdout=b"42\n", stderr=b"")
    return RunReport(**{**values, **changes})


def test_cases_are_judged_and_the_first_failure_stands_for_the_task():
    trim = Checker()
    ok, wrong = case_result(report(), 64, "42", trim), case_result(report(stdout=b"41\n"), 64, "42", trim)
    timeout = case_result(report(timed_out=True, exit_code=None, signal=9), 64, "42", trim)
    assert (ok.verdict, wrong.verdict, timeout.verdict) == (Verdict.OK, Verdict.WRONG_ANSWER, Verdict.TIME_LIMIT)
    assert case_result(report(exit_code=1), 64, "42", trim).verdict is Verdict.RUNTIME_ERROR  # not a wrong answer
    result = judged([ok, timeout, wrong], b"", "c")
    assert result.verdict is Verdict.TIME_LIMIT and result.signal == 9 and len(result.tests) == 3
    assert judged([ok, ok], b"warn", "c").verdict is Verdict.OK
    assert judged([ok, wrong, CaseResult(Verdict.SKIPPED)], b"", "c").verdict is Verdict.WRONG_ANSWER
    big = case_result(report(stdout=b"x" * 20000), 64, "x", Checker("exact"))
    assert len(big.stdout) == 8192 and big.truncated


def test_compile_commands_take_the_submitted_sources():
    c = parse({"name": "c", "version": "1", "image": "i", "source_file": "main.c", "run": ["./main"],
               "compile": ["gcc", "-o", "main", "{sources}", "-lm"], "limits": {"time_ms": 1000, "memory_mb": 64}}, "c.toml")
    assert c.compile_command(["main.c"]) == ("gcc", "-o", "main", "main.c", "-lm")
    assert c.compile_command(["main.c", "util.h", "z.c", "lib/a.c", "notes.txt"]) == (
        "gcc", "-o", "main", "main.c", "lib/a.c", "z.c", "-lm")


# -- through the API, on real services


async def test_each_checker_and_a_wrong_answer(api):
    token = await api.user("judge")
    code = "import sys\nn = int(sys.stdin.read())\nprint(n * 2, '  ')\nprint(1 / 3)"
    tests = [{"stdin": "1", "expected": "2\n0.333333"}, {"stdin": "5", "expected": "10\n0.33333333"}]
    results = {}
    for checker in ("exact", "trim", "tokens", {"float": {"abs": 1e-5}}):
        results[str(checker)] = await api.run(token, language="python", code=code, tests=tests, checker=checker)
    assert [r["verdict"] for r in results.values()] == ["wrong_answer", "wrong_answer", "wrong_answer", "ok"]
    floats = results[str({"float": {"abs": 1e-5}})]
    assert floats["passed"] == floats["total"] == 2 and [c["stdout"] for c in floats["tests"]] == [
        "2   \n0.3333333333333333\n", "10   \n0.3333333333333333\n"]
    exact = results["exact"]
    assert exact["passed"] == 0 and exact["tests"][0]["verdict"] == "wrong_answer" and exact["stdout"].startswith("2 ")


async def test_one_compile_for_all_cases_and_a_timeout_among_passing_ones(api):
    token = await api.user("judge")
    code = (f"#include <stdio.h>\n// {uuid.uuid4().hex}\n"
            'int main(void) { long n; scanf("%ld", &n); if (n < 0) for (;;) {} printf("%ld\\n", n * n); return 0; }\n')
    builds = REGISTRY.get_sample_value("coderund_task_compile_seconds_count", {"language": "c"}) or 0
    tests = [{"stdin": str(n), "expected": str(n * n)} for n in (1, 2, -1, 4, 5)]
    result = await api.run(token, language="c", code=code, tests=tests, limits={"time_ms": 1000})
    assert REGISTRY.get_sample_value("coderund_task_compile_seconds_count", {"language": "c"}) == builds + 1
    assert result["verdict"] == "time_limit" and result["passed"] == 4 and result["total"] == 5
    assert [c["verdict"] for c in result["tests"]] == ["ok", "ok", "time_limit", "ok", "ok"]
    assert [c["stdout"] for c in result["tests"]] == ["1\n", "4\n", "", "16\n", "25\n"]


async def test_a_compile_error_ends_the_task_before_any_case(api):
    token = await api.user("judge")
    result = await api.run(token, language="c", code="int main(void) { return x; }", tests=[{"expected": "1"}] * 3)
    assert result["verdict"] == "compile_error" and "x" in result["compile_output"]
    assert result["tests"] == [] and result["passed"] == 0 and result["total"] == 3


async def test_stop_on_failure_skips_the_rest(api):
    token = await api.user("judge")
    tests = [{"stdin": str(n), "expected": str(n)} for n in range(4)]
    result = await api.run(token, language="python", code="n = int(input())\nprint(n if n != 1 else 99)", tests=tests,
                           stop_on_failure=True)
    assert [c["verdict"] for c in result["tests"]] == ["ok", "wrong_answer", "skipped", "skipped"]
    assert result["verdict"] == "wrong_answer" and result["passed"] == 1
    # Without it, every case runs; each in a fresh sandbox, so nothing crosses from one to the next.
    code = "import os\nprint(sorted(os.listdir('/tmp')))\nopen('/tmp/mark', 'w').write('x')"
    result = await api.run(token, language="python", code=code, tests=[{"expected": "[]"}] * 3)
    assert result["verdict"] == "ok" and result["passed"] == 3


async def test_multi_file_programs(api):
    token = await api.user("judge")
    python = await api.run(token, language="python", code="from lib.util import twice\nprint(twice(21))",
                           files=[{"name": "lib/__init__.py", "content": ""},
                                  {"name": "lib/util.py", "content": "def twice(n):\n    return 2 * n\n"}])
    assert python["verdict"] == "ok" and python["stdout"] == "42\n"
    c = await api.run(token, language="c", code='#include <stdio.h>\n#include "util.h"\nint main(void) { printf("%d\\n", twice(21)); }',
                      files=[{"name": "util.h", "content": "int twice(int n);\n"},
                             {"name": "util.c", "content": '#include "util.h"\nint twice(int n) { return 2 * n; }\n'}])
    assert c["verdict"] == "ok" and c["stdout"] == "42\n", c
    status, body, _ = await api.call("POST", "/task", token=token, json={
        "language": "python", "code": "1", "files": [{"name": "main.py", "content": "2"}]})
    assert status == 400 and "'main.py'" in body["message"] and "entry file" in body["message"]
    status, body, _ = await api.call("POST", "/task", token=token, json={
        "language": "python", "code": "1", "files": [{"name": "../evil.py", "content": "2"}]})
    assert status == 400 and "'files[0].name'" in body["message"]


async def test_nul_and_any_unicode_in_files_and_cases(api):
    token = await api.user("judge")
    result = await api.run(token, language="python", code="import sys\nsys.stdout.write(open('data.txt').read() + sys.stdin.read())",
                           files=[{"name": "data.txt", "content": "a\u0000b\u2028é"}],
                           tests=[{"stdin": "\u0000z", "expected": "a\u0000b\u2028é\u0000z"}], checker="exact")
    assert result["verdict"] == "ok" and result["tests"][0]["stdout"] == "a\u0000b\u2028é\u0000z"

