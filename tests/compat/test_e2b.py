"""E2B's SDK, unchanged, against coderund: configured only by E2B_API_URL, E2B_SANDBOX_URL and an
e2b_ key in E2B_API_KEY. The SDK is synchronous: each of its calls runs in a thread, so that the
coderund it talks to, in this process, keeps serving."""
from __future__ import annotations

import asyncio
import base64
import json
import struct

import aiohttp
import pytest
from e2b import CommandExitException, NotFoundException, Sandbox, SandboxQuery, SandboxState, TimeoutException
from e2b.envd.process import process_pb
from e2b.sandbox.commands.command_handle import PtySize
from e2b.exceptions import AuthenticationException, SandboxException
from e2b_code_interpreter import Sandbox as CodeInterpreter
from protobuf import Oneof

from tests.conftest import own_server

pytestmark = pytest.mark.timeout(600)


async def e2b_key(api, token: str) -> str:
    status, body, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "e2b", "form": "e2b"})
    assert status == 201, body
    return body["key"]


@pytest.fixture(scope="module")
async def e2b_env(runtime_api):
    """The environment E2B's SDK reads, pointed at this coderund with a new user's key."""
    key = await e2b_key(runtime_api, await runtime_api.user("e2b"))
    return {"E2B_API_URL": f"{runtime_api.base}/e2b", "E2B_SANDBOX_URL": f"{runtime_api.base}/e2b/sandbox",
            "E2B_API_KEY": key}


@pytest.fixture
def e2b(e2b_env, monkeypatch):
    for name, value in e2b_env.items():
        monkeypatch.setenv(name, value)


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture(scope="module")
async def sandbox(e2b_env):
    with pytest.MonkeyPatch.context() as patch:
        for name, value in e2b_env.items():
            patch.setenv(name, value)
        box = await call(Sandbox.create, metadata={"suite": "e2b"}, envs={"GREETING": "hello"})
        yield box
        await call(box.kill)


async def test_commands_stream_their_output_and_a_failure_raises(e2b, sandbox):
    seen = []
    result = await call(sandbox.commands.run, "echo one; echo two >&2; echo $GREETING", on_stdout=seen.append)
    assert result.exit_code == 0 and result.stdout == "one\nhello\n" and result.stderr == "two\n"
    assert "".join(seen) == "one\nhello\n"
    with pytest.raises(CommandExitException) as failed:
        await call(sandbox.commands.run, "echo out; exit 3")
    assert failed.value.exit_code == 3 and failed.value.stdout == "out\n"


async def test_files_write_read_list_and_remove(e2b, sandbox):
    info = await call(sandbox.files.write, "/home/user/notes/a.txt", "first line\n")
    assert info.path == "/home/user/notes/a.txt" and info.name == "a.txt"
    assert await call(sandbox.files.read, "notes/a.txt") == "first line\n"
    await call(sandbox.files.write, "notes/b.bin", bytes(range(256)))
    assert bytes(await call(sandbox.files.read, "/home/user/notes/b.bin", format="bytes")) == bytes(range(256))
    entries = await call(sandbox.files.list, "/home/user/notes")
    assert [(e.name, e.path, e.size) for e in entries] == [("a.txt", "/home/user/notes/a.txt", 11),
                                                         ("b.bin", "/home/user/notes/b.bin", 256)]
    result = await call(sandbox.commands.run, "pwd; echo $HOME; cat /home/user/notes/a.txt", cwd="/home/user")
    assert result.stdout == "/home/user\n/home/user\nfirst line\n"
    assert await call(sandbox.files.exists, "notes/a.txt")
    await call(sandbox.files.remove, "notes/a.txt")
    assert not await call(sandbox.files.exists, "notes/a.txt")
    with pytest.raises(NotFoundException):
        await call(sandbox.files.read, "notes/a.txt")


