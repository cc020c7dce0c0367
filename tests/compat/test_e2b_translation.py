"""The E2B adapter's pure parts alone: Protocol Buffers' formats against E2B's own generated classes
(from the SDK), the Connect protocol's framing, envd's paths and events, the REST API's bodies."""
from __future__ import annotations

import functools
import json
import re
import struct
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from e2b.envd.filesystem import filesystem_pb
from e2b.envd.process import process_pb
from e2b.sandbox.signature import get_signature
from hypothesis import given, settings, strategies as st
from protobuf import Oneof
from protobuf.wkt import Timestamp

from coderund.access import new_key, parse_key_request
from coderund.compat.e2b import api, connect, envd, interpreter, proto
from coderund.compat.e2b import messages as m
from coderund.errors import Conflict, NotFound, SandboxEnded, Unauthorized, ValidationFailed
from coderund.network import NetworkPolicy
from coderund.sandbox_requests import SandboxLimits

E2B_KEY = re.compile(r"\Ae2b_[0-9a-f]+\Z")  # what E2B's SDK checks a key against


def both_ways(ours, theirs, value, sdk_value):
    """Ours and the SDK's classes agree, in the binary format and in JSON, both ways (a field at its
    default is not sent, and a map's order is free: what we read back is compared in its JSON form)."""
    assert theirs.from_binary(proto.encode(ours, value)) == sdk_value
    assert proto.to_json(ours, proto.decode(ours, sdk_value.to_binary())) == proto.to_json(ours, value)
    assert theirs.from_json(json.dumps(proto.to_json(ours, value))) == sdk_value
    assert proto.to_json(ours, proto.from_json(ours, json.loads(sdk_value.to_json()))) == proto.to_json(ours, value)


def test_start_requests_as_the_sdk_sends_them():
    value = {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo é"], "envs": {"A": "1", "B": ""},
                         "cwd": "/home/user"}, "stdin": False, "tag": "t"}
    sdk = process_pb.StartRequest(process=process_pb.ProcessConfig(cmd="/bin/bash", args=["-l", "-c", "echo é"],
                                                                   envs={"A": "1", "B": ""}, cwd="/home/user"),
                                  stdin=False, tag="t")
    both_ways(m.START_REQUEST, process_pb.StartRequest, value, sdk)


@pytest.mark.parametrize("event, sdk", [
    ({"start": {"pid": 0}}, Oneof("start", process_pb.ProcessEvent.StartEvent(pid=0))),
    ({"data": {"stdout": b"\x00\xffhi"}}, Oneof("data", process_pb.ProcessEvent.DataEvent(output=Oneof("stdout", b"\x00\xffhi")))),
    ({"data": {"stderr": b""}}, Oneof("data", process_pb.ProcessEvent.DataEvent(output=Oneof("stderr", b"")))),
    ({"end": {"exit_code": -1, "exited": False, "status": "signal: killed", "error": ""}},
     Oneof("end", process_pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status="signal: killed", error=""))),
    ({"end": {"exit_code": 2**31 - 1, "exited": True, "status": "exit status"}},
     Oneof("end", process_pb.ProcessEvent.EndEvent(exit_code=2**31 - 1, exited=True, status="exit status"))),
    ({"keepalive": {}}, Oneof("keepalive", process_pb.ProcessEvent.KeepAlive())),
])
def test_process_events_every_kind(event, sdk):
    both_ways(m.START_RESPONSE, process_pb.StartResponse, {"event": event},
              process_pb.StartResponse(event=process_pb.ProcessEvent(event=sdk)))


