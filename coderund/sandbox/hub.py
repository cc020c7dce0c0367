"""coderund-hub: the first process of a stateful sandbox (in its language's image, from the tools volume).

Not imported by coderund: it runs inside the container, on the image's own python3.

Requests arrive on stdin as JSON lines {"id", "op", ...}; events leave on stdout as JSON lines
{"id", "type", ...}, the last one of a request of type "end". The hub runs as root with only the
capabilities to change identity and signal; everything a user's code touches runs as nobody: the
contexts (a persistent Python or JavaScript interpreter, or bash), commands, and file operations (the hub takes
nobody's effective identity for them). So the user's code can neither write the hub's stdout (the
channel to the worker) nor signal, ptrace or read the hub, and it sees what nobody may see in the
work folder only. A context's interpreter speaks to the hub over pipes of its own; what it says
there is its own run's result, which is the user's own code's to shape anyway.

Usage: hub.py WORK_FOLDER [NPROC]  (NPROC: nobody's process limit, where the runtime's kernel counts
only this sandbox's processes, as gVisor's does; 0 leaves it to the container's pids limit)
A Python context is kernel.py, a JavaScript one kernel.js (on the image's node), beside this file.
"""
import base64
import contextlib
import errno
import json
import os
import resource
import select
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time

UID = 65534  # nobody
HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL, KERNEL_JS = os.path.join(HERE, "kernel.py"), os.path.join(HERE, "kernel.js")  # Python's and JavaScript's contexts
CHUNK = 1 << 20  # bytes of a file per event
OUTPUT_CAP = 1 << 20  # of a run's stdout and of its stderr, each; past it the rest is read and dropped
EVENT_LINE_MAX = 64 << 20  # from a context: a longer line kills it (a figure's PNG is far smaller)
GRACE_S = 2  # between the interrupt at a run's timeout and the kill of its interpreter
SCRIPTS = "/tmp/.coderund-hub"  # bash runs' code, root's: nobody reads them, never changes them
LIST_MAX = 10000  # entries of one listing, however deep
STDIN_MAX = 1 << 20  # bytes sent to a command's stdin that it has not read yet
LISTENERS_MAX = 16  # clients attached to one command besides the one that started it


class Refused(Exception):
    """A request that cannot be done: its code and message go back in the end event."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def emit(event):
    write_all(1, (json.dumps(event, separators=(",", ":")) + "\n").encode())


def nonblocking(fd):
    os.set_blocking(fd, False)
    return fd


def read_ready(fd):
    """What the pipe holds now; b"" at its end, None when nothing is there yet."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None


# ---- files, as nobody, confined to the work folder ----

@contextlib.contextmanager
def as_nobody():
    os.setegid(UID)
    os.seteuid(UID)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def parts_of(path):
    parts = [p for p in str(path).split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused("bad_path", f"{path!r} leaves the work folder")
    return parts


def open_folder(work, parts, create=False):
    """The folder of these parts under the work folder, walked without following any symlink."""
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            inner = open_entry(fd, part, os.O_RDONLY | os.O_DIRECTORY)
            os.close(fd)
            fd = inner
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_entry(folder, name, flags, mode=0o644):
    """name in the folder, never through a symlink. O_NOFOLLOW alone is not enough: gVisor (20221219)
    follows a symlink named with O_DIRECTORY | O_NOFOLLOW. So the entry must be no symlink before the
    open, and the very inode it was after (a swap in between is refused)."""
    try:
        before = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        before = None  # only a create may name what is not there
    except OSError as e:
        raise path_error(e, name) from None
    if before is not None and stat.S_ISLNK(before.st_mode):
        raise path_error(OSError(errno.ELOOP, "symlink"), name)
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=folder)
    except OSError as e:
        raise path_error(e, name) from None
    try:
        after = os.fstat(fd)
        if before is not None and (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise Refused("bad_path", f"{name!r} changed while it was opened")
        return fd
    except BaseException:
        os.close(fd)
        raise


def path_error(e, name):
    if e.errno == errno.ENOENT:
        return Refused("not_found", f"{name!r} does not exist")
    if e.errno == errno.ELOOP:
        return Refused("bad_path", f"{name!r} is a symlink: symlinks are not followed")
    if e.errno == errno.ENOTDIR:
        return Refused("bad_path", f"{name!r} is not a folder")
    if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return Refused("disk_quota", "the sandbox's disk is full")
    if e.errno == errno.EISDIR:
        return Refused("is_folder", f"{name!r} is a folder")
    return Refused("file_error", f"{name!r}: {e.strerror}")


def kind_of(info):
    return ("folder" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode)
            else "symlink" if stat.S_ISLNK(info.st_mode) else "other")