async def test_a_watcher_tells_changes_below_its_folder(e2b, sandbox):
    await call(sandbox.files.make_dir, "watched/old")
    handle = await call(sandbox.files.watch_dir, "watched", recursive=True, include_entry=True)
    await call(sandbox.files.write, "watched/a.txt", "one")
    await call(sandbox.files.make_dir, "watched/new")
    await call(sandbox.files.write, "watched/new/b.txt", "two")  # in a folder made after the watch began
    await call(sandbox.commands.run, "echo three >> watched/old/c.txt; mv watched/a.txt watched/d.txt; rm watched/d.txt")
    events = [(e.type.value, e.name) for e in await call(handle.get_new_events)]
    assert events[:3] == [("create", "a.txt"), ("chmod", "a.txt"), ("write", "a.txt")]  # as envd's upload
    for seen in (("create", "new"), ("create", "new/b.txt"), ("write", "new/b.txt"), ("create", "old/c.txt"),
                 ("write", "old/c.txt"), ("rename", "a.txt"), ("create", "d.txt"), ("remove", "d.txt")):
        assert seen in events
    assert await call(handle.get_new_events) == []  # each event once
    await call(sandbox.files.write, "watched/new/b.txt", "again")
    written = [e for e in await call(handle.get_new_events) if e.type.value == "write"]
    assert written[0].entry.path == "/home/user/watched/new/b.txt" and written[0].entry.size == 5
    await call(handle.stop)
    with pytest.raises(SandboxException):
        await call(handle.get_new_events)


async def test_a_watcher_stays_in_the_work_folder_and_is_bounded(e2b, sandbox):
    await call(sandbox.commands.run, "mkdir -p flood && ln -sfn /etc etc-link")
    for outside in ("/etc", "/tmp", "etc-link", "notes/../../etc"):
        with pytest.raises(SandboxException):
            await call(sandbox.files.watch_dir, outside)
    with pytest.raises(NotFoundException):
        await call(sandbox.files.watch_dir, "nowhere")
    handle = await call(sandbox.files.watch_dir, "flood")
    await call(sandbox.commands.run, "cd flood && for i in $(seq 2500); do echo > f$i; done")  # 5000 events
    events = await call(handle.get_new_events)
    assert len(events) == 4096 and events[0].name == "f1"  # the first ones kept, the rest dropped
    assert await call(handle.get_new_events) == []
    more = [await call(sandbox.files.watch_dir, "flood") for _ in range(15)]  # 16 in all
    with pytest.raises(SandboxException):
        await call(sandbox.files.watch_dir, "flood")
    for watcher in (handle, *more):
        await call(watcher.stop)


async def test_file_metadata_is_kept_with_the_file_and_bounded(runtime_api, e2b, sandbox):
    info = await call(sandbox.files.write, "meta/a.txt", "x", metadata={"Author": "mish", "purpose": "upload"})
    assert info.metadata == {"author": "mish", "purpose": "upload"}  # keys lowercased, as envd's
    assert (await call(sandbox.files.get_info, "meta/a.txt")).metadata == info.metadata
    moved = await call(sandbox.files.rename, "meta/a.txt", "meta/b.txt")
    assert moved.metadata == info.metadata
    assert [e.metadata for e in await call(sandbox.files.list, "meta")] == [info.metadata]
    await call(sandbox.files.write, "meta/b.txt", "y")  # an overwrite without metadata clears it
    assert (await call(sandbox.files.get_info, "meta/b.txt")).metadata is None
    await call(sandbox.commands.run, "python3 -c \"import os; os.setxattr('meta/b.txt', 'user.e2b.by', b'cmd');"
                                     " os.setxattr('meta/b.txt', 'user.e2b.big', b'x' * 4000);"
                                     " os.setxattr('meta/b.txt', 'user.other', b'o')\"")
    assert (await call(sandbox.files.get_info, "meta/b.txt")).metadata == {"by": "cmd"}  # a value too long is left out
    url = f"{runtime_api.base}/e2b/sandbox/files"
    for bad in ({f"X-Metadata-k{i}": "v" for i in range(33)}, {"X-Metadata-k": "v" * 1025}, {"X-Metadata-" + "k" * 129: "v"},
                {"X-Metadata-k": "caf\u00e9"}):
        async with runtime_api.session.post(url, params={"path": "meta/c.txt"}, data=b"c", headers=envd_headers(
                sandbox, **{"Content-Type": "application/octet-stream"}, **bad)) as response:
            assert response.status == 400, await response.text()
    assert not await call(sandbox.files.exists, "meta/c.txt")


