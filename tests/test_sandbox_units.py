"""Pure parts of the sandbox: container options and the supervisor's report."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from coderund.sandbox import supervisor
from coderund.sandbox.options import Isolation, container_options


def test_container_options_lock_the_container_down():
    options = container_options(image="img", name="coderund-task-x", memory_mb=128, isolation=Isolation(runtime="runsc"),
                                env={"GOCACHE": "/tmp/c"}, labels={"coderund.task": "x"})
    assert options["network_mode"] == "none" and options["read_only"] is True
    assert options["cap_drop"] == ["ALL"] and options["security_opt"] == ["no-new-privileges"]
    assert options["user"] == "65534:65534" and options["pids_limit"] == 128
    assert options["mem_limit"] == options["memswap_limit"] == 128 * 1024 * 1024
    assert options["nano_cpus"] == 10**9 and options["runtime"] == "runsc"
    assert options["environment"]["GOCACHE"] == "/tmp/c" and "PATH" in options["environment"]
    assert options["labels"] == {"coderund": "1", "coderund.task": "x"}
    assert {u["Name"] for u in options["ulimits"]} == {"nofile", "fsize", "core"}
    assert all("size=" in spec for spec in options["tmpfs"].values())
    assert "binds" not in options and "volumes" not in options and "privileged" not in options


def test_parse_report():
    data = b"coderund-report exit=3 signal=0 wall_us=1500 cpu_us=900 maxrss_kb=42 timed_out=0 output_over=0 oom=-1 stdout=2 stderr=3\nhierr"
    report = supervisor.parse_report(data)
    assert (report.exit_code, report.signal, report.wall_ms, report.cpu_ms, report.memory_kb) == (3, None, 1, 0, 42)
    assert report.oom is None and report.stdout == b"hi" and report.stderr == b"err"
    with pytest.raises(supervisor.SupervisorError):
        supervisor.parse_report(data[:-1])
    with pytest.raises(supervisor.SupervisorError):
        supervisor.parse_report(b"garbage")


def test_supervisor_caps_output_and_time_on_the_host(tmp_path: Path):
    binary = supervisor.build(tmp_path)
    assert supervisor.build(tmp_path) == binary  # built once per source version

    def run(wall_ms: int, cap: int, *program: str) -> supervisor.RunReport:
        command = supervisor.command(str(binary), wall_ms, cap, None, program)
        return supervisor.parse_report(subprocess.run(command, capture_output=True, check=True).stdout)

    flood = run(5000, 100, "sh", "-c", "yes")
    assert flood.output_over and flood.signal == 9 and flood.stdout == b"y\n" * 50
    slow = run(300, 100, "sleep", "5")
    assert slow.timed_out and 300 <= slow.wall_ms < 1500
    # A background child holding the pipe open does not keep the report waiting.
    detached = run(3000, 100, "sh", "-c", "sleep 10 & echo parent done")
    assert detached.exit_code == 0 and detached.stdout == b"parent done\n" and detached.wall_ms < 2000


def test_build_output_is_reduced_to_plain_files():
    """A build's archive comes from a sandbox: links, devices and '..' never reach the next container."""
    import io
    import tarfile

    from coderund.sandbox.runner import FOLDER, _work_files

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def add(name, data=b"", **kw):
            info = tarfile.TarInfo(name)
            for key, value in kw.items():
                setattr(info, key, value)
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
        add(".", type=tarfile.DIRTYPE)
        add("./main", b"\x7fELF", mode=0o755)
        add("./main.c", b"int main;", mode=0o644)
        add("./pkg", type=tarfile.DIRTYPE)
        add("./pkg/data", b"d", mode=0o600)
        add("./shadow", type=tarfile.SYMTYPE, linkname="/etc/shadow")
        add("./hard", type=tarfile.LNKTYPE, linkname="/etc/passwd")
        add("./dev", type=tarfile.CHRTYPE)
        add("../escape", b"x")
        add("./a/../../escape2", b"x")
        add("/abs", b"x")
    files, modes = _work_files(buffer.getvalue(), max_bytes=1 << 20)
    assert files == {"/box/main": b"\x7fELF", "/box/main.c": b"int main;", "/box/pkg": FOLDER, "/box/pkg/data": b"d"}
    assert modes["/box/main"] == 0o755 and modes["/box/main.c"] == 0o644 and modes["/box/pkg/data"] == 0o644
    with pytest.raises(Exception, match="more than"):
        _work_files(buffer.getvalue(), max_bytes=4)