def test_entries_with_int64_enum_timestamp_and_selectors():
    value = {"entries": [{"name": "a", "type": 2, "path": "/home/user/a", "size": 2**40, "mode": 0o755,
                          "permissions": "drwxr-xr-x", "owner": "user", "group": "user", "modified_time": 1.5e9 + 0.25,
                          "symlink_target": "b"}]}
    sdk = filesystem_pb.ListDirResponse(entries=[filesystem_pb.EntryInfo(
        name="a", type=filesystem_pb.FileType.DIRECTORY, path="/home/user/a", size=2**40, mode=0o755,
        permissions="drwxr-xr-x", owner="user", group="user", symlink_target="b",
        modified_time=Timestamp(seconds=1500000000, nanos=250000000))])
    both_ways(m.LIST_DIR_RESPONSE, filesystem_pb.ListDirResponse, value, sdk)
    signal = {"process": {"pid": 0}, "signal": 9}
    both_ways(m.SEND_SIGNAL_REQUEST, process_pb.SendSignalRequest, signal, process_pb.SendSignalRequest(
        process=process_pb.ProcessSelector(selector=Oneof("pid", 0)), signal=process_pb.Signal.SIGKILL))
    assert proto.to_json(m.SEND_SIGNAL_REQUEST, signal) == {"process": {"pid": 0}, "signal": "SIGNAL_SIGKILL"}


@pytest.mark.parametrize("data", [b"\x08", b"\x08" + b"\xff" * 11, b"\x0a\x05abc", b"\x0b", b"\x0d\x01\x02",
                                  b"\x0a\x02\xff\xfe", b"\x10\x01"])
def test_malformed_binary_is_a_proto_error(data):
    with pytest.raises(proto.ProtoError):
        proto.decode(m.MOVE_REQUEST if data != b"\x10\x01" else m.START_REQUEST, data)


def test_unknown_fields_are_skipped():
    data = b"\x0a\x01a" + b"\x28\x05" + b"\x31" + b"\0" * 8 + b"\x3d" + b"\0" * 4 + b"\x42\x02xx" + b"\x12\x01b"
    assert proto.decode(m.MOVE_REQUEST, data) == {"source": "a", "destination": "b"}
    assert proto.from_json(m.MOVE_REQUEST, {"source": "a", "other": [1]}) == {"source": "a"}


@pytest.mark.parametrize("obj, why", [([], "JSON object"), ({"depth": -1}, "whole number"), ({"depth": 2**32}, "whole number"),
                                      ({"depth": "x"}, "whole number"), ({"path": 3}, "string"), ({"depth": True}, "whole")])
def test_bad_json_is_a_proto_error_naming_the_field(obj, why):
    with pytest.raises(proto.ProtoError, match=why):
        proto.from_json(m.LIST_DIR_REQUEST, obj)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_are_refused(data):
    for message in (m.START_REQUEST, m.SEND_INPUT_REQUEST, m.LIST_DIR_REQUEST):
        try:
            proto.decode(message, data)
        except proto.ProtoError:
            pass


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["process", "pty", "tag", "stdin", "cmd", "args", "envs", "cwd"]), JSON))
def test_any_json_parses_or_is_refused(obj):
    try:
        proto.from_json(m.START_REQUEST, obj)
    except proto.ProtoError:
        pass


def test_connect_framing_codecs_and_timeouts():
    assert connect.codec("application/connect+json; charset=utf-8") == connect.Codec(True, False)
    assert connect.codec("application/proto") == connect.Codec(False, True)
    assert connect.codec("text/plain") is None and connect.codec("application/connect+xml") is None
    stream = connect.Codec(True, False)
    message = json.dumps({"source": "a"}).encode()
    assert stream.decode(m.MOVE_REQUEST, connect.envelope(message)) == {"source": "a"}
    for bad in (b"", connect.envelope(message) + b"x", connect.envelope(message, connect.COMPRESSED)):
        with pytest.raises(connect.ConnectError):
            stream.decode(m.MOVE_REQUEST, bad)
    assert connect.end_stream() == b"\x02" + struct.pack(">I", 2) + b"{}"
    error = json.loads(connect.end_stream(connect.ConnectError("not_found", "x"))[5:])
    assert error == {"error": {"code": "not_found", "message": "x"}}
    assert connect.timeout_s("1500") == 1.5 and connect.timeout_s(None) is None
    for bad in ("-1", "1e3", "12345678901", "\u00b2"):  # "²": a digit to str.isdigit, not to int()
        with pytest.raises(connect.ConnectError):
            connect.timeout_s(bad)
    for query in ({"limit": "\u00b2"}, {"nextToken": "\u00b9"}):
        with pytest.raises(api.E2bError):
            api.parse_list(query, ("running",))