async def test_signed_urls_stand_for_the_token_for_their_path_operation_and_time(runtime_api, e2b, sandbox):
    """The SDK's signed URLs name no sandbox through E2B_SANDBOX_URL (they are made for E2B's
    per-sandbox hosts), so the sandbox is named here in its header, with no token."""
    await call(sandbox.files.write, "signed/a.txt", "signed content")
    url = f"{runtime_api.base}/e2b/sandbox/files"
    named = {"E2b-Sandbox-Id": sandbox.sandbox_id}

    def query(signed: str) -> str:
        return signed.split("?", 1)[1]

    for signed in (sandbox.download_url("signed/a.txt", "user"), sandbox.download_url("signed/a.txt", "user", 120),
                   sandbox.download_url("signed/a.txt")):
        async with runtime_api.session.get(f"{url}?{query(signed)}", headers=named) as response:
            assert response.status == 200 and await response.read() == b"signed content"
    upload = query(sandbox.upload_url("signed/b.txt", use_signature_expiration=60))
    async with runtime_api.session.post(f"{url}?{upload}", data=b"uploaded",
                                        headers={**named, "Content-Type": "application/octet-stream"}) as response:
        assert response.status == 200, await response.text()
    assert await call(sandbox.files.read, "signed/b.txt") == "uploaded"
    expired = query(sandbox.download_url("signed/a.txt", "user", use_signature_expiration=-120))
    forged = query(sandbox.download_url("signed/a.txt")).replace("signature=v1_", "signature=v1_A")
    other_path = query(sandbox.download_url("signed/b.txt")).replace("b.txt", "a.txt")
    later = query(sandbox.download_url("signed/a.txt", use_signature_expiration=60))
    stretched = later.replace(later.rsplit("=", 1)[1], str(int(later.rsplit("=", 1)[1]) + 3600))
    for method, signed, message in (("GET", expired, "signature is already expired"), ("GET", forged, "invalid signature"),
                                    ("GET", other_path, "invalid signature"), ("GET", stretched, "invalid signature"),
                                    ("POST", query(sandbox.download_url("signed/c.txt")), "invalid signature")):
        async with runtime_api.session.request(method, f"{url}?{signed}", data=b"x", headers=named) as response:
            assert (response.status, await response.json()) == (401, {"code": 401, "message": message})
    other = await call(Sandbox.create)
    try:  # another sandbox's signature opens nothing here, nor this one's there
        for box, signed in ((sandbox, query(other.download_url("signed/a.txt"))), (other, query(sandbox.download_url("signed/a.txt")))):
            async with runtime_api.session.get(f"{url}?{signed}", headers={"E2b-Sandbox-Id": box.sandbox_id}) as response:
                assert response.status == 401
    finally:
        await call(other.kill)
    assert not await call(sandbox.files.exists, "signed/c.txt")


async def test_a_pty_session_takes_input_resizes_reconnects_and_ends(e2b, sandbox):
    terminal = await call(sandbox.pty.create, PtySize(cols=80, rows=24), envs={"FOO": "bar"})
    await call(sandbox.pty.send_stdin, terminal.pid, b"tty; echo $FOO; tput cols\n")
    await call(terminal.disconnect)
    await call(sandbox.pty.resize, terminal.pid, PtySize(cols=132, rows=40))
    again = await call(sandbox.pty.connect, terminal.pid)
    await call(sandbox.pty.send_stdin, terminal.pid, b"tput cols; stty size; exit\n")
    output = []
    result = await call(again.wait, on_pty=output.append)
    text = b"".join(output).decode()
    assert result.exit_code == 0 and "132" in text and "40 132" in text
    first = await call(sandbox.pty.create, PtySize(cols=80, rows=24))
    await call(sandbox.pty.send_stdin, first.pid, b"tty; tput cols; exit\n")
    seen = []
    assert (await call(first.wait, on_pty=seen.append)).exit_code == 0
    assert "/dev/pts/" in b"".join(seen).decode() and "80" in b"".join(seen).decode()
    killed = await call(sandbox.pty.create, PtySize(cols=80, rows=24))
    assert await call(sandbox.pty.kill, killed.pid)
    assert not await call(sandbox.pty.kill, 999999)


