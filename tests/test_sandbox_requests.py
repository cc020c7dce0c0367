"""Pure parts of stateful sandboxes: their requests' rules, answers' shapes, refusals, MCP content."""
from __future__ import annotations

import base64

import pytest

from coderund.api.sandbox_routes import _command_document, _lines, _run_document, ndjson
from coderund.errors import Conflict, NotFound, PayloadTooLarge, ValidationFailed
from coderund.mcp_server import run_content
from coderund.sandbox.options import Isolation, container_options
from coderund.sandbox_requests import (SandboxLimits, file_path, metadata_filter, parse_command, parse_run,
                                       parse_sandbox_request, parse_timeout)
from coderund.usecases.sandboxes import refusal

LIMITS = SandboxLimits()


def test_a_create_takes_the_operators_defaults_and_stays_within_the_maxima():
    request = parse_sandbox_request({}, LIMITS)
    assert (request.language, request.memory_mb, request.cpus, request.disk_mb, request.timeout_s,
            request.idle_timeout_s) == ("python", 1024, 1.0, 256, 3600, 600)
    asked = parse_sandbox_request({"memory_mb": 4096, "cpus": 1.5, "disk_mb": 2048, "timeout_s": 86400,
                                   "env": {"A_1": "x"}, "metadata": {"k": "v"}}, LIMITS)
    assert (asked.memory_mb, asked.cpus, asked.disk_mb, asked.env, asked.metadata) == (4096, 1.5, 2048, {"A_1": "x"}, {"k": "v"})
    for body in ({"memory_mb": 4097}, {"cpus": 2.5}, {"disk_mb": 1}, {"timeout_s": 86401}, {"timeout_s": True},
                 {"language": "ruby"}, {"env": {"a-b": "x"}}, {"env": {"A": 1}}, {"metadata": []}, {"metadata": {"k": "\0"}},
                 "x"):
        with pytest.raises(ValidationFailed):
            parse_sandbox_request(body, LIMITS)
    assert parse_timeout({"timeout_s": 60}, LIMITS) == 60
    with pytest.raises(ValidationFailed):
        parse_timeout({"timeout_s": 0}, LIMITS)


def test_runs_and_commands_are_checked():
    run = parse_run({"code": "1", "language": "bash", "timeout_s": 2.5})
    assert (run.code, run.language, run.context, run.timeout_s) == ("1", "bash", None, 2.5)
    for body in ({}, {"code": None}, {"code": "1", "language": "js"}, {"code": "1", "timeout_s": 0}):
        with pytest.raises(ValidationFailed):
            parse_run(body)
    with pytest.raises(PayloadTooLarge):
        parse_run({"code": "x" * (512 * 1024 + 1)})
    assert parse_command({"cmd": "ls -l"}).cmd == ("bash", "-c", "ls -l")
    assert parse_command({"cmd": ["ls"], "cwd": "/a/./b/"}).cwd == "a/b"
    for body in ({"cmd": []}, {"cmd": [1]}, {"cmd": ["ls"], "cwd": "../x"}, {"cmd": ["ls"], "env": {"1": "x"}},
                 {"cmd": ["echo", "a\0b"]}, {"cmd": ["env"], "env": {"A": "x\0y"}}, {"cmd": "ls", "cwd": "a\0"}):
        with pytest.raises(ValidationFailed):
            parse_command(body)


def test_paths_stay_in_the_work_folder():
    assert file_path("/a//b/./c") == "a/b/c" and file_path("") == "." and file_path("./") == "."
    for bad in ("..", "a/../../b", "a/\0", "x" * 5000):
        with pytest.raises(ValidationFailed):
            file_path(bad)
    assert metadata_filter({"metadata.team": "a", "other": "b"}) == {"team": "a"}


def test_the_hubs_refusals_become_errors_and_the_disks_names_its_quota():
    class Row:
        disk_mb = 16

    assert isinstance(refusal("busy", "context busy", Row()), Conflict)
    assert isinstance(refusal("not_found", "'x' does not exist", Row()), NotFound)
    assert isinstance(refusal("bad_path", "'x' is a symlink", Row()), ValidationFailed)
    for full in ("too_many", "exhausted", "tmp_full"):  # the sandbox holds too much now: 409, the request itself is fine
        assert isinstance(refusal(full, "a sandbox has at most 16 contexts", Row()), Conflict)
    assert isinstance(refusal("bad_request", "'cmd' must be a list of strings", Row()), ValidationFailed)
    full = refusal("disk_quota", "the sandbox's disk is full", Row())
    assert isinstance(full, PayloadTooLarge) and full.message == "The sandbox's disk is full: its disk quota is 16 MiB."


def test_a_runs_events_make_one_answer_or_ndjson_lines():
    events = [{"id": "1", "type": "stdout", "text": "a"}, {"id": "1", "type": "stdout", "text": "b"},
              {"id": "1", "type": "result", "data": {"text/plain": "2"}},
              {"id": "1", "type": "end", "error": {"name": "E", "value": "v", "traceback": ""}, "execution_count": 3,
               "truncated": False, "context": "python"}]
    assert _run_document(events) == {"stdout": "ab", "stderr": "", "results": [{"text/plain": "2"}],
                                     "error": {"name": "E", "value": "v", "traceback": ""}, "execution_count": 3,
                                     "context": "python", "truncated": False}
    assert ndjson(_lines(events[-1])).decode().splitlines() == [
        '{"type": "error", "name": "E", "value": "v", "traceback": ""}',
        '{"type": "execution_count", "execution_count": 3}', '{"type": "end", "truncated": false, "context": "python"}']
    assert _command_document([{"type": "end", "exit_code": 0, "signal": None, "timed_out": False}])["exit_code"] == 0


def test_figures_become_mcp_images():
    png = b"\x89PNG\r\n\x1a\n-fake"
    content = run_content({"stdout": "", "results": [{"text/plain": "1"},
                                                     {"image/png": base64.b64encode(png).decode(), "text/plain": "<F>"}]})
    assert content[0]["results"][1] == {"text/plain": "<F>", "image/png": "(the image content below)"}
    assert content[1].data == png


def test_a_stateful_sandboxs_container_has_its_hub_disk_and_cpus_and_the_same_locks():
    options = container_options(image="img", memory_mb=512, isolation=Isolation(), env={}, labels={},
                                tools_volume="tools", command=["/usr/bin/python3", "-I", "/.coderund/hub.py", "/box", "0"],
                                cpus=1.5, disk_mb=300)
    assert options["command"][2] == "/.coderund/hub.py" and options["nano_cpus"] == 1_500_000_000
    assert options["tmpfs"]["/box"].startswith("size=300m") and options["tmpfs"]["/tmp"].startswith("size=64m")
    assert options["read_only"] and options["network_disabled"] and options["cap_drop"] == ["ALL"]
    assert options["user"] == "0:0" and options["security_opt"] == ["no-new-privileges"]
