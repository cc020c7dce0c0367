"""The admission step's rules, alone: every way in (native, Judge0, Jobe, Piston) reaches them as a
TaskRequest, so the adapters' requests are built here as they build them."""
from __future__ import annotations

import pytest

from coderund import plugins
from coderund.admission import MAX_SOURCE_BYTES, Ceiling, admit_task
from coderund.checkers import Checker
from coderund.compat import jobe, judge0, piston
from coderund.config import DEFAULT_PLUGINS_DIR
from coderund.domain import Program, TaskRequest, parse_task_request
from coderund.errors import PayloadTooLarge, ValidationFailed

PLUGINS = plugins.load(DEFAULT_PLUGINS_DIR)
CEILING = Ceiling(pids_limit=128, disk_mb=64, max_case_ms=320_000)


def admit(body: dict) -> TaskRequest:
    return admit_task(parse_task_request(body), PLUGINS, CEILING).request


def test_sizes_text_and_args():
    with pytest.raises(PayloadTooLarge):
        admit({"language": "c", "code": "x", "stdin": "é" * (600 * 1024)})
    with pytest.raises(ValidationFailed, match="Unicode"):
        admit({"language": "c", "code": "\ud800"})
    with pytest.raises(ValidationFailed, match="args"):
        admit({"language": "c", "code": "x", "args": ["a\0b"]})


@pytest.mark.parametrize("name", ["../x.py", "/abs.py", "a/../b.py", "a//b.py", "./a.py", "a/./b.py", "a b.py", "a\\b.py",
                                  "", "é.py", "x" * 256, "a/", ".", "/tmp/x"])
def test_bad_file_names_are_refused_naming_the_file(name):
    with pytest.raises(ValidationFailed, match=r"'files\[1\]\.name'"):
        admit({"language": "python", "code": "1", "files": [{"name": "ok.py", "content": ""}, {"name": name, "content": ""}]})


def test_files_and_tests_shapes():
    request = admit({"language": "c", "code": "x", "files": [{"name": "lib/util.c", "content": "y"}],
                     "tests": [{"expected": "1"}, {"stdin": "2", "args": ["a"], "expected": "3"}],
                     "checker": "tokens", "stop_on_failure": True})
    assert request.files == (("lib/util.c", "y"),) and len(request.tests) == 2 and request.tests[1].args == ("a",)
    assert request.checker == Checker("tokens") and request.stop_on_failure
    for body, message in [
        ({"files": [{"name": "a.py", "content": ""}] * 2}, "given twice"),
        ({"files": [{"name": "a", "content": ""}, {"name": "a/b", "content": ""}]}, "a file cannot also be a folder"),
        ({"files": [{"name": f"f{i}.py", "content": ""} for i in range(33)]}, "at most 32"),
        ({"files": [{"name": "a.py"}]}, r"'files\[0\]' must be an object"),
        ({"files": [{"name": "a.py", "content": 3}]}, r"'files\[0\]\.content' must be a string"),
        ({"tests": [{"stdin": "1"}]}, r"'tests\[0\]' must be an object with 'expected'"),
        ({"tests": [{"expected": "1", "args": [1]}]}, r"'tests\[0\]\.args'"),
        ({"tests": [{"expected": "1"}] * 65}, "at most 64"),
        ({"stop_on_failure": "yes"}, "'stop_on_failure'"),
        ({"outputs": ["a"], "tests": [{"stdin": "", "expected": ""}]}, "'outputs' are for a single run"),
    ]:
        with pytest.raises(ValidationFailed, match=message):
            admit({"language": "python", "code": "1", **body})
    with pytest.raises(PayloadTooLarge, match="'code' and 'files'"):
        admit({"language": "python", "code": "x" * 300_000,
               "files": [{"name": f"{i}.py", "content": "y" * 300_000} for i in range(7)]})


def test_a_foreign_programs_process_limits_are_clamped_to_the_operators():
    # Jobe's numprocs 1000 (or 4,194,300) once raised the container's pids limit past --pids-limit.
    for numprocs in (1000, 4_194_300, "1e9"):
        spec = jobe.parse_run({"run_spec": {"language_id": "python3", "sourcecode": "print(1)",
                                            "parameters": {"numprocs": numprocs, "disklimit": 100_000}}}, PLUGINS)
        program = admit_task(jobe.task_request(spec, PLUGINS, {}), PLUGINS, CEILING).request.program
        assert program is not None and program.processes == CEILING.pids_limit and program.file_size_mb == CEILING.disk_mb
    lower = Program("prog.py", ("python3", "prog.py"), processes=10, file_size_mb=2, address_space_mb=100)
    admitted = admit_task(TaskRequest("python", "1", "", (), {}, program=lower), PLUGINS, CEILING).request.program
    assert admitted == lower  # a lower limit is the API's to ask for