async def test_a_pty_flood_is_bounded_and_the_terminal_stays_confined(e2b, sandbox):
    terminal = await call(sandbox.pty.create, PtySize(cols=80, rows=24))
    await call(sandbox.pty.send_stdin, terminal.pid, b"head -c 3000000 /dev/zero | tr '\\0' x; exit\n")
    output = []
    result = await call(terminal.wait, on_pty=output.append)
    assert result.exit_code == 0 and result.error and "1 MiB" in result.error
    assert sum(map(len, output)) <= 1024 * 1024  # the rest dropped, never held
    with pytest.raises(SandboxException):
        await call(sandbox.pty.create, PtySize(cols=80, rows=24), cwd="/nowhere")
    with pytest.raises(SandboxException):  # a folder nobody may enter
        await call(sandbox.pty.create, PtySize(cols=80, rows=24), cwd="/root")
    outside = await call(sandbox.pty.create, PtySize(cols=80, rows=24), cwd="/etc")  # as the user's own `cd /etc`
    await call(sandbox.pty.send_stdin, outside.pid, b"pwd; id -u; touch x; exit 0\n")
    seen = []
    await call(outside.wait, on_pty=seen.append)
    text = b"".join(seen).decode()
    assert "/etc\r\n65534\r\n" in text and ("Read-only file system" in text or "Permission denied" in text)
    with pytest.raises(SandboxException):
        await call(sandbox.pty.resize, 999999, PtySize(cols=80, rows=24))


async def test_background_commands_take_input_are_listed_and_killed(e2b, sandbox):
    handle = await call(sandbox.commands.run, "read line; echo got $line; sleep 600", background=True, stdin=True)
    listed = await call(sandbox.commands.list)
    assert [(p.pid, p.cmd, p.args[-1], p.cwd) for p in listed if p.pid == handle.pid] == [
        (handle.pid, "/bin/bash", "read line; echo got $line; sleep 600", "/home/user")]
    await call(sandbox.commands.send_stdin, handle.pid, "ping\n")

    def first_output():
        return next(out for out, _, _ in handle if out)

    assert await call(first_output) == "got ping\n"  # read, and answered, while it runs
    assert await call(sandbox.commands.kill, handle.pid)
    with pytest.raises(CommandExitException) as killed:
        await call(handle.wait)
    assert killed.value.stdout == "got ping\n" and killed.value.exit_code == -1
    assert handle.pid not in [p.pid for p in await call(sandbox.commands.list)]
    assert not await call(sandbox.commands.kill, handle.pid)  # gone: False, as E2B's SDK says


async def test_folders_rename_and_info(e2b, sandbox):
    assert await call(sandbox.files.make_dir, "/home/user/deep/er")
    assert not await call(sandbox.files.make_dir, "deep/er")  # there already
    await call(sandbox.files.write, "deep/er/x.py", "print(1)\n")
    moved = await call(sandbox.files.rename, "deep/er/x.py", "/home/user/deep/y.py")
    assert moved.path == "/home/user/deep/y.py" and moved.type.value == "file"
    info = await call(sandbox.files.get_info, "~/deep")
    assert info.type.value == "dir" and info.name == "deep" and info.owner == "user"
    deep = await call(sandbox.files.list, "deep", depth=2)
    assert [e.path for e in deep] == ["/home/user/deep/er", "/home/user/deep/y.py"]
    with pytest.raises(SandboxException, match="outside /home/user"):
        await call(sandbox.files.read, "/etc/passwd")


async def test_info_list_timeout_pause_connect_and_kill(e2b, runtime_api):
    box = await call(Sandbox.create, "base", timeout=120, metadata={"case": "lifecycle"})
    info = await call(box.get_info)
    assert info.template_id == "base" and info.metadata == {"case": "lifecycle"} and info.state.value == "running"
    found = (await call(Sandbox.list, query=SandboxQuery(metadata={"case": "lifecycle"}))).next_items
    assert [s.sandbox_id for s in await call(found)] == [box.sandbox_id]
    await call(box.set_timeout, 600)
    later = await call(box.get_info)
    assert (later.end_at - later.started_at).total_seconds() >= 590
    await call(box.commands.run, "echo kept > state.txt")
    assert await call(box.pause)
    assert not await call(box.is_running)  # paused, as E2B's SDK tells it
    paused = SandboxQuery(metadata={"case": "lifecycle"}, state=[SandboxState.PAUSED])
    assert [s.sandbox_id for s in await call((await call(Sandbox.list, query=paused)).next_items)] == [box.sandbox_id]
    again = await call(Sandbox.connect, box.sandbox_id)
    assert (await call(again.commands.run, "cat state.txt")).stdout == "kept\n"
    assert (await call(again.get_info)).state.value == "running"
    assert await call(box.kill)
    assert not await call(box.is_running)
    assert not await call(Sandbox.kill, box.sandbox_id)
    with pytest.raises(SandboxException):
        await call(box.commands.run, "echo late")


def envd_headers(box, **extra):
    return {"E2b-Sandbox-Id": box.sandbox_id, "E2b-Sandbox-Port": "49983", "X-Access-Token": box._envd_access_token,
            **extra}