def describe(name, path, info, folder):
    """An entry as stat() tells it; a symlink's target and what it is (a stat through it, as nobody:
    what any command could learn), never opened."""
    entry = {"name": name, "path": path, "kind": kind_of(info), "size": info.st_size, "mode": info.st_mode,
             "uid": info.st_uid, "gid": info.st_gid, "mtime": info.st_mtime, "target": None, "target_kind": None}
    if stat.S_ISLNK(info.st_mode) and folder is not None:
        with contextlib.suppress(OSError):
            entry["target"] = os.readlink(name, dir_fd=folder)
            entry["target_kind"] = kind_of(os.stat(name, dir_fd=folder))
    return entry


def entry_at(folder, name, path):
    return describe(name, "/".join(parts_of(path)), os.stat(name, dir_fd=folder, follow_symlinks=False), folder)


class Files:
    def __init__(self, work):
        self.work = work

    def write(self, path, data, append):
        *folders, name = parts_of(path) or [""]
        if not name:
            raise Refused("bad_path", "a file needs a name")
        with as_nobody():
            folder = open_folder(self.work, folders, create=True)
            try:
                fd = open_entry(folder, name, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC))
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                except OSError as e:
                    os.unlink(name, dir_fd=folder)  # never a half file
                    raise path_error(e, path) from None
                finally:
                    os.close(fd)
            finally:
                os.close(folder)

    def read(self, path):
        """The file's bytes, a chunk at a time."""
        *folders, name = parts_of(path) or [""]
        with as_nobody():
            folder = open_folder(self.work, folders)
            try:
                fd = open_entry(folder, name or ".", os.O_RDONLY)
            finally:
                os.close(folder)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Refused("is_folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "bad_path", f"{path!r} is not a file")
            while chunk := os.read(fd, CHUNK):
                yield chunk
        finally:
            os.close(fd)

    def list(self, path, depth=1, detail=False):
        """The folder's entries, and with depth > 1 those of its folders below (never through a
        symlink), at most LIST_MAX in all; with detail, each as stat() tells it."""
        with as_nobody():
            folder = open_folder(self.work, parts_of(path))
            try:
                entries = []
                self._walk(folder, "/".join(parts_of(path)), depth, detail, entries)
                return sorted(entries, key=lambda e: e["path" if detail else "name"])
            except OSError as e:  # an entry gone meanwhile, or no descriptor left: the listing is refused
                raise path_error(e, path) from None
            finally:
                os.close(folder)

    def _walk(self, folder, prefix, depth, detail, entries):
        with os.scandir(folder) as found:
            for entry in found:
                if len(entries) >= LIST_MAX:
                    return
                info = entry.stat(follow_symlinks=False)
                path = f"{prefix}/{entry.name}" if prefix else entry.name
                entries.append(describe(entry.name, path, info, folder) if detail else
                               {"name": entry.name, "kind": kind_of(info), "size": info.st_size if stat.S_ISREG(info.st_mode) else 0})
                if depth > 1 and stat.S_ISDIR(info.st_mode):
                    try:
                        inner = open_entry(folder, entry.name, os.O_RDONLY | os.O_DIRECTORY)
                    except Refused:
                        continue  # gone, or unreadable, meanwhile
                    try:
                        self._walk(inner, path, depth - 1, detail, entries)
                    finally:
                        os.close(inner)

    def stat(self, path):
        *folders, name = parts_of(path) or [""]
        with as_nobody():
            if not name:
                return describe("", "", os.stat(self.work), None)
            folder = open_folder(self.work, folders)
            try:
                return entry_at(folder, name, path)
            except OSError as e:
                raise path_error(e, path) from None
            finally:
                os.close(folder)

    def mkdir(self, path):
        """The folder and those above it; Refused("exists") if it is there already."""
        *folders, name = parts_of(path) or [""]
        if not name:
            raise Refused("exists", "the work folder exists")
        with as_nobody():
            folder = open_folder(self.work, folders, create=True)
            try:
                os.mkdir(name, 0o755, dir_fd=folder)
                return entry_at(folder, name, path)
            except FileExistsError:
                raise Refused("exists", f"{path!r} exists") from None
            except OSError as e:
                raise path_error(e, path) from None
            finally:
                os.close(folder)

    def move(self, source, destination):
        """Renames source (a symlink itself, never what it points at) to destination, whose folders
        are made as needed."""
        *from_folders, from_name = parts_of(source) or [""]
        *to_folders, to_name = parts_of(destination) or [""]
        if not from_name or not to_name:
            raise Refused("bad_path", "the work folder itself cannot be moved, nor replaced")
        with as_nobody():
            origin = open_folder(self.work, from_folders)
            try:
                target = open_folder(self.work, to_folders, create=True)
                try:
                    os.rename(from_name, to_name, src_dir_fd=origin, dst_dir_fd=target)
                    return entry_at(target, to_name, destination)
                except OSError as e:
                    raise path_error(e, source) from None
                finally:
                    os.close(target)
            finally:
                os.close(origin)

    def delete(self, path):
        *folders, name = parts_of(path) or [""]
        if not name:
            raise Refused("bad_path", "the work folder itself cannot be deleted")
        with as_nobody():
            folder = open_folder(self.work, folders)
            try:
                info = os.stat(name, dir_fd=folder, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(name, dir_fd=folder)
                else:
                    os.unlink(name, dir_fd=folder)
            except OSError as e:
                raise path_error(e, path) from None
            finally:
                os.close(folder)


# ---- processes run as nobody ----

def spawn(argv, env, cwd, stdin=subprocess.DEVNULL, pass_fds=()):
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        process = subprocess.Popen(argv, stdin=stdin, stdout=out_w, stderr=err_w, cwd=cwd, env=env, user=UID, group=UID,
                                   extra_groups=[], start_new_session=True, close_fds=True, pass_fds=pass_fds)
    finally:
        os.close(out_w)
        os.close(err_w)
    return process, nonblocking(out_r), nonblocking(err_r)


def kill_group(process):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


class Output:
    """A run's stdout and stderr pipes, handed on as events up to the cap."""

    def __init__(self, hub, out_fd, err_fd):
        self.hub = hub
        self.fds = {out_fd: "stdout", err_fd: "stderr"}
        self.request = None
        self.listeners = []  # other requests that hear it too: a command's clients that attached later
        self.sent = {"stdout": 0, "stderr": 0}
        self.truncated = False

    def start(self, request):
        self.request, self.sent, self.truncated = request, {"stdout": 0, "stderr": 0}, False

    def on_ready(self, fd):
        data = read_ready(fd)
        if data:
            self.forward(self.fds[fd], data)
        return data != b""

    def drain(self):
        """What the pipes hold now: everything written before the run said it ended."""
        for fd in self.fds:
            while (data := read_ready(fd)):
                self.forward(self.fds[fd], data)

    def forward(self, stream, data):
        if self.request is None:
            return  # a background process of the user's, between runs
        room = OUTPUT_CAP - self.sent[stream]
        if len(data) > room:
            data, self.truncated = data[:max(room, 0)], True
        if data:
            self.sent[stream] += len(data)
            text = data.decode(errors="replace")
            for request in (self.request, *self.listeners):
                emit({"id": request, "type": stream, "text": text})

    def close(self):
        for fd in self.fds:
            self.hub.unwatch(fd)
            os.close(fd)


class Context:
    """A persistent interpreter as a child process; one run at a time."""

    def __init__(self, hub, cid, language):
        self.hub, self.id, self.language = hub, cid, language
        self.count = 0  # runs so far: each run's execution_count
        self.request = None
        self.deadline = self.kill_at = None
        self.note = None  # why the run ended early, when it did
        self.process = None
        self.start()

    def start(self):
        raise NotImplementedError

    def run(self, request, code, timeout_s, env=None):
        if self.request is not None:
            raise Refused("busy", f"context {self.id!r} is running {self.request!r}: one run at a time")
        if self.process.poll() is not None:
            self.stop()
            self.start()
        self.count += 1
        self.request, self.note, self.timeout_s = request, None, timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.output.start(request)
        self.send(code, env or {})

    def interrupt(self, why):
        if self.request is None or self.kill_at is not None:
            return
        self.note = why
        self.kill_at = time.monotonic() + GRACE_S
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)

    def tick(self, now):
        if self.request is None:
            return
        if self.kill_at is not None and now >= self.kill_at:
            self.died(f"{self.note}; the interpreter did not stop at the interrupt and was restarted: its state is lost")
        elif self.deadline is not None and now >= self.deadline:
            self.interrupt(f"the run exceeded its timeout of {self.timeout_s:g} s")
        elif self.process.poll() is not None:
            code = self.process.returncode
            how = f"signal {-code}" if code < 0 else f"exit {code}"
            self.died(f"the interpreter ended ({how}: out of memory, killed or exited); a new one starts: its state is lost")

    def restart(self):
        """A fresh interpreter, its state and count gone; a run in it ends, saying so."""
        if self.request is not None:
            self.died("the context was restarted: its state is lost")
        else:
            self.stop()
            self.start()
        self.count = 0

    def died(self, why):
        request, self.note = self.request, None
        self.stop()
        self.start()
        self.finish(request, {"name": "SandboxInterrupted", "value": why, "traceback": ""})

    def finish(self, request, error, **extra):
        self.output.drain()
        truncated = self.output.truncated
        self.output.start(None)
        self.request = self.deadline = self.kill_at = None
        if self.note:  # the interrupt's own KeyboardInterrupt, or a run that ended as it came
            error = {"traceback": "", **(error or {}), "name": "KeyboardInterrupt", "value": self.note}
        emit({"id": request, "type": "end", "error": error, "execution_count": self.count, "truncated": truncated,
              "context": self.id, **extra})

    def on_lines(self, fd):
        """What the interpreter says on its own channel, a line at a time (on_line)."""
        data = read_ready(fd)
        if data is None:
            return True
        if not data:
            return False
        self.buffer += data
        if len(self.buffer) > EVENT_LINE_MAX:
            self.buffer.clear()
            kill_group(self.process)  # tick() restarts it and says so
            return False
        while (newline := self.buffer.find(b"\n")) >= 0:
            line = bytes(self.buffer[:newline])
            del self.buffer[:newline + 1]
            self.on_line(line)
        return True

    def stop(self):
        kill_group(self.process)
        self.process.wait()
        self.output.close()
        self.close_channel()


class KernelContext(Context):
    """A kernel process (kernel.py, kernel.js) that takes runs and tells results on pipes of its own."""

    env = {}

    def argv(self, requests_fd, events_fd):
        raise NotImplementedError

    def start(self):
        requests_r, self.requests = os.pipe()
        self.events, events_w = os.pipe()
        try:
            self.process, out_fd, err_fd = spawn(self.argv(requests_r, events_w), {**self.hub.env, **self.env},
                                                 self.hub.work, pass_fds=(requests_r, events_w))
        finally:
            os.close(requests_r)
            os.close(events_w)
        self.output = Output(self.hub, out_fd, err_fd)
        self.buffer = bytearray()
        nonblocking(self.events)
        for fd in (out_fd, err_fd):
            self.hub.watch(fd, self.output.on_ready)
        self.hub.watch(self.events, self.on_lines)

    def send(self, code, env):
        os.set_blocking(self.requests, True)
        write_all(self.requests, (json.dumps({"code": code, "count": self.count, "env": env}) + "\n").encode())

    def on_line(self, line):
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict) or self.request is None:
            return
        if event.get("type") == "result" and isinstance(event.get("data"), dict):
            self.output.drain()  # what was printed before the value comes first
            emit({"id": self.request, "type": "result", "data": event["data"], "main": event.get("main") is True})
        elif event.get("type") == "done":
            self.finish(self.request, event.get("error") if isinstance(event.get("error"), dict) else None)

    def close_channel(self):
        self.hub.unwatch(self.events)
        os.close(self.events)
        os.close(self.requests)


