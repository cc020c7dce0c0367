"""Pure parts of the sandbox: container options and the supervisor's report."""
from __future__ import annotations

import resource
import select
import subprocess
from pathlib import Path

import docker
import pytest

from coderund.sandbox import kernel, supervisor
from coderund.sandbox.engine import http_of
from coderund.sandbox.options import Isolation, container_options


def test_container_options_lock_the_container_down():
    options = container_options(image="img", memory_mb=128, isolation=Isolation(runtime="runsc"),
                                env={"GOCACHE": "/tmp/c"}, labels={"coderund": "1", "coderund.task": "x"}, tools_volume="tools")
    assert options["network_mode"] == "none" and options["network_disabled"] is True and options["read_only"] is True
    assert options["cap_drop"] == ["ALL"] and options["security_opt"] == ["no-new-privileges"]
    # The supervisor is root with four capabilities only; it runs the program as 65534 with none.
    assert options["user"] == "0:0" and options["cap_add"] == ["SETUID", "SETGID", "KILL", "CHOWN"]
    assert options["pids_limit"] == 128
    assert options["mem_limit"] == options["memswap_limit"] == 128 * 1024 * 1024
    assert options["nano_cpus"] == 10**9 and options["runtime"] == "runsc"
    assert options["environment"]["GOCACHE"] == "/tmp/c" and "PATH" in options["environment"]
    assert options["labels"] == {"coderund": "1", "coderund.task": "x"}
    assert {u["Name"] for u in options["ulimits"]} == {"nofile", "fsize", "core"}
    assert all("size=" in spec for spec in options["tmpfs"].values())
    assert "binds" not in options and "volumes" not in options and "privileged" not in options
    # The only mount: the supervisor's volume, read-only; the supervisor is the first process.
    [mount] = options["mounts"]
    assert mount["Source"] == "tools" and mount["Target"] == "/.coderund" and mount["ReadOnly"] is True
    assert options["command"] == ["/.coderund/supervise", "/box"] and options["stdin_open"] is True
    assert not any("proxy" in name.lower() or name.startswith("CODERUND") for name in options["environment"])


def test_a_container_with_egress_gets_its_socket_folder_and_the_proxy_variables_and_still_no_network():
    options = container_options(image="img", memory_mb=128, isolation=Isolation(), env={"HTTP_PROXY": "mine"}, labels={},
                                tools_volume="tools", egress="/cache/egress/abc")
    assert options["network_mode"] == "none" and options["network_disabled"] is True
    _, socket_folder = options["mounts"]
    assert (socket_folder["Source"], socket_folder["Target"], socket_folder["Type"], socket_folder["ReadOnly"]) == \
        ("/cache/egress/abc", "/.coderund-egress", "bind", True)
    env = options["environment"]
    assert env["CODERUND_EGRESS"] == "/.coderund-egress/s"
    assert env["HTTP_PROXY"] == env["https_proxy"] == env["ALL_PROXY"] == "http://127.0.0.1:3128"  # ours, not the request's
    assert "127.0.0.1" in env["NO_PROXY"]


def test_parse_report():
    data = b"coderund-report exit=3 signal=0 wall_us=1500 cpu_us=900 maxrss_kb=42 timed_out=0 output_over=0 oom=-1 stdout=2 stderr=3 files=0\nhierr"
    report, files = supervisor.parse_report(data)
    assert (report.exit_code, report.signal, report.wall_ms, report.cpu_ms, report.memory_kb) == (3, None, 1, 0, 42)
    assert report.oom is None and report.stdout == b"hi" and report.stderr == b"err" and files is None
    assert supervisor.report_size(data.split(b"\n")[0] + b"\n") == len(data)
    for broken in (data[:-1], data + b"x", b"garbage", data.replace(b"exit=3", b"exit=x"), data.replace(b" files=0", b"")):
        with pytest.raises(supervisor.SupervisorError):
            supervisor.parse_report(broken)