def envelopes(body: bytes) -> list[tuple[int, bytes]]:
    found = []
    while body:
        flags, size = struct.unpack(">BI", body[:5])
        found.append((flags, body[5:5 + size]))
        body = body[5 + size:]
    return found


async def test_the_binary_codec_unary_and_streaming(runtime_api, e2b, sandbox):
    """What the SDK sends as JSON works as binary protobuf too (as other Connect clients send it)."""
    base = f"{runtime_api.base}/e2b/sandbox"
    start = process_pb.StartRequest(process=process_pb.ProcessConfig(cmd="/bin/sh", args=["-c", "echo bin; exit 4"]))
    async with runtime_api.session.post(f"{base}/process.Process/Start", data=struct.pack(">BI", 0, len(start.to_binary()))
                                        + start.to_binary(), headers=envd_headers(
                                            sandbox, **{"Content-Type": "application/connect+proto"})) as response:
        assert response.status == 200 and response.content_type == "application/connect+proto"
        found = envelopes(await response.read())
    events = [process_pb.StartResponse.from_binary(data).event.event for flags, data in found[:-1]]
    assert [e.field for e in events] == ["start", "data", "end"] and found[-1] == (2, b"{}")
    assert events[1].value.output == Oneof("stdout", b"bin\n") and events[2].value.exit_code == 4
    async with runtime_api.session.post(f"{base}/process.Process/List", data=b"", headers=envd_headers(
            sandbox, **{"Content-Type": "application/proto"})) as response:
        assert response.status == 200 and response.content_type == "application/proto"
        process_pb.ListResponse.from_binary(await response.read())
    async with runtime_api.session.post(f"{base}/filesystem.Filesystem/Stat", data=b"\x0a\x07/nowhere",
                                        headers=envd_headers(sandbox, **{"Content-Type": "application/proto"})) as response:
        assert response.status == 400 and (await response.json())["code"] == "invalid_argument"


async def test_anothers_sandbox_is_404_and_no_envd_call_passes_without_its_token(runtime_api, e2b, sandbox):
    other = await e2b_key(runtime_api, await runtime_api.user("e2b_other"))
    api = f"{runtime_api.base}/e2b"
    for method, path, body in (("GET", "", None), ("DELETE", "", None), ("POST", "/timeout", {"timeout": 60}),
                               ("POST", "/connect", {"timeout": 60}), ("POST", "/pause", None)):
        async with runtime_api.session.request(method, f"{api}/sandboxes/{sandbox.sandbox_id}{path}", json=body,
                                               headers={"X-API-Key": other}) as response:
            assert response.status == 404, (method, path)
            assert (await response.json())["code"] == 404
    async with runtime_api.session.get(f"{api}/v2/sandboxes", headers={"X-API-Key": other}) as response:
        assert await response.json() == []
    for wrong in ("e2b_" + "0" * 64, sandbox._envd_access_token):  # no one's key; a sandbox's token is no key
        async with runtime_api.session.get(f"{api}/v2/sandboxes", headers={"X-API-Key": wrong}) as response:
            assert response.status == 401 and (await response.json())["code"] == 401
    theirs = await call(Sandbox.create, api_key=other)
    try:
        start = json.dumps({"process": {"cmd": "/bin/sh", "args": ["-c", "touch pwned"]}}).encode()
        body = struct.pack(">BI", 0, len(start)) + start
        for headers in ({"X-Access-Token": ""}, {"X-Access-Token": "wrong"}, {"X-Access-Token": theirs._envd_access_token}):
            async with runtime_api.session.post(f"{api}/sandbox/process.Process/Start", data=body, headers={
                    **envd_headers(sandbox), **headers, "Content-Type": "application/connect+json"}) as response:
                assert response.status == 401 and (await response.json())["code"] == 401
        async with runtime_api.session.get(f"{api}/sandbox/files", params={"path": "notes/b.bin"},
                                           headers={**envd_headers(sandbox), "X-Access-Token": "x" * 64}) as response:
            assert response.status == 401
        async with runtime_api.session.get(f"{api}/sandbox/health", headers=envd_headers(sandbox, **{
                "E2b-Sandbox-Port": "8080"})) as response:
            assert response.status == 502  # a port nothing in the sandbox serves
        assert not await call(sandbox.files.exists, "pwned")
        with pytest.raises(AuthenticationException):
            await call(Sandbox.connect, sandbox.sandbox_id, api_key="e2b_" + "1" * 64)
    finally:
        await call(theirs.kill)