class PythonContext(KernelContext):
    env = {"MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}

    def argv(self, requests_fd, events_fd):
        return [sys.executable, KERNEL, str(requests_fd), str(events_fd)]


class JavaScriptContext(KernelContext):
    def start(self):
        if not shutil.which("node", path=self.hub.env.get("PATH")):
            raise Refused("bad_language", "this sandbox's image has no node: create the sandbox with "
                                          "\"language\": \"javascript\" for JavaScript contexts")
        super().start()

    def argv(self, requests_fd, events_fd):
        return ["node", KERNEL_JS, str(requests_fd), str(events_fd)]


class BashContext(Context):
    """A shell that sources each run's code with stdin from /dev/null, so cwd, variables and functions
    persist; its status comes back on a pipe of its own after a marker only the hub knows."""

    def start(self):
        commands_r, self.commands = os.pipe()
        self.status, status_w = os.pipe()
        try:
            self.process, out_fd, err_fd = spawn(["bash", "--noprofile", "--norc"], self.hub.env, self.hub.work,
                                                 stdin=commands_r, pass_fds=(status_w,))
        finally:
            os.close(commands_r)
        self.status_fd = status_w
        os.close(status_w)
        self.output = Output(self.hub, out_fd, err_fd)
        self.marker = os.urandom(8).hex()
        self.buffer = bytearray()
        nonblocking(self.status)
        for fd in (out_fd, err_fd):
            self.hub.watch(fd, self.output.on_ready)
        self.hub.watch(self.status, self.on_lines)
        self.script = None

    def send(self, code, env):
        self.script = f"{SCRIPTS}/{os.urandom(8).hex()}.sh"
        with open(self.script, "w") as f:
            f.write(code)
        os.chmod(self.script, 0o644)
        # Assignments before `source` hold for that run only: bash restores the variables after it.
        assignments = "".join(f"{name}={shlex.quote(value)} " for name, value in env.items())
        line = f'{assignments}source {self.script} </dev/null; printf "%d {self.marker}\\n" "$?" >&{self.status_fd}\n'
        os.write(self.commands, line.encode())

    def on_line(self, line):
        code, _, marker = line.decode(errors="replace").partition(" ")
        if marker == self.marker and self.request is not None and code.isdigit():
            self.forget_script()
            error = None if code == "0" else {"name": "ExitStatus", "value": f"exit status {code}", "traceback": ""}
            self.finish(self.request, error, exit_code=int(code))

    def forget_script(self):
        if self.script:
            with contextlib.suppress(OSError):
                os.unlink(self.script)
            self.script = None

    def close_channel(self):
        self.forget_script()
        self.hub.unwatch(self.status)
        os.close(self.status)
        os.close(self.commands)


CONTEXTS = {"python": PythonContext, "javascript": JavaScriptContext, "bash": BashContext}


class Command:
    """A program run beside the contexts, to its end or its timeout. Its stdin is what the request
    gave, or with open_stdin a pipe that takes input while it runs (send, close_stdin); with
    announce, its pid is the first event."""

    def __init__(self, hub, request, argv, cwd, env, stdin, timeout_s, open_stdin=False, tag=None, announce=False):
        self.hub, self.request, self.argv, self.cwd, self.env, self.tag = hub, request, argv, cwd, env, tag
        self.stdin, self.pending, self.closing = None, bytearray(), False
        if open_stdin:
            feed, self.stdin = os.pipe()
        else:
            feed = os.memfd_create("stdin")
            os.write(feed, stdin)
            os.lseek(feed, 0, os.SEEK_SET)
        try:
            try:
                self.process, out_fd, err_fd = spawn(argv, env, cwd, stdin=feed)
            except OSError as e:
                if self.stdin is not None:
                    os.close(self.stdin)
                raise Refused("bad_command", f"{argv[0]!r}: {e.strerror}") from None
        finally:
            os.close(feed)
        if self.stdin is not None:
            nonblocking(self.stdin)
        if announce:
            emit({"id": request, "type": "start", "pid": self.process.pid})
        self.output = Output(hub, out_fd, err_fd)
        self.output.start(request)
        self.open = 2
        for fd in (out_fd, err_fd):
            hub.watch(fd, self.on_output)
        self.deadline = time.monotonic() + timeout_s
        self.timed_out = False

    def send(self, data):
        """Input for its stdin, written as the command reads it: never blocks the hub."""
        if self.stdin is None or self.closing:
            raise Refused("no_stdin", f"process {self.process.pid} takes no input (start it with stdin, and before closing it)")
        if len(self.pending) + len(data) > STDIN_MAX:
            raise Refused("busy", f"process {self.process.pid} has not read the last {len(self.pending)} bytes sent to it")
        self.pending += data
        self.flush()

    def close_stdin(self):
        if self.stdin is None:
            raise Refused("no_stdin", f"process {self.process.pid} has no open stdin")
        self.closing = True
        self.flush()

    def flush(self):
        if self.stdin is None:
            return
        try:
            while self.pending:
                del self.pending[:os.write(self.stdin, self.pending)]
        except BlockingIOError:
            return
        except OSError:  # it closed its stdin, or ended: what it did not read is dropped
            self.pending.clear()
            self.closing = True
        if self.closing and not self.pending:
            os.close(self.stdin)
            self.stdin = None

    def signal(self, number):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, number)

    def describe(self):
        return {"pid": self.process.pid, "cmd": self.argv, "cwd": self.cwd, "tag": self.tag,
                "env": {key: value for key, value in self.env.items() if key not in self.hub.env}}

    def on_output(self, fd):
        if self.output.on_ready(fd):
            return True
        self.open -= 1
        return False

    def tick(self, now):
        self.flush()
        if now >= self.deadline and not self.timed_out:
            self.timed_out = True
            kill_group(self.process)
        if self.open == 0 or self.timed_out:
            if self.process.poll() is None:
                return False
            kill_group(self.process)  # whatever it left in the background goes with it
            self.output.drain()
            self.output.close()
            self.pending.clear()
            self.closing = True
            self.flush()
            code = self.process.returncode
            for request in (self.request, *self.output.listeners):
                emit({"id": request, "type": "end", "exit_code": code if code >= 0 else None, "signal": -code if code < 0 else None,
                      "timed_out": self.timed_out, "truncated": self.output.truncated})
            return True
        return False