def test_coderund_errors_as_connect_codes():
    exists = Conflict("there")
    exists.refusal = "exists"
    assert connect.from_app_error(exists).code == "already_exists"
    assert connect.from_app_error(Conflict("busy")).code == "failed_precondition"
    assert connect.from_app_error(NotFound("x")).code == "not_found"
    assert connect.from_app_error(SandboxEnded("deleted")).code == "unavailable"
    assert connect.from_app_error(ValidationFailed("x")).status == 400


@pytest.mark.parametrize("given_path, work", [("/home/user", "."), ("/home/user/", "."), ("~", "."), ("~/a/b", "a/b"),
                                              ("a//./b", "a/b"), ("", "."), ("/box/x", "x"), ("/home/user/.hidden", ".hidden")])
def test_paths_under_home_are_the_work_folder(given_path, work):
    assert envd.work_path(given_path) == work


@pytest.mark.parametrize("given_path", ["/tmp/x", "/etc/passwd", "/home/userx", "/home/user/../x", "../x", "a\0b", "/"])
def test_other_paths_are_refused(given_path):
    with pytest.raises(connect.ConnectError) as refused:
        envd.work_path(given_path)
    assert refused.value.code == "invalid_argument"


def test_paths_back_as_e2b_names_them():
    assert [envd.e2b_path(p) for p in (".", "", "a/b", "/box", "/box/a")] == [
        "/home/user", "/home/user", "/home/user/a/b", "/home/user", "/home/user/a"]


def test_start_as_a_hub_command():
    request = {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "ls"], "envs": {"A": "1"}, "cwd": "/home/user/src"},
               "stdin": True}
    assert envd.command_op(request, 2.5) == {"op": "command", "cmd": ["/bin/bash", "-l", "-c", "ls"], "cwd": "src",
                                             "env": {"A": "1"}, "timeout_s": 2.5, "announce": True, "open_stdin": True}
    assert envd.command_op({"process": {"cmd": "ls"}}, None)["timeout_s"] == 3600  # bounded without a deadline
    assert envd.command_op({"process": {"cmd": "ls"}}, 10**6)["timeout_s"] == 3600
    for bad, code in (({"process": {"cmd": "ls"}, "pty": {"size": {"cols": 70000, "rows": 5}}}, "invalid_argument"),
                      ({"process": {"cmd": "ls"}, "pty": {"size": {"cols": 80, "rows": 65536}}}, "invalid_argument"),
                      ({"process": {}}, "invalid_argument"),
                      ({"process": {"cmd": "ls", "envs": {"A=B": "x"}}}, "invalid_argument"),
                      ({"process": {"cmd": "ls", "cwd": "/et\0c"}}, "invalid_argument"),
                      ({"process": {"cmd": "ls", "cwd": "/" + "x" * 4096}}, "invalid_argument")):
        with pytest.raises(connect.ConnectError) as refused:
            envd.command_op(bad, None)
        assert refused.value.code == code


def test_commands_may_start_outside_the_work_folder():
    for cwd, expected in (("/", "/"), ("/etc/../tmp/", "/tmp"), ("/home/user/src", "src"), ("/home/user", "."), ("~", ".")):
        assert envd.command_op({"process": {"cmd": "ls", "cwd": cwd}}, None)["cwd"] == expected
    assert envd.e2b_path("/tmp") == "/tmp" and envd.e2b_path("/box/src") == "/home/user/src"