async def test_no_input_makes_envd_answer_a_5xx(runtime_api, e2b, sandbox):
    """Garbage to every served call, in every codec: a 4xx (or a stream's error), never a 5xx, and
    the sandbox still answers."""
    base = f"{runtime_api.base}/e2b/sandbox"
    methods = ["process.Process/Start", "process.Process/List", "process.Process/SendInput",
               "process.Process/SendSignal", "process.Process/CloseStdin", "process.Process/Connect",
               "filesystem.Filesystem/Stat", "filesystem.Filesystem/MakeDir", "filesystem.Filesystem/Move",
               "filesystem.Filesystem/ListDir", "filesystem.Filesystem/Remove", "nope.Nope/Nope"]
    bodies = [b"", b"{", b"[]", b'{"path": 7}', b'{"process": {"pid": -1}}', b'{"path": "/home/user/' + b"x" * 5000 + b'"}',
              b"\x0a\xff\xff\xff\xff\x0f", b"\x00\x00\x00\x00\x02{}", b"\x00\xff\xff\xff\xff", b'{"depth": 1e400}',
              b'{"process": {"cmd": "sh", "args": ["-c", "exit 0"], "cwd": "/proc"}}']
    for method in methods:
        for content_type in ("application/json", "application/proto", "application/connect+json",
                             "application/connect+proto", "text/plain"):
            for body in bodies:
                async with runtime_api.session.post(f"{base}/{method}", data=body, headers=envd_headers(
                        sandbox, **{"Content-Type": content_type})) as response:
                    assert response.status < 500, (method, content_type, body[:40], await response.text())
    cut = b'--x\r\nContent-Disposition: form-data; name="file"; filename="cut.txt"\r\n\r\nabc'
    for content_type, body in (("multipart/form-data; boundary=x", b"--x\r\nnonsense"), ("multipart/form-data", b""),
                               ("multipart/form-data; boundary=x", cut), ("application/octet-stream", b"x")):
        async with runtime_api.session.post(f"{base}/files", data=body, params={"path": "../x"} if body == b"x" else {},
                                            headers=envd_headers(sandbox, **{"Content-Type": content_type})) as response:
            assert 400 <= response.status < 500, (content_type, await response.text())
    assert (await call(sandbox.commands.run, "echo still")).stdout == "still\n"


async def test_health_is_public_and_the_rest_needs_a_key(runtime_api):
    async with runtime_api.session.get(f"{runtime_api.base}/e2b/health") as response:
        assert response.status == 200
    for method, path in (("GET", "/templates"), ("POST", "/sandboxes"), ("GET", "/sandboxes/x")):
        async with runtime_api.session.request(method, f"{runtime_api.base}/e2b{path}") as response:
            assert response.status == 401 and (await response.json())["code"] == 401


