"""The in-container supervisor (supervise.c): building it, the request it waits for, the report it sends.

Both directions are made of items, each b"<length>:<bytes>", so that any bytes (code, stdin,
binaries) pass unescaped and either side knows when a message is complete.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..domain import RunReport

SOURCE = Path(__file__).with_name("supervise.c")
REQUEST_TAG = b"coderund-5"
REPORT_TAG = b"coderund-report"
FOLDER = None  # the content of a folder in a file map


class SupervisorError(Exception):
    pass


class Incomplete(SupervisorError):
    """More bytes are needed before the report can be read."""


@dataclass(frozen=True)
class Files:
    """Paths relative to the work folder, each mapped to its bytes (FOLDER for a folder) and a mode."""

    data: dict[str, bytes | None] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)

    def mode(self, path: str) -> int:
        kind = stat.S_IFDIR if self.data[path] is FOLDER else stat.S_IFREG
        return kind | self.modes.get(path, 0o755 if kind == stat.S_IFDIR else 0o644)


def build(cache_dir: Path) -> Path:
    """A static binary runs in any image; it is built once per source version and kept."""
    target = cache_dir / f"supervise-{digest()}"
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


def digest() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def _item(data: bytes) -> bytes:
    return b"%d:%s" % (len(data), data)


@dataclass(frozen=True)
class RunLimits:
    """Limits of the program's own process (setrlimit), beyond the container's; 0 leaves the container's."""

    address_space: int = 0  # bytes
    file_size: int = 0  # bytes
    processes: int = 0  # of the program's identity: under gVisor, the sandbox's own kernel counts them


NO_LIMITS = RunLimits()


def request(files: Files, stdin: bytes, program: tuple[str, ...], *, wall_ms: int, output_cap: int, collect: bool,
            live: bool = False, terminal: bool = False, multi: bool = False, limits: RunLimits = NO_LIMITS) -> bytes:
    """The message a waiting supervisor takes: files for the work folder, and its first run. With
    multi, more runs may follow (next_run), each in the work folder as these files lay it. A live run
    with terminal has a pseudo-terminal for its stdin and stdout."""
    parts = [REQUEST_TAG, b"%d" % wall_ms, b"%d" % output_cap, b"1" if collect else b"0", b"1" if live else b"0",
             b"1" if live and terminal else b"0", b"1" if multi else b"0", b"%d" % limits.address_space, b"%d" % limits.file_size, b"%d" % limits.processes,
             b"%d" % len(files.data)]
    for path, content in files.data.items():
        parts += [path.encode(), b"%d" % files.mode(path), content or b""]
    return b"".join(_item(part) for part in parts) + next_run(stdin, program)


def next_run(stdin: bytes, program: tuple[str, ...]) -> bytes:
    """Another run for a multi supervisor: its stdin and program."""
    return b"".join(_item(part) for part in [stdin, b"%d" % len(program), *(arg.encode() for arg in program)])


def input_item(data: bytes) -> bytes:
    """More live stdin for the program."""
    return _item(data)


INPUT_END = _item(b"")  # the program's live stdin ends
LIVE_STREAMS = {ord("1"): "stdout", ord("2"): "stderr"}  # the first byte of a live output item


def take_item(buffer: bytearray) -> bytes | None:
    """Removes the first whole item from buffer and returns it; None while it is not whole."""
    bounds = _bounds(buffer, 0)
    if bounds is None:
        return None
    item = bytes(buffer[bounds[0]:bounds[1]])
    del buffer[:bounds[1]]
    return item


def _bounds(data: bytes | bytearray, at: int) -> tuple[int, int] | None:
    """Where the data of the item at offset at starts and ends; None if data ends too soon."""
    colon = data.find(b":", at, at + 12)
    if colon < 0:
        if len(data) - at >= 12:
            raise SupervisorError(f"not an item length: {bytes(data[at:at + 12])!r}")
        return None
    try:
        end = colon + 1 + int(data[at:colon])
    except ValueError:
        raise SupervisorError(f"not an item length: {bytes(data[at:colon])!r}") from None
    return (colon + 1, end) if end <= len(data) else None


def _items(data: bytes, at: int) -> Iterator[bytes]:
    """Items from offset at; Incomplete where the data ends too soon."""
    while (bounds := _bounds(data, at)) is not None:
        yield data[bounds[0]:bounds[1]]
        at = bounds[1]
    raise Incomplete("an item")


def report_size(data: bytes) -> int | None:
    """How long the whole report in data is, once its header has arrived, if the header says so
    (a report with files is read to its end)."""
    header, newline, _ = data.partition(b"\n")
    if not newline:
        return None
    values = _header(header)
    return None if values["files"] else len(header) + 1 + values["stdout"] + values["stderr"]


HEADER_KEYS = {"exit", "signal", "wall_us", "cpu_us", "maxrss_kb", "timed_out", "output_over", "oom", "stdout", "stderr",
               "files"}


def _header(header: bytes) -> dict[str, int]:
    fields = header.split()
    if not fields or fields[0] != REPORT_TAG:
        raise SupervisorError(f"no report from the supervisor: {header[:200]!r}")
    try:
        values = {key.decode(): int(value) for key, _, value in (entry.partition(b"=") for entry in fields[1:])}
    except ValueError:
        raise SupervisorError(f"a malformed report header: {header[:200]!r}") from None
    if not HEADER_KEYS <= values.keys():
        raise SupervisorError(f"a report header without {sorted(HEADER_KEYS - values.keys())}")
    return values


def parse_report(data: bytes) -> tuple[RunReport, Files | None]:
    """The report, and with it the work folder when the request asked for it."""
    header, newline, rest = data.partition(b"\n")
    if not newline:
        raise SupervisorError(f"no report from the supervisor: {data[:200]!r}")
    values = _header(header)
    out_len, err_len = values["stdout"], values["stderr"]
    output_end = len(header) + 1 + out_len + err_len
    if len(data) < output_end or (len(data) > output_end and not values["files"]):
        raise SupervisorError(f"report announces {out_len + err_len} output bytes, carries {len(rest)}")
    report = RunReport(
        exit_code=values["exit"] if values["exit"] >= 0 else None,
        signal=values["signal"] or None,
        wall_ms=values["wall_us"] // 1000,
        cpu_ms=values["cpu_us"] // 1000,
        memory_kb=values["maxrss_kb"],
        timed_out=bool(values["timed_out"]),
        output_over=bool(values["output_over"]),
        oom=None if values["oom"] < 0 else bool(values["oom"]),
        stdout=rest[:out_len],
        stderr=rest[out_len:out_len + err_len],
    )
    try:
        return report, _files(data, output_end) if values["files"] else None
    except ValueError:
        raise SupervisorError("a malformed file list in the report") from None


def _files(data: bytes, at: int) -> Files:
    """The work folder as the supervisor listed it. Its names come from inside a sandbox: the caller
    still reduces them to safe ones (runner.work_files)."""
    files = Files()
    items = _items(data, at)
    while path := next(items):
        mode, content = int(next(items)), next(items)
        name = path.decode(errors="replace")
        files.data[name] = FOLDER if stat.S_ISDIR(mode) else content
        files.modes[name] = mode & 0o777
    return files