def test_ptys_as_hub_terminals():
    start = {"process": {"cmd": "/bin/bash", "args": ["-i", "-l"], "envs": {"TERM": "xterm-256color"}},
             "pty": {"size": {"cols": 100, "rows": 30}}}
    both_ways(m.START_REQUEST, process_pb.StartRequest, start, process_pb.StartRequest(
        process=process_pb.ProcessConfig(cmd="/bin/bash", args=["-i", "-l"], envs={"TERM": "xterm-256color"}),
        pty=process_pb.PTY(size=process_pb.PTY.Size(cols=100, rows=30))))
    assert envd.command_op(start, None)["terminal"] == {"cols": 100, "rows": 30}
    assert envd.command_op({**start, "pty": {}}, None)["terminal"] == {"cols": 80, "rows": 24}
    assert "terminal" not in envd.command_op({"process": start["process"]}, None)
    resize = {"process": {"pid": 7}, "pty": {"size": {"cols": 120, "rows": 40}}}
    both_ways(m.UPDATE_REQUEST, process_pb.UpdateRequest, resize, process_pb.UpdateRequest(
        process=process_pb.ProcessSelector(selector=Oneof("pid", 7)), pty=process_pb.PTY(size=process_pb.PTY.Size(cols=120, rows=40))))
    assert envd.update_op(resize) == {"op": "resize", "pid": 7, "terminal": {"cols": 120, "rows": 40}}
    assert envd.update_op({"process": {"pid": 7}}) is None
    assert envd.input_op({"process": {"pid": 7}, "input": {"pty": b"ls\n"}}) == ({"op": "input", "pid": 7}, b"ls\n")
    assert envd.process_events({"type": "pty", "data": "AP/h"}) == [{"event": {"data": {"pty": b"\x00\xff\xe1"}}}]


def test_listings_are_bounded_in_depth():
    assert envd.list_op({"path": "/home/user", "depth": 1000}) == {"op": "list", "path": ".", "depth": 16, "detail": True}


def test_hub_events_as_process_events():
    assert envd.process_events({"type": "start", "pid": 7}) == [{"event": {"start": {"pid": 7}}}]
    assert envd.process_events({"type": "stdout", "text": "é"}) == [{"event": {"data": {"stdout": "é".encode()}}}]
    assert envd.process_events({"type": "end", "exit_code": 0}) == [{"event": {"end": {
        "exit_code": 0, "exited": True, "status": "exit status 0"}}}]
    killed = envd.process_events({"type": "end", "exit_code": None, "signal": 9, "truncated": True})[0]["event"]["end"]
    assert killed["exit_code"] == -1 and killed["status"] == "signal: killed" and "1 MiB" in killed["error"]
    with pytest.raises(connect.ConnectError) as late:
        envd.process_events({"type": "end", "exit_code": None, "signal": 9, "timed_out": True})
    assert late.value.code == "deadline_exceeded"


def test_entries_and_processes_as_envd_tells_them():
    entry = {"name": "x", "path": "a/x", "kind": "symlink", "size": 3, "mode": 0o120777, "uid": 65534, "gid": 0,
             "mtime": 10.0, "target": "../y", "target_kind": "file"}
    assert envd.entry_info(entry) == {"name": "x", "type": 1, "path": "/home/user/a/x", "size": 3, "mode": 0o777,
                                      "permissions": "lrwxrwxrwx", "owner": "user", "group": "root",
                                      "modified_time": 10.0, "symlink_target": "/home/user/y", "metadata": {}}
    assert envd.entry_info({**entry, "target": "/etc", "target_kind": None})["type"] == 3  # dangling, or unreadable
    assert envd.entry_info({**entry, "name": "", "path": "", "kind": "folder", "target": None})["name"] == "user"
    listed = envd.process_list([{"pid": 3, "cmd": ["sh", "-c", "x"], "cwd": "/box/src", "env": {"A": "1"}, "tag": None}])
    assert listed == {"processes": [{"pid": 3, "config": {"cmd": "sh", "args": ["-c", "x"], "envs": {"A": "1"},
                                                          "cwd": "/home/user/src"}}]}

    assert envd.entry_info({**entry, "kind": "file", "target": None, "metadata": {"a": "1"}})["metadata"] == {"a": "1"}