@pytest.fixture(scope="module")
async def notebook(e2b_env):
    """A sandbox of e2b-code-interpreter's Sandbox: its default template, code-interpreter-v1."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in e2b_env.items():
            patch.setenv(name, value)
        box = await call(CodeInterpreter.create)
        yield box
        await call(box.kill)


async def test_run_code_keeps_state_streams_and_tells_errors(e2b, notebook):
    seen = []
    first = await call(notebook.run_code, "import math\nx = 41\nprint('set')", on_stdout=lambda m: seen.append(m.line))
    assert first.logs.stdout == ["set\n"] and seen == ["set\n"] and first.error is None
    second = await call(notebook.run_code, "x += 1\ndisplay('shown')\nround(math.pi, 2), x")
    assert [(r.text, r.is_main_result) for r in second.results] == [("shown", False), ("(3.14, 42)", True)]
    assert second.text == "(3.14, 42)" and second.execution_count == first.execution_count + 1
    failed = await call(notebook.run_code, "def f():\n    return 1 / 0\nf()")
    assert failed.error.name == "ZeroDivisionError" and failed.error.value == "division by zero"
    assert "line 2, in f" in failed.error.traceback


async def test_a_matplotlib_chart_comes_back_as_png(e2b, notebook):
    shown = await call(notebook.run_code, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    pngs = [base64.b64decode(r.png) for r in shown.results if r.png]
    assert shown.error is None and len(pngs) == 1 and pngs[0][:8] == b"\x89PNG\r\n\x1a\n"


async def test_notebook_code_written_for_ipython_runs(e2b, notebook):
    shell = await call(notebook.run_code, "!pwd\nfor _ in range(2):\n    !echo \"$HOME\" 'it''s'")
    assert shell.error is None and "".join(shell.logs.stdout) == "/home/user\n" + "/home/user its\n" * 2
    raw = await call(notebook.run_code, "from IPython.display import display, HTML\n"
                                        "display({'text/latex': r'\\text{x}'}, raw=True)\ndisplay(HTML('<b>hi</b>'))")
    assert [r.formats() for r in raw.results] == [["latex"], ["text", "html"]] and raw.results[1].html == "<b>hi</b>"
    frame = await call(notebook.run_code, "import pandas as pd\npd.DataFrame({'a': [1, 2, None]})")
    assert frame.results[0].data == {"a": {"0": 1.0, "1": 2.0, "2": None}} and "html" in frame.results[0].formats()


async def test_contexts_javascript_bash_restart_and_remove(e2b, notebook):
    """JavaScript contexts run where the image has node: the base template's (code-interpreter-v1's
    image is the Python one)."""
    base = await call(CodeInterpreter.create, "base")
    try:
        js = await call(base.create_code_context, language="javascript")
        assert js.language == "javascript" and js.cwd == "/home/user"
        await call(base.run_code, "let n = 20", context=js)
        assert (await call(base.run_code, "n * 2 + 2", context=js)).text == "42"
        assert (await call(base.run_code, "[1, 2].map((x) => x * 2)", language="js")).text == "[ 2, 4 ]"
        assert (await call(base.run_code, "process.env.FOO", language="js", envs={"FOO": "js"})).text == "js"
        assert (await call(base.run_code, "String(process.env.FOO)", language="js")).text == "undefined"
        assert js.id in [c.id for c in await call(base.list_code_contexts)]
        await call(base.restart_code_context, js)
        assert (await call(base.run_code, "typeof n", context=js)).text == "undefined"
        await call(base.remove_code_context, js)
        assert js.id not in [c.id for c in await call(base.list_code_contexts)]
        with pytest.raises(NotFoundException):
            await call(base.run_code, "1", context=js)
    finally:
        await call(base.kill)
    assert (await call(notebook.run_code, "echo $((6 * 7))", language="bash")).logs.stdout == ["42\n"]
    # code-interpreter-v1 runs JavaScript beside Python, ES module imports and a top-level await's value too
    assert (await call(notebook.run_code, "import { readFileSync } from 'fs'\ntypeof readFileSync", language="js")).text == "function"
    assert (await call(notebook.run_code, "await Promise.resolve('Hello World!')", language="js")).text == "Hello World!"
    typed = await call(notebook.run_code, "interface N { n: number }\nconst given: N = {n: 41}\ngiven.n + 1", language="ts")
    assert typed.text == "42" and typed.error is None


async def test_the_interpreter_needs_the_sandbox_token_too(runtime_api, e2b, notebook):
    for headers in ({}, {"X-Access-Token": "x" * 64}, {"E2B-Traffic-Access-Token": "y" * 64}):
        async with runtime_api.session.post(f"{runtime_api.base}/e2b/sandbox/execute", json={"code": "open('pwned', 'w')"},
                                            headers={"E2b-Sandbox-Id": notebook.sandbox_id, "E2b-Sandbox-Port": "49999",
                                                     **headers}) as response:
            assert response.status == 401
    async with runtime_api.session.get(f"{runtime_api.base}/e2b/sandbox/files", params={"path": "x"}, headers={
            **envd_headers(notebook), "E2b-Sandbox-Port": "49999"}) as response:
        assert response.status == 404  # envd's paths are not the interpreter's port's
    assert not await call(notebook.files.exists, "pwned")


async def test_run_code_env_vars_hold_for_that_run_alone(e2b, notebook):
    for language, code in (("python", "import os; os.getenv('FOO', 'unset')"), ("bash", "echo ${FOO:-unset}")):
        given = await call(notebook.run_code, code, language=language, envs={"FOO": "b a'r"})
        after = await call(notebook.run_code, code, language=language)
        assert [given.text or given.logs.stdout[0].strip(), after.text or after.logs.stdout[0].strip()] == ["b a'r", "unset"]


async def test_a_client_connects_to_a_running_command(e2b, sandbox):
    handle = await call(sandbox.commands.run, "sleep 1; echo done", background=True)
    await call(handle.disconnect)
    again = await call(sandbox.commands.connect, handle.pid)
    assert again.pid == handle.pid
    assert (await call(again.wait)).stdout == "done\n"
    with pytest.raises(NotFoundException):
        await call(sandbox.commands.connect, handle.pid)  # it has ended


async def test_the_host_form_serves_e2b_domain_clients(settings):
    """With --e2b-domain, api.DOMAIN is E2B's API and {port}-{sandbox}.DOMAIN a sandbox's envd or
    interpreter, whatever the path, as a wildcard DNS name and a TLS proxy in front deliver them."""
    async with own_server(settings, e2b_domain="e2b.test") as api:
        key = await e2b_key(api, await api.user("e2bhost"))
        status, made, _ = await api.call("POST", "/sandboxes", headers={"Host": "api.e2b.test", "X-API-Key": key},
                                         json={"templateID": "code-interpreter-v1", "timeout": 60})
        assert status == 201 and made["envdAccessToken"], made
        box, token = made["sandboxID"], made["envdAccessToken"]
        try:
            envd = {"Host": f"49983-{box}.e2b.test", "X-Access-Token": token}
            status, _, _ = await api.call("GET", "/health", headers=envd)
            assert status == 204
            form = aiohttp.FormData()
            form.add_field("file", b"by host", filename="host.txt")
            status, _, _ = await api.call("POST", "/files", params={"path": "/home/user/host.txt"}, headers=envd, data=form)
            assert status == 200
            async with api.session.get(f"{api.base}/files", params={"path": "host.txt"}, headers=envd) as response:
                assert response.status == 200 and await response.read() == b"by host"
            notebook = {"Host": f"49999-{box}.e2b.test", "X-Access-Token": token}
            async with api.session.post(f"{api.base}/execute", json={"code": "6 * 7"}, headers=notebook) as response:
                lines = [json.loads(line) for line in (await response.read()).splitlines()]
            assert [line.get("text") for line in lines if line["type"] == "result"] == ["42"], lines
            # The token is still the credential; another sandbox's name, another port, another host are not this one
            for headers, expected in (({"Host": f"49983-{box}.e2b.test"}, 401),
                                      ({**envd, "Host": f"49983-{box[:-1]}x.e2b.test"}, 401),
                                      ({**envd, "Host": f"8080-{box}.e2b.test"}, 502),
                                      ({**envd, "Host": f"49983-{box}.other.test"}, 404)):
                status, body, _ = await api.call("GET", "/files", params={"path": "host.txt"}, headers=headers)
                assert status == expected, (headers, status, body)
            status, body, _ = await api.call("GET", "/sandboxes", headers={"Host": "api.e2b.test"})
            assert status == 401 and body["code"] == 401  # E2B's API, in E2B's shape, wants its key
            status, _, _ = await api.call("GET", "/healthz", headers={"Host": "coderund.e2b-elsewhere.test"})
            assert status == 200  # any other host is coderund's own API
        finally:
            await api.call("DELETE", f"/sandboxes/{box}", headers={"Host": "api.e2b.test", "X-API-Key": key})


async def test_a_sandbox_killed_under_a_call_is_told_as_killed(e2b):
    """E2B's SDKs tell a sandbox killed under a streamed call from a timeout by the connection being
    cut, then the sandbox found gone: a command's wait and a run_code both say it was killed."""
    box = await call(Sandbox.create)
    command = await call(box.commands.run, "sleep 60", background=True)
    await call(box.kill)
    with pytest.raises(TimeoutException, match="killed or reached its end of life"):
        await call(command.wait)
    notebook = await call(CodeInterpreter.create)
    asyncio.get_running_loop().call_later(2, lambda: asyncio.ensure_future(call(notebook.kill)))
    with pytest.raises(TimeoutException, match="killed while the request was in progress"):
        await call(notebook.run_code, "import time; time.sleep(60)", timeout=60)


async def test_the_sdks_network_options_reach_the_policy(e2b):
    """The SDK sends network's names in camelCase: a policy is refused where egress is off (this
    server's), and options about calls into the sandbox are accepted."""
    with pytest.raises(SandboxException, match="egress is off"):
        await call(Sandbox.create, network={"allow_out": ["pypi.org"], "deny_out": ["0.0.0.0/0"]})
    box = await call(Sandbox.create, network={"allow_public_traffic": False, "mask_request_host": "x"})
    try:
        assert (await call(box.commands.run, "echo ok")).stdout == "ok\n"
    finally:
        await call(box.kill)