def serve(binary: Path, folder: Path, files: supervisor.Files, program: tuple[str, ...], *, wall_ms: int = 5000,
          cap: int = 100, stdin: bytes = b"", collect: bool = False, limits: supervisor.RunLimits = supervisor.NO_LIMITS):
    """The supervisor on the host, in a folder of its own, given one request as a container's would be."""
    request = supervisor.request(files, stdin, program, wall_ms=wall_ms, output_cap=cap, collect=collect, limits=limits)
    done = subprocess.run([str(binary), str(folder)], input=request, capture_output=True, check=True)
    return supervisor.parse_report(done.stdout)


def test_supervisor_caps_output_and_time_on_the_host(tmp_path: Path):
    binary = supervisor.build(tmp_path / "bin")
    assert supervisor.build(tmp_path / "bin") == binary  # built once per source version
    none = supervisor.Files()

    flood, _ = serve(binary, tmp_path, none, ("sh", "-c", "yes"))
    assert flood.output_over and flood.signal == 9 and flood.stdout == b"y\n" * 50
    slow, _ = serve(binary, tmp_path, none, ("sleep", "5"), wall_ms=300)
    assert slow.timed_out and 300 <= slow.wall_ms < 1500
    # A background child holding the pipe open does not keep the report waiting.
    detached, _ = serve(binary, tmp_path, none, ("sh", "-c", "sleep 10 & echo parent done"), wall_ms=3000)
    assert detached.exit_code == 0 and detached.stdout == b"parent done\n" and detached.wall_ms < 2000


def test_supervisor_takes_files_and_stdin_and_returns_the_work_folder(tmp_path: Path):
    binary = supervisor.build(tmp_path / "bin")
    work = tmp_path / "box"
    work.mkdir()
    work.chmod(0o1777)  # as the sandbox's tmpfs is: the program, another user, writes there
    given = supervisor.Files({"run.sh": b"cat > out.txt; mkdir -p sub; echo made > sub/x; echo $1", "data": bytes(range(256))},
                             {"run.sh": 0o755})
    report, files = serve(binary, work, given, ("./run.sh", "arg one"), stdin=b"in\x00put", collect=True)
    assert report.exit_code == 0 and report.stdout == b"arg one\n"
    assert files is not None and files.data["out.txt"] == b"in\x00put" and files.data["data"] == bytes(range(256))
    assert files.data["sub"] is supervisor.FOLDER and files.data["sub/x"] == b"made\n" and files.modes["run.sh"] == 0o755
    (work / "link").symlink_to("/etc/passwd")
    _, again = serve(binary, work, supervisor.Files(), ("true",), collect=True)
    assert again is not None and "link" not in again.data  # links are never sent


def test_the_program_is_another_user_than_its_supervisor(tmp_path: Path):
    """It runs as 65534, owns the files it was given, and can neither signal the supervisor nor
    open its descriptors; io_uring is denied by the supervisor's own seccomp filter."""
    binary = supervisor.build(tmp_path / "bin")
    tmp_path.chmod(0o1777)
    script = ("id -u; id -G; stat -c %u given; kill -TERM $PPID 2>/dev/null || echo no signal;"
              " (echo x > /proc/$PPID/fd/1) 2>/dev/null || echo no descriptor;"
              " python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True);"
              " print(l.syscall(425, 8, ctypes.create_string_buffer(120)), ctypes.get_errno())'")
    report, _ = serve(binary, tmp_path, supervisor.Files({"given": b"x"}), ("sh", "-c", script), cap=1000)
    assert report.exit_code == 0, report
    assert report.stdout == b"65534\n65534\n65534\nno signal\nno descriptor\n-1 1\n", report.stdout


@pytest.mark.parametrize("path", ["/etc/x", "../x", "a/../../x", ".."])
def test_supervisor_refuses_paths_outside_its_folder(tmp_path: Path, path: str):
    binary = supervisor.build(tmp_path / "bin")
    request = supervisor.request(supervisor.Files({path: b"x"}), b"", ("true",), wall_ms=1000, output_cap=10, collect=False)
    done = subprocess.run([str(binary), str(tmp_path)], input=request, capture_output=True)
    assert done.returncode == 125 and b"outside the work folder" in done.stderr and not done.stdout