def test_watchers_and_their_events_as_envd_tells_them():
    create = {"path": "/home/user/src", "recursive": True, "include_entry": True, "allow_network_mounts": True}
    both_ways(m.CREATE_WATCHER_REQUEST, filesystem_pb.CreateWatcherRequest, create, filesystem_pb.CreateWatcherRequest(
        path="/home/user/src", recursive=True, include_entry=True, allow_network_mounts=True))
    assert envd.watch_op(create) == {"op": "watch", "path": "src", "recursive": True, "entries": True}
    assert envd.watch_op({}) == {"op": "watch", "path": ".", "recursive": False, "entries": False}
    with pytest.raises(connect.ConnectError):
        envd.watch_op({"path": "/etc"})
    entry = {"name": "b", "path": "src/a/b", "kind": "file", "size": 1, "mode": 0o100644, "uid": 65534, "gid": 65534,
             "mtime": 10.0, "target": None, "target_kind": None, "metadata": {"k": "v"}}
    events = envd.watch_events([{"name": "a/b", "type": "write", "entry": entry}, {"name": "a/c", "type": "remove"}])
    sdk = filesystem_pb.GetWatcherEventsResponse(events=[
        filesystem_pb.FilesystemEvent(name="a/b", type=filesystem_pb.EventType.WRITE, entry=filesystem_pb.EntryInfo(
            name="b", type=filesystem_pb.FileType.FILE, path="/home/user/src/a/b", size=1, mode=0o644,
            permissions="-rw-r--r--", owner="user", group="user", modified_time=Timestamp(seconds=10), metadata={"k": "v"})),
        filesystem_pb.FilesystemEvent(name="a/c", type=filesystem_pb.EventType.REMOVE)])
    both_ways(m.GET_WATCHER_EVENTS_RESPONSE, filesystem_pb.GetWatcherEventsResponse, events, sdk)
    both_ways(m.WATCHER_REQUEST, filesystem_pb.RemoveWatcherRequest, {"watcher_id": "w1"},
              filesystem_pb.RemoveWatcherRequest(watcher_id="w1"))


def test_upload_metadata_from_its_headers_bounded():
    headers = [("X-Metadata-Author", "mish"), ("x-metadata-purpose", "up load"), ("Content-Type", "text/plain")]
    assert envd.upload_metadata(headers) == {"author": "mish", "purpose": "up load"}
    assert envd.upload_metadata([]) == {}
    for bad in ([("X-Metadata-", "v")], [("X-Metadata-a b", "v")], [("X-Metadata-k", "caf\u00e9")],
                [("X-Metadata-k", "a\nb")], [("X-Metadata-k", "v" * 1025)], [("X-Metadata-" + "k" * 129, "v")],
                [(f"X-Metadata-k{i}", "v") for i in range(33)]):
        with pytest.raises(connect.ConnectError) as refused:
            envd.upload_metadata(bad)
        assert refused.value.code == "invalid_argument"
    assert envd.written("a/b", {"k": "v"}) == {"name": "b", "type": "file", "path": "/home/user/a/b", "metadata": {"k": "v"}}
    assert "metadata" not in envd.written("a/b", {})


@pytest.mark.parametrize("path, operation, user, expiration", [
    ("a.txt", "read", "user", None), ("/home/user/é b", "write", "", 1_700_000_000), ("", "read", "root", -5)])