@pytest.mark.parametrize("value", ["nan", "-inf", "1e400", "inf", float("nan")])
def test_jobe_numbers_that_are_none_fall_back_to_the_defaults(value):
    spec = jobe.parse_run({"run_spec": {"language_id": "python3", "sourcecode": "print(1)",
                                        "parameters": {"cputime": value, "numprocs": value}}}, PLUGINS)
    program = jobe.task_request(spec, PLUGINS, {}).program
    assert program is not None and program.processes == jobe.DEFAULTS["numprocs"] + 1


def test_jobe_refuses_what_is_not_a_string_or_too_long_an_id():
    with pytest.raises(jobe.JobeError, match="main_class"):
        jobe.parse_run({"run_spec": {"language_id": "java", "sourcecode": "x", "parameters": {"main_class": 5}}}, PLUGINS)
    with pytest.raises(jobe.JobeError, match="Invalid file specifier"):
        jobe.parse_run({"run_spec": {"language_id": "c", "sourcecode": "x", "file_list": [["a" * 129, "data.txt"]]}},
                       PLUGINS)


def test_jobe_naming_one_stored_file_many_times_is_bounded():
    # Each name is another copy in the stored task: one 1 MiB file 32 times once grew `tasks` by 44 MiB.
    specs = [["abcdefgh", f"copy{i}.txt"] for i in range(32)]
    spec = jobe.parse_run({"run_spec": {"language_id": "c", "sourcecode": "int main(){}", "file_list": specs}}, PLUGINS)
    request = jobe.task_request(spec, PLUGINS, {"abcdefgh": b"x" * (1 << 20)})
    with pytest.raises(PayloadTooLarge, match=f"over {MAX_SOURCE_BYTES // 1024} KiB"):
        admit_task(request, PLUGINS, CEILING)


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "./main.py", "a b"])
def test_piston_file_names_meet_the_same_rules(name):
    body = {"language": "python", "version": "*", "files": [{"content": "print(1)"}, {"name": name, "content": "x"}]}
    request = piston.parse_execute(body, PLUGINS)
    assert isinstance(request, TaskRequest)
    with pytest.raises(ValidationFailed, match=r"'files\[0\]\.name'"):
        admit_task(request, PLUGINS, CEILING)


def test_piston_clashing_names_and_infinite_limits():
    body = {"language": "python", "version": "*",
            "files": [{"content": "print(1)"}, {"name": "a", "content": ""}, {"name": "a/b", "content": ""}]}
    request = piston.parse_execute(body, PLUGINS)
    assert isinstance(request, TaskRequest)
    with pytest.raises(ValidationFailed, match="cannot also be a folder"):
        admit_task(request, PLUGINS, CEILING)
    assert piston.parse_execute({**body, "run_timeout": float("inf")}, PLUGINS) == "If specified, run_timeout must be a number"


def test_judge0_files_are_held_to_the_same_rules():
    import base64
    import io
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a", "1")
        archive.writestr("a/b", "2")
    body = {"language_id": judge0.MULTI_FILE, "additional_files": base64.b64encode(buffer.getvalue()).decode()}
    request = judge0.parse_submission(body, PLUGINS, judge0.Limits(), base64_encoded=False)
    assert isinstance(request, TaskRequest)
    with pytest.raises(ValidationFailed, match="cannot also be a folder"):
        admit_task(request, PLUGINS, CEILING)


def test_typescript_written_for_other_judges_compiles_whatever_the_api():
    code = "declare const require: any;\ndeclare var process: any\nconsole.log(1)"
    prepared = admit({"language": "typescript", "code": code}).code
    assert prepared.splitlines()[0].startswith("// declare const require: any;")
    assert prepared.splitlines()[1].startswith("// declare var process: any")
    assert prepared.splitlines()[2] == "console.log(1)"


def test_a_foreign_apis_details_are_bounded():
    request = TaskRequest("python", "1", "", (), {}, compat={"api": "x", "blob": "y" * (100 * 1024)})
    with pytest.raises(PayloadTooLarge):
        admit_task(request, PLUGINS, CEILING)


def test_cases_times_their_limit_stay_under_the_operators_bound():
    tests = [{"expected": ""}] * 64
    with pytest.raises(ValidationFailed, match="could hold a sandbox"):
        admit_task(parse_task_request({"language": "python", "code": "1", "tests": tests, "limits": {"time_ms": 10000}}),
                   PLUGINS, Ceiling(pids_limit=128, disk_mb=64, max_case_ms=60_000))