class Hub:
    def __init__(self, work):
        self.work = work
        self.files = Files(work)
        self.env = {key: value for key, value in os.environ.items() if key not in ("HOSTNAME",)}
        self.readers = {}  # fd -> callback(fd) -> False once the fd is done
        self.contexts = {}
        self.commands = []
        self.contexts["python"] = PythonContext(self, "python", "python")  # ready before the first run

    def watch(self, fd, callback):
        self.readers[fd] = callback

    def unwatch(self, fd):
        self.readers.pop(fd, None)

    def serve(self):
        buffer = bytearray()
        self.watch(0, lambda fd: self.on_requests(fd, buffer))
        while 0 in self.readers:
            ready, _, _ = select.select(list(self.readers), [], [], 0.05)
            for fd in ready:
                callback = self.readers.get(fd)
                if callback and not callback(fd):
                    self.unwatch(fd)
            now = time.monotonic()
            for context in list(self.contexts.values()):
                context.tick(now)
            self.commands = [c for c in self.commands if not c.tick(now)]
            self.reap()

    def reap(self):
        """As the first process, the hub inherits every orphan: it reaps those that are not its own."""
        own = {context.process.pid for context in self.contexts.values()} | {c.process.pid for c in self.commands}
        while True:
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if found is None:
                return
            if found.si_pid in own:
                for context in self.contexts.values():
                    context.process.poll()
                for command in self.commands:
                    command.process.poll()
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(found.si_pid, 0)

    def on_requests(self, fd, buffer):
        data = os.read(fd, 1 << 20)
        if not data:
            return False
        buffer += data
        while (newline := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:newline])
            del buffer[:newline + 1]
            request = json.loads(line)
            try:
                self.handle(request)
            except Refused as e:
                emit({"id": request.get("id"), "type": "end", "error": {"code": e.code, "message": str(e)}})
        return True

    def handle(self, request):
        rid, op = request.get("id"), request.get("op")
        if op == "ping":  # the worker's first word: it is attached, so the answer cannot be lost
            emit({"id": rid, "type": "end"})
        elif op == "run":
            # A language's own context ("python", "bash") starts at its first run; others are made first.
            cid = request.get("context") or request.get("language") or "python"
            if cid not in self.contexts and cid in CONTEXTS:
                self.contexts[cid] = CONTEXTS[cid](self, cid, cid)
            context = self.contexts.get(cid)
            if context is None:
                raise Refused("no_context", f"no context {cid!r}")
            if request.get("language") and request["language"] != context.language:
                raise Refused("bad_language", f"context {cid!r} runs {context.language}, not {request['language']}")
            context.run(rid, str(request.get("code", "")), float(request.get("timeout_s") or 30), request.get("env"))
        elif op == "interrupt":
            for context in self.contexts.values():
                if context.request == request.get("target"):
                    context.interrupt("the run was interrupted: its client went away")
            emit({"id": rid, "type": "end"})
        elif op == "command":
            cwd = self.folder_path(request.get("cwd") or ".")
            self.commands.append(Command(self, rid, [str(a) for a in request["cmd"]], cwd,
                                         {**self.env, **request.get("env", {})}, request.get("stdin", "").encode(),
                                         float(request.get("timeout_s") or 60), bool(request.get("open_stdin")),
                                         request.get("tag"), bool(request.get("announce"))))
        elif op == "attach":  # another client of a running command: its pid, then its output from now on, its end
            command = self.command(request)
            if len(command.output.listeners) >= LISTENERS_MAX:
                raise Refused("busy", f"process {command.process.pid} has {LISTENERS_MAX} clients attached already")
            emit({"id": rid, "type": "start", "pid": command.process.pid})
            command.output.listeners.append(rid)
        elif op == "commands":
            emit({"id": rid, "type": "end", "commands": [c.describe() for c in self.commands]})
        elif op in ("input", "close_stdin", "signal"):
            command = self.command(request)
            if op == "input":
                command.send(base64.b64decode(request.get("data", "")))
            elif op == "close_stdin":
                command.close_stdin()
            else:
                command.signal(signal.SIGTERM if request.get("signal") == signal.SIGTERM else signal.SIGKILL)
            emit({"id": rid, "type": "end"})
        elif op == "stat":
            emit({"id": rid, "type": "end", "entry": self.files.stat(request.get("path") or ".")})
        elif op == "mkdir":
            emit({"id": rid, "type": "end", "entry": self.files.mkdir(request.get("path") or ".")})
        elif op == "move":
            emit({"id": rid, "type": "end", "entry": self.files.move(request.get("source") or "", request.get("destination") or "")})
        elif op == "write":
            self.files.write(request["path"], base64.b64decode(request["data"]), bool(request.get("append")))
            emit({"id": rid, "type": "end"})
        elif op == "read":
            size = 0
            for chunk in self.files.read(request["path"]):
                size += len(chunk)
                emit({"id": rid, "type": "chunk", "data": base64.b64encode(chunk).decode()})
            emit({"id": rid, "type": "end", "size": size})
        elif op == "list":
            depth = max(1, min(int(request.get("depth") or 1), 16))  # a folder held open at each level
            emit({"id": rid, "type": "end", "entries": self.files.list(request.get("path") or ".", depth,
                                                                      bool(request.get("detail")))})
        elif op == "delete":
            self.files.delete(request["path"])
            emit({"id": rid, "type": "end"})
        elif op == "context_create":
            language = request.get("language") or "python"
            if language not in CONTEXTS:
                raise Refused("bad_language", f"contexts are {', '.join(CONTEXTS)}, not {language!r}")
            cid = os.urandom(6).hex()
            self.contexts[cid] = CONTEXTS[language](self, cid, language)
            emit({"id": rid, "type": "end", "context": {"id": cid, "language": language}})
        elif op == "context_list":
            emit({"id": rid, "type": "end", "contexts": [{"id": c.id, "language": c.language, "execution_count": c.count,
                                                           "busy": c.request is not None} for c in self.contexts.values()]})
        elif op in ("context_delete", "context_restart"):
            cid = request.get("context")
            if cid not in self.contexts:
                raise Refused("no_context", f"no context {cid!r}")
            if op == "context_delete":
                self.contexts.pop(cid).stop()
            else:
                self.contexts[cid].restart()
            emit({"id": rid, "type": "end"})
        else:
            raise Refused("bad_op", f"no operation {op!r}")

    def command(self, request):
        """The running command a request names by its pid or its tag."""
        for command in self.commands:
            if command.process.returncode is None and (command.process.pid == request.get("pid")
                                                       or (request.get("tag") and command.tag == request.get("tag"))):
                return command
        raise Refused("not_found", f"no running process {request.get('pid') or request.get('tag')!r}")

    def folder_path(self, path):
        """A command's working folder: a real folder inside the work folder."""
        with as_nobody():
            os.close(open_folder(self.work, parts_of(path)))
        return os.path.join(self.work, *parts_of(path))


def serve(work, nproc):
    os.setgroups([])
    if nproc:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    os.makedirs(SCRIPTS, mode=0o711, exist_ok=True)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    Hub(work).serve()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