def test_signatures_as_the_sdk_makes_them(path, operation, user, expiration):
    token = "ab" * 32
    ours = envd.signature(path, operation, user, token, expiration)
    if expiration is None:
        assert ours == get_signature(path, operation, user, token)["signature"]
    query = {"path": path, "username": user, "signature": ours}
    if expiration is not None:
        query["signature_expiration"] = str(expiration)
    envd.check_signature(query, operation, token, now=(expiration or 0) - 1)  # passes before it expires
    for changed, why in (({"path": path + "x"}, "invalid signature"), ({"username": "other"}, "invalid signature"),
                         ({"signature": ours[:-1]}, "invalid signature"), ({"signature": "é"}, "invalid signature"),
                         ({"signature_expiration": "x1"}, "invalid signature expiration")):
        with pytest.raises(Unauthorized) as refused:
            envd.check_signature({**query, **changed}, operation, token, now=0)
        assert refused.value.message == why
    with pytest.raises(Unauthorized) as refused:
        envd.check_signature(query, "write" if operation == "read" else "read", token, now=0)
    with pytest.raises(Unauthorized):
        envd.check_signature(query, operation, "cd" * 32, now=0)
    if expiration is not None:
        with pytest.raises(Unauthorized) as refused:
            envd.check_signature(query, operation, token, now=expiration + 1)
        assert refused.value.message == "signature is already expired"


def test_signature_with_expiration_matches_the_sdk(monkeypatch):
    monkeypatch.setattr("e2b.sandbox.signature.time.time", lambda: 1_700_000_000)
    sdk = get_signature("p", "read", None, "t" * 64, 120)
    assert envd.signature("p", "read", "", "t" * 64, sdk["expiration"]) == sdk["signature"]


LIMITS = SandboxLimits(max_lifetime_s=7200)


def test_e2b_network_rules_become_a_policy():
    widest = NetworkPolicy(("*",))
    new = functools.partial(api.parse_new_sandbox, limits=LIMITS, internet=widest)
    assert new({"templateID": "base", "allow_internet_access": True}).network == widest
    assert new({"templateID": "base", "allow_internet_access": False}).network is None
    assert api.parse_new_sandbox({"templateID": "base", "allow_internet_access": True}, LIMITS).network is None  # egress off
    # The wire's names are camelCase, as the SDK's client models send them
    assert new({"templateID": "base", "network": {"allowOut": ["pypi.org"], "denyOut": ["0.0.0.0/0"]}}).network == \
        NetworkPolicy(("pypi.org",))
    # Calls into the sandbox always need its token: allowPublicTraffic and maskRequestHost change no egress
    assert new({"templateID": "base", "network": {"allowPublicTraffic": False}}).network is None
    assert new({"templateID": "base", "allow_internet_access": True, "network": {"maskRequestHost": "x"}}).network == widest
    for network, words in (({"allowOut": ["10.0.0.0/8"]}, "network.allowOut[0]"), ({"denyOut": ["evil.com"]}, "denyOut"),
                           ({"allowOut": "pypi.org"}, "network.allowOut"), ({"mask": 1}, "allowOut"),
                           ({"allow_out": ["pypi.org"]}, "allowOut"), ({"allowPublicTraffic": "no"}, "allowPublicTraffic"),
                           ({"denyOut": 5}, "denyOut"), ({"denyOut": [["0.0.0.0/0"]]}, "denyOut"),
                           ({"denyOut": "0.0.0.0/0"}, "denyOut")):
        with pytest.raises(api.E2bError, match=re.escape(words)):
            new({"templateID": "base", "network": network})


