"""Pure rules: credentials, task requests, limits, verdicts."""
from __future__ import annotations

import pytest

from coderund.domain import (
    Limits, RunReport, TaskState, Verdict, classify, parse_credentials, parse_days, parse_task_request, resolve_limits,
)
from coderund.errors import ValidationFailed


def report(**changes) -> RunReport:
    values = dict(exit_code=0, signal=None, wall_ms=10, cpu_ms=5, memory_kb=1000, timed_out=False,
                  output_over=False, oom=False, stdout=b"", stderr=b"")
    return RunReport(**{**values, **changes})


def test_credentials_accept_the_login_alias():
    assert parse_credentials({"login": "a.b-c_9", "password": "12345678"}).username == "a.b-c_9"
    with pytest.raises(ValidationFailed):
        parse_credentials({"username": "ünïcode", "password": "12345678"})


def test_task_request_dialects_and_limits():
    request = parse_task_request({"translator": "python3", "code": "x", "limits": {"time_ms": 100}})
    assert request.language == "python3" and request.stdin == "" and request.args == () and request.limits == {"time_ms": 100}
    with pytest.raises(ValidationFailed, match="limits.time_ms"):
        parse_task_request({"language": "c", "code": "x", "limits": {"time_ms": True}})
    with pytest.raises(ValidationFailed, match="args"):
        parse_task_request({"language": "c", "code": "x", "args": ["a", 1]})
    with pytest.raises(ValidationFailed, match="'password' is not valid Unicode"):
        parse_credentials({"username": "alice", "password": "\ud800password"})


@pytest.mark.parametrize("field", ["expected_output", "test_cases", "source_code"])
def test_a_field_no_task_has_is_refused_by_name(field):
    # Judge0's expected_output, silently ignored, would pass every program.
    with pytest.raises(ValidationFailed, match=f"'{field}' is not a task field"):
        parse_task_request({"language": "python", "code": "print(5)", field: "4"})


def test_limits_lower_raise_and_refuse():
    defaults, minimum, maximum = Limits(2000, 128), Limits(100, 16), Limits(10000, 512)
    assert resolve_limits(defaults, minimum, maximum, {}) == defaults
    assert resolve_limits(defaults, minimum, maximum, {"time_ms": 500}) == Limits(500, 128)
    assert resolve_limits(defaults, minimum, maximum, {"memory_mb": 512}) == Limits(2000, 512)
    assert resolve_limits(defaults, minimum, maximum, {"time_ms": 100, "memory_mb": 16}) == minimum
    with pytest.raises(ValidationFailed, match="'limits.memory_mb' is 513; this language allows at most 512"):
        resolve_limits(defaults, minimum, maximum, {"memory_mb": 513})
    with pytest.raises(ValidationFailed, match="'limits.memory_mb' is 1; this language needs at least 16"):
        resolve_limits(defaults, minimum, maximum, {"memory_mb": 1})
    with pytest.raises(ValidationFailed, match="'limits.time_ms' is 99; this language needs at least 100"):
        resolve_limits(defaults, minimum, maximum, {"time_ms": 99})


@pytest.mark.parametrize(
    "changes, verdict",
    [
        ({}, Verdict.OK),
        ({"exit_code": 3}, Verdict.RUNTIME_ERROR),
        ({"exit_code": None, "signal": 11}, Verdict.RUNTIME_ERROR),
        ({"exit_code": None, "signal": 9, "timed_out": True}, Verdict.TIME_LIMIT),
        ({"exit_code": None, "signal": 9, "output_over": True}, Verdict.OUTPUT_LIMIT),
        ({"exit_code": None, "signal": 9, "oom": True}, Verdict.MEMORY_LIMIT),
        ({"exit_code": None, "signal": 9, "oom": None, "memory_kb": 63 * 1024}, Verdict.MEMORY_LIMIT),
        ({"exit_code": None, "signal": 9, "oom": None, "memory_kb": 1024}, Verdict.RUNTIME_ERROR),
        ({"exit_code": None, "signal": 9, "oom": False, "memory_kb": 63 * 1024}, Verdict.RUNTIME_ERROR),
        ({"exit_code": 1, "oom": True}, Verdict.MEMORY_LIMIT),  # the runtime's own out-of-memory error
        ({"oom": True}, Verdict.OK),  # a child was killed, and the program got over it
    ],
)
def test_classify(changes, verdict):
    assert classify(report(**changes), memory_mb=64) is verdict


def test_public_states_are_two_words():
    assert {s.public for s in TaskState} == {"in_progress", "ready"}
    assert TaskState.DONE.public == "ready" and TaskState.RUNNING.public == "in_progress"


def test_usage_days_are_ascii_digits():
    assert parse_days(None) == 7 and parse_days("30") == 30
    for bad in ("0", "91", "x", "\u00b2", "\u0663"):  # "²", Arabic-Indic 3: digits to str.isdigit, not ASCII
        with pytest.raises(ValidationFailed, match="'days'"):
            parse_days(bad)