def test_build_output_is_reduced_to_plain_files():
    """A build's file list comes from a sandbox: '..' and absolute names never reach the next container."""
    from coderund.sandbox.runner import work_files

    FOLDER = supervisor.FOLDER
    listed = supervisor.Files(
        {"main": b"\x7fELF", "main.c": b"int main;", "pkg": FOLDER, "pkg/data": b"d", "../escape": b"x",
         "a/../../escape2": b"x", "/abs": b"x", ".": FOLDER},
        {"main": 0o755, "main.c": 0o644, "pkg": 0o700, "pkg/data": 0o600})
    files = work_files(listed, max_bytes=1 << 20)
    assert files.data == {"main": b"\x7fELF", "main.c": b"int main;", "pkg": FOLDER, "pkg/data": b"d"}
    assert files.modes == {"main": 0o755, "main.c": 0o644, "pkg": 0o755, "pkg/data": 0o644}
    with pytest.raises(Exception, match="more than"):
        work_files(listed, max_bytes=4)


class LiveSupervisor:
    """The supervisor on the host given a live request: its items read as they come, input sent as we go."""

    def __init__(self, binary: Path, folder: Path, request: bytes) -> None:
        self.process = subprocess.Popen([str(binary), str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.out = bytearray()
        self.send(request)

    def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def item(self, timeout: float = 10) -> bytes:
        """The next item; one that does not come within timeout (output the program kept) fails."""
        assert self.process.stdout is not None
        while (item := supervisor.take_item(self.out)) is None:
            ready, _, _ = select.select([self.process.stdout], [], [], timeout)
            assert ready, f"no item within {timeout} s; so far {bytes(self.out)!r}"
            self.out.extend(self.process.stdout.read1(4096))
        return item

    def until(self, end: bytes) -> dict[str, bytes]:
        """What each stream brought until stdout ends with end (a runtime may write a line in pieces)."""
        seen = {"stdout": b"", "stderr": b""}
        while not seen["stdout"].endswith(end):
            item = self.item()
            seen[supervisor.LIVE_STREAMS[item[0]]] += item[1:]
        return seen

    def report(self) -> supervisor.RunReport:
        assert self.item() == b""  # the end of the live items: the report follows
        assert self.process.stdout is not None
        self.out.extend(self.process.stdout.read())
        assert self.process.wait(10) == 0
        return supervisor.parse_report(bytes(self.out))[0]


def test_supervisor_live_feeds_stdin_as_it_comes_and_sends_output_as_it_is_written(tmp_path: Path):
    binary = supervisor.build(tmp_path / "bin")
    program = ("sh", "-c", 'echo ready; read a; echo "got $a"; echo oops >&2; cat')
    # The task's own stdin comes first, then what arrives live.
    request = supervisor.request(supervisor.Files(), b"fir", program, wall_ms=5000, output_cap=100, collect=False,
                                 live=True)
    run = LiveSupervisor(binary, tmp_path, request)
    assert run.item() == b"1ready\n"  # sent as written, while the program waits for the rest of its line
    run.send(supervisor.input_item(b"st\n"))
    assert run.item() == b"1got first\n" and run.item() == b"2oops\n"
    run.send(supervisor.input_item(b"more ") + supervisor.input_item(b"input\n") + supervisor.INPUT_END)
    assert run.item() == b"1more input\n"
    report = run.report()
    assert report.exit_code == 0 and report.stdout == b"ready\ngot first\nmore input\n" and report.stderr == b"oops\n"


TERMINAL_PROGRAM = """
import os, sys
print(os.isatty(0), os.isatty(1), os.isatty(2), os.getsid(0) == os.getpid(), os.tcgetpgrp(0) == os.getpgrp(),
      os.get_terminal_size(), os.environ.get('TERM'), os.access('/dev/stdin', os.R_OK | os.W_OK))
print('ready')  # not flushed: a terminal's stdout is line-buffered
print(repr(sys.stdin.buffer.readline()))
print('oops', file=sys.stderr)
print(len(sys.stdin.buffer.readline()))
print(repr(sys.stdin.buffer.read()), repr(sys.stdin.buffer.read()))
"""


def test_a_live_terminal_passes_bytes_as_they_are_and_ends_with_eof(tmp_path: Path):
    """With a terminal, stdin and stdout are a pseudo-terminal that the program's session controls,
    stderr a pipe, and the terminal is the program's own (it may reopen it) and shows text only (TERM
    is dumb): output comes as the runtime writes lines to a terminal, input is not echoed, and
    bytes pass untranslated both ways (carriage returns, ^C, DEL, ^U, ^S, NUL are data); a line longer
    than a terminal holds arrives whole; the end of input is an end of file, found again by a program
    that reads again."""
    binary = supervisor.build(tmp_path / "bin")
    request = supervisor.request(supervisor.Files(), b"", ("python3", "-c", TERMINAL_PROGRAM), wall_ms=10000,
                                 output_cap=1000, collect=False, live=True, terminal=True)
    run = LiveSupervisor(binary, tmp_path, request)
    shown = run.until(b"ready\n")["stdout"]
    assert shown == b"True True False True True os.terminal_size(columns=80, lines=24) dumb True\nready\n"
    typed = b"a\rb\x03c\x7f\x15\x13\x17\x00\n"
    run.send(supervisor.input_item(typed))
    answer = run.until(b"\n")
    run.send(supervisor.input_item(b"x" * 10000) + supervisor.input_item(b"\n"))
    length = run.until(b"\n")
    assert answer["stdout"] == repr(typed).encode() + b"\n" and length["stdout"] == b"10001\n"
    assert answer["stderr"] + length["stderr"] == b"oops\n"
    run.send(supervisor.input_item(b"more ") + supervisor.input_item(b"input") + supervisor.INPUT_END)
    assert run.until(b"\n")["stdout"] == b"b'more input' b''\n"
    report = run.report()
    assert report.exit_code == 0 and report.stderr == b"oops\n", report
    assert report.stdout == shown + repr(typed).encode() + b"\n10001\nb'more input' b''\n"


def test_take_item():
    buffer = bytearray(b"3:abc0:12:x")
    assert supervisor.take_item(buffer) == b"abc" and supervisor.take_item(buffer) == b""
    assert supervisor.take_item(buffer) is None and buffer == bytearray(b"12:x")  # not whole yet
    with pytest.raises(supervisor.SupervisorError):
        supervisor.take_item(bytearray(b"x:abc"))


def test_a_requests_rlimits_hold_for_the_program_alone(tmp_path: Path):
    """Jobe's limits: address space, file size and processes, set as the program; 0 leaves them."""
    binary = supervisor.build(tmp_path / "bin")
    show = ("python3", "-c", "import resource as r; print(*(r.getrlimit(x)[0] for x in (r.RLIMIT_AS, r.RLIMIT_FSIZE, r.RLIMIT_NPROC)))")
    limited, _ = serve(binary, tmp_path, supervisor.Files(), show, limits=supervisor.RunLimits(
        address_space=512 * 1024 * 1024, file_size=1024 * 1024, processes=21))
    assert limited.stdout == b"%d 1048576 21\n" % (512 * 1024 * 1024), limited.stderr
    malloc, _ = serve(binary, tmp_path, supervisor.Files(), ("python3", "-c", "b = bytearray(600 * 1024 * 1024)"),
                      limits=supervisor.RunLimits(address_space=512 * 1024 * 1024))
    assert malloc.exit_code == 1 and b"MemoryError" in malloc.stderr
    unlimited, _ = serve(binary, tmp_path, supervisor.Files(), show)
    assert unlimited.stdout.split()[0] == b"%d" % resource.RLIM_INFINITY


def test_a_multi_supervisor_takes_runs_sent_ahead_and_lays_the_folder_anew_for_each(tmp_path: Path):
    """Three runs in one write, as a lane sends the next case before the last report: three reports
    in order, and each run finds the work folder as the request laid it, whatever the last one left
    (here a folder it made unreadable)."""
    binary = supervisor.build(tmp_path / "bin")
    work = tmp_path / "box"
    work.mkdir()
    work.chmod(0o1777)
    script = b"ls; read n; echo $((n * n)); mkdir locked; touch locked/x left; chmod 000 locked"
    request = supervisor.request(supervisor.Files({"run.sh": script}, {"run.sh": 0o755}), b"2\n", ("sh", "run.sh"),
                                 wall_ms=5000, output_cap=1000, collect=False, multi=True)
    request += supervisor.next_run(b"3\n", ("sh", "run.sh")) + supervisor.next_run(b"4\n", ("sh", "run.sh"))
    out = subprocess.run([str(binary), str(work)], input=request, capture_output=True, check=True).stdout
    reports = []
    while out:
        size = supervisor.report_size(out[:out.index(b"\n") + 1])
        reports.append(supervisor.parse_report(out[:size])[0])
        out = out[size:]
    assert [r.stdout for r in reports] == [b"run.sh\n4\n", b"run.sh\n9\n", b"run.sh\n16\n"], reports


async def test_reports_that_arrive_in_one_frame_are_read_one_at_a_time():
    """The engine may pass on two reports in one frame once runs are sent ahead: each receive takes
    its own and leaves the next one's bytes for the next."""
    import asyncio

    from coderund.sandbox.box import FRAME, STDOUT, Box, Died

    def report(text: bytes) -> bytes:
        return (b"coderund-report exit=0 signal=0 wall_us=1 cpu_us=1 maxrss_kb=1 timed_out=0 output_over=0 oom=0"
                b" stdout=%d stderr=0 files=0\n%s" % (len(text), text))

    stream = report(b"first\n") + report(b"second\n")
    reader = asyncio.StreamReader()
    cut = len(stream) // 2 + 7  # the second frame starts inside the second report's header
    for piece in (stream[:cut], stream[cut:]):
        reader.feed_data(FRAME.pack(STDOUT, len(piece)) + piece)
    reader.feed_eof()
    box = Box("container", reader, None)  # receiving writes nothing
    assert (await box.receive(1 << 20))[0].stdout == b"first\n"
    assert (await box.receive(1 << 20))[0].stdout == b"second\n"
    with pytest.raises(Died):
        await box.receive(1 << 20)


def test_another_lane_of_cases_opens_only_when_it_pays():
    from coderund.sandbox.engine import START_S
    from coderund.sandbox.runner import WARM_LANE_S, pays

    assert pays(1, 62, 0.0015, WARM_LANE_S)  # 64 quick C cases: a warm sandbox's hand-off is worth it
    assert not pays(1, 62, 0.0015, START_S)  # a fresh one's start is not
    assert pays(1, 19, 0.010, START_S)  # 20 python cases of 10 ms: even a fresh one is
    assert not pays(1, 19, 0.010, 0.3)  # unless the engine's starts have been slow
    assert not pays(1, 1, 0.002, WARM_LANE_S)  # one quick case left: never
    assert not pays(2, 3, 0.005, WARM_LANE_S)  # what is left, shared by two lanes already


def test_our_engine_calls_go_where_the_sdks_do_and_never_over_tls():
    unix = http_of(docker.APIClient(base_url="unix:///run/x.sock", version="1.41"), 4)
    assert unix.socket_path == "/run/x.sock" and unix.base == "http://docker/v1.41"
    tcp = http_of(docker.APIClient(base_url="tcp://127.0.0.1:2375", version="1.41"), 4)
    assert tcp.socket_path is None and tcp.base == "http://127.0.0.1:2375/v1.41"
    with pytest.raises(docker.errors.DockerException, match="TLS"):
        http_of(docker.APIClient(base_url="https://127.0.0.1:2376", version="1.41"), 4)


def test_a_kernel_reads_shell_lines_only_where_python_cannot(capfd):
    """`!command` is IPython's; a line beginning with ! inside a string is the string's, kept as written."""
    namespace = {"__coderund_shell__": kernel.shell}
    text = 'text = """\n!not a command\n"""\ntext'
    assert kernel.execute(text, "<cell>", namespace) == "\n!not a command\n"
    assert kernel.execute("x = 1\n!echo shell line\nx + 1", "<cell>", namespace) == 2
    assert capfd.readouterr().out == "shell line\n"