def test_new_sandboxes_from_templates_with_timeouts_clamped():
    base = api.parse_new_sandbox({"templateID": "base", "timeout": 300, "envVars": {"A": "1"}, "metadata": {"k": "v"},
                                  "secure": True, "allow_internet_access": True, "autoPause": False}, LIMITS)
    assert (base.language, base.timeout_s, base.env, base.metadata) == ("javascript", 300, {"A": "1"}, {"k": "v"})
    assert api.parse_new_sandbox({"templateID": "code-interpreter-v1", "timeout": 10**9}, LIMITS).timeout_s == 7200
    assert api.parse_new_sandbox({"templateID": "python", "timeout": 0}, LIMITS).timeout_s == 1
    for body, status, words in (({"templateID": "nope"}, 404, "not found"), ({}, 400, "templateID"), ([], 400, "object"),
                                ({"templateID": "base", "timeout": 1.5}, 400, "timeout"),
                                ({"templateID": "base", "envVars": {"1A": "x"}}, 400, "envVars"),
                                ({"templateID": "base", "mcp": {"x": {}}}, 400, "MCP"),
                                ({"templateID": "base", "volumeMounts": [{"name": "v", "path": "/v"}]}, 400, "volumes")):
        with pytest.raises(api.E2bError) as refused:
            api.parse_new_sandbox(body, LIMITS)
        assert refused.value.status == status and words in refused.value.message


def row(n, state="running", language="python", metadata=None):
    return SimpleNamespace(id=f"id{n}", state=state, language=language, metadata=metadata or {}, cpus=0.5,
                           memory_mb=512, disk_mb=64, created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=n),
                           expires_at=datetime(2026, 1, 2, tzinfo=UTC), access_token="t" * 64, network=None)


def test_lists_filter_order_and_page():
    rows = [row(1), row(2, "paused"), row(3, "starting", "javascript"), row(4)]
    asked = api.parse_list({"state": "running", "limit": "2"}, api.STATES)
    first, token = api.page(rows, asked)
    assert [s["sandboxID"] for s in first] == ["id4", "id3"] and token == "2"
    assert first[1]["templateID"] == "base" and first[1]["state"] == "running" and first[1]["cpuCount"] == 1
    rest, token = api.page(rows, api.parse_list({"state": "running", "limit": "2", "nextToken": "2"}, api.STATES))
    assert [s["sandboxID"] for s in rest] == ["id1"] and token is None
    paused, _ = api.page(rows, api.parse_list({"state": "paused", "order": "asc", "template": "code-interpreter-v1"},
                                              api.STATES))
    assert [s["sandboxID"] for s in paused] == ["id2"]
    assert api.page(rows, api.parse_list({"template": "nope"}, api.STATES)) == ([], None)  # unknown: none, as E2B's
    assert api.parse_list({"metadata": "a=1&b=x%3Dy"}, api.STATES)["metadata"] == {"a": "1", "b": "x=y"}
    for bad in ({"state": "gone"}, {"limit": "0"}, {"limit": "101"}, {"nextToken": "x"}, {"order": "up"},
                {"startedAfter": "yesterday"}, {"metadata": "x" * 5000}):
        with pytest.raises(api.E2bError):
            api.parse_list(bad, api.STATES)


def test_documents_carry_what_the_sdk_reads():
    created = api.sandbox(row(1))
    assert created["envdAccessToken"] == "t" * 64 and created["envdVersion"] == api.ENVD_VERSION
    assert created["templateID"] == "code-interpreter-v1"
    assert api.detail(row(2, "paused"))["state"] == "paused"
    assert [t["templateID"] for t in api.templates(LIMITS, datetime(2026, 1, 1, tzinfo=UTC))] == ["base", "code-interpreter-v1"]


def test_keys_in_e2b_form():
    key = new_key("e2b")
    assert E2B_KEY.match(key) and len(key) == 4 + 64
    assert new_key().startswith("crd_")
    assert parse_key_request({"name": "x", "form": "e2b"}).form == "e2b"
    with pytest.raises(ValidationFailed, match="form"):
        parse_key_request({"name": "x", "form": "aws"})


