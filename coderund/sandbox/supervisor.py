"""The in-container supervisor (supervise.c): building it, calling it, reading its report."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from ..domain import RunReport

SOURCE = Path(__file__).with_name("supervise.c")
REPORT_TAG = b"coderund-report"


class SupervisorError(Exception):
    pass


def build(cache_dir: Path) -> Path:
    """A static binary runs in any image; it is built once per source version and kept."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    target = cache_dir / f"supervise-{digest}"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SupervisorError("a C compiler is needed once to build the sandbox supervisor (apt-get install gcc libc6-dev)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}")
    done = subprocess.run([compiler, "-static", "-O2", "-s", "-o", str(partial), str(SOURCE)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SupervisorError(f"building the supervisor failed: {done.stderr.strip()[-500:]}")
    partial.rename(target)  # atomic, so workers starting together never run half a file
    return target


def command(path: str, wall_ms: int, output_cap: int, stdin_path: str | None, program: tuple[str, ...]) -> list[str]:
    return [path, str(wall_ms), str(output_cap), stdin_path or "-", "--", *program]


def parse_report(data: bytes) -> RunReport:
    header, newline, rest = data.partition(b"\n")
    fields = header.split()
    if not newline or not fields or fields[0] != REPORT_TAG:
        raise SupervisorError(f"no report from the supervisor: {data[:200]!r}")
    values = {}
    for item in fields[1:]:
        key, _, value = item.partition(b"=")
        values[key.decode()] = int(value)
    out_len, err_len = values["stdout"], values["stderr"]
    if len(rest) != out_len + err_len:
        raise SupervisorError(f"report announces {out_len + err_len} output bytes, carries {len(rest)}")
    return RunReport(
        exit_code=values["exit"] if values["exit"] >= 0 else None,
        signal=values["signal"] or None,
        wall_ms=values["wall_us"] // 1000,
        cpu_ms=values["cpu_us"] // 1000,
        memory_kb=values["maxrss_kb"],
        timed_out=bool(values["timed_out"]),
        output_over=bool(values["output_over"]),
        oom=None if values["oom"] < 0 else bool(values["oom"]),
        stdout=rest[:out_len],
        stderr=rest[out_len:],
    )