def test_long_shell_commands_pass_and_nul_is_refused():
    long = {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "printf '" + "a" * 20000 + "'"]}}
    assert len(envd.command_op(long, None)["cmd"][-1]) > 20000
    for bad in ({"process": {"cmd": "/bin/bash", "args": ["-c", "x" * (65 * 1024)]}},
                {"process": {"cmd": "/bin/ba\0sh"}}, {"process": {"cmd": "sh", "envs": {"A": "x\0y"}}}):
        with pytest.raises(connect.ConnectError):
            envd.command_op(bad, None)


def test_interpreter_runs_and_lines():
    assert interpreter.run_op({"code": "1", "context_id": None, "language": None, "env_vars": None}) == {
        "op": "run", "code": "1", "context": None, "language": "python", "timeout_s": 3600, "env": {}}
    assert interpreter.run_op({"code": "1", "env_vars": {"A": "1"}})["env"] == {"A": "1"}
    assert interpreter.run_op({"code": "1", "language": "js"})["language"] == "javascript"
    assert interpreter.run_op({"code": "\n    import os\n    if os:\n        1\n"})["code"] == "\nimport os\nif os:\n    1\n"
    assert interpreter.run_op({"code": "1", "context_id": "c1"})["language"] is None  # the context's own
    for bad in ([], {"code": 3}, {"code": "1", "language": "r"}, {"code": "1", "env_vars": {"1A": "1"}},
                {"code": "x" * (600 * 1024)}, {"code": "1", "context_id": "x" * 100}):
        with pytest.raises(api.E2bError) as refused:
            interpreter.run_op(bad)
        assert refused.value.status == 400
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert interpreter.lines({"type": "stdout", "text": "hi\n"}, now) == [
        {"type": "stdout", "text": "hi\n", "timestamp": "2026-01-01T00:00:00+00:00"}]
    assert interpreter.lines({"type": "result", "data": {"text/plain": "1", "image/png": "iVBO", "x/y": "z"},
                              "main": True}) == [{"type": "result", "text": "1", "png": "iVBO", "extra": {"x/y": "z"},
                                                  "is_main_result": True}]
    assert interpreter.lines({"type": "end", "error": {"name": "E", "value": "v", "traceback": "t"},
                              "execution_count": 3}) == [
        {"type": "error", "name": "E", "value": "v", "traceback": "t"}, {"type": "number_of_executions", "execution_count": 3}]
    assert interpreter.lines({"type": "result", "data": {"text/plain": "'a'"}})[0]["text"] == "a"
    assert interpreter.lines({"type": "result", "data": {"text/plain": "'"}})[0]["text"] == "'"
    assert interpreter.parse_context({"language": "bash", "cwd": "/home/user"}) == "bash"
    assert interpreter.parse_context({}) == "python"
    with pytest.raises(api.E2bError):
        interpreter.parse_context({"cwd": "/tmp"})


def test_a_sandbox_host_names_its_port_and_sandbox_under_the_domain_alone():
    assert api.sandbox_host("49983-abc123.e2b.example.com", "e2b.example.com") == ("49983", "abc123")
    assert api.sandbox_host("49999-AbC.E2B.example.com", "e2b.example.com") == ("49999", "AbC")
    for host in ("49983-abc.e2b.example.com.evil.test", "49983-abc.evil.test", "api.e2b.example.com", "abc.e2b.example.com",
                 "49983-.e2b.example.com", "49983-a.b.e2b.example.com", "49983-abc.e2b.example.com:8080", ""):
        assert api.sandbox_host(host, "e2b.example.com") is None, host


def test_the_languages_own_contexts_are_listed_before_they_start():
    assert [c["id"] for c in interpreter.contexts([])] == ["python", "javascript"]
    started = interpreter.contexts([{"id": "javascript", "language": "javascript"}, {"id": "a1", "language": "python"}])
    assert [(c["id"], c["language"], c["cwd"]) for c in started] == [
        ("python", "python", "/home/user"), ("javascript", "javascript", "/home/user"), ("a1", "python", "/home/user")]
