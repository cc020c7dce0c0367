"""coderund-hub: the first process of a stateful sandbox (in its language's image, from the tools volume).

Not imported by coderund: it runs inside the container, on the image's own python3.

Requests arrive on stdin as JSON lines {"id", "op", ...}; events leave on stdout as JSON lines
{"id", "type", ...}, the last one of a request of type "end". The hub runs as root with only the
capabilities to change identity and signal; everything a user's code touches runs as nobody: the
contexts (a persistent Python or JavaScript interpreter, or bash), commands, and file operations (the hub takes
nobody's effective identity for them). So the user's code can neither write the hub's stdout (the
channel to the worker) nor signal, ptrace or read the hub (it is not dumpable, and its environment
is empty: what its children get arrives in a memfd), and it sees what nobody may see in the work
folder only. A context's interpreter speaks to the hub over pipes of its own; what it says there is
its own run's result, which is the user's own code's to shape anyway.

The hub never waits on what a user's code controls: it writes to its children without blocking,
opens files without blocking (and only regular files and folders), reads their lines up to a
bound, and checks every run's and command's time at each turn of its loop. What a request cannot
do is refused in its end event; no request ends the hub.

Usage: hub.py WORK_FOLDER CAPS [ENV_FD]
CAPS is a JSON object: nproc (nobody's process limit, where the runtime's kernel counts only this
sandbox's processes, as gVisor's does; 0 leaves it to the container's pids limit), output_bytes,
results, result_bytes, contexts, commands, entries, chunk, depth (a listing's), stdin_bytes (sent to a
running command and not read yet), attached (a command's clients besides its own); see
coderund/sandbox_requests.py. The hub starts itself again with an empty environment, the old one in
the memfd ENV_FD.
A Python context is kernel.py, a JavaScript one kernel.js (on the image's node), beside this file; a
TypeScript one is kernel.js too, compiling each run with the image's TypeScript.
"""
import base64
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import resource
import select
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import termios
import time

UID = 65534  # nobody
HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL, KERNEL_JS = os.path.join(HERE, "kernel.py"), os.path.join(HERE, "kernel.js")  # Python's and JavaScript's contexts
ERROR_SLACK = 1 << 20  # a context's line beside the results' cap: a run's error (the kernels cut theirs far shorter)
ERROR_CHARS = 65536  # of an error's value and of its traceback, as sent on
STATUS_LINE_MAX = 256  # a bash context's status line
DRAIN_MAX = 1 << 20  # read at a run's end: what its pipes held then (a pipe holds 64 KiB), not a writer's flood after
RESULT_DEPTH = 64  # of a result's JSON
MAX_SECONDS = 1e6  # a run's or command's timeout
GRACE_S = 2  # between the interrupt at a run's timeout and the kill of its interpreter
SCRIPTS = "/tmp/.coderund-hub"  # bash runs' code, root's: nobody reads them, never changes them
PR_SET_DUMPABLE = 4
METADATA_PREFIX = "user.e2b."  # a file's metadata, as extended attributes: they go with it when it is renamed


class Refused(Exception):
    """A request that cannot be done: its code and message go back in the end event."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def encoded(event):
    return (json.dumps(event, separators=(",", ":")) + "\n").encode()


def emit(event):
    write_all(1, encoded(event))


def nonblocking(fd):
    os.set_blocking(fd, False)
    return fd


def read_ready(fd):
    """What the pipe (or a terminal's master side) holds now; b"" at its end, None when nothing is
    there yet. A terminal whose other side is closed by all reads EIO: its end."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno == errno.EIO:
            return b""
        raise


# ---- a request's fields ----

def text(request, name, default=None):
    value = request.get(name, default)
    if not isinstance(value, str):
        raise Refused("bad_request", f"{name!r} must be a string")
    return value


def optional_text(request, name):
    return None if request.get(name) is None else text(request, name)


def seconds(request, name, default):
    value = request.get(name)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_SECONDS:
        raise Refused("bad_request", f"{name!r} must be a number of seconds from 0 to {MAX_SECONDS:g}")
    return float(value)


def strings(request, name):
    value = request.get(name, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise Refused("bad_request", f"{name!r} must be an object of strings")
    return value


def variables(request, name):
    """Environment variables: names a shell can assign, values with no NUL."""
    value = strings(request, name)
    if not all(k.isascii() and k.isidentifier() and "\0" not in v and encodable(v)
               for k, v in value.items()):
        raise Refused("bad_request", f"{name!r} must have names of letters, digits and _, and values of text with no NUL")
    return value


def terminal_size(request):
    """A terminal's (cols, rows), each from 1 to 65535 (a winsize's)."""
    size = request.get("terminal")
    if not isinstance(size, dict):
        raise Refused("bad_request", "'terminal' must be an object of cols and rows")
    return whole(size, "cols", 80, 65535) or 1, whole(size, "rows", 24, 65535) or 1


def encodable(value):
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def whole(request, name, default, most):
    value = request.get(name)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise Refused("bad_request", f"{name!r} must be a whole number from 0 to {most}")
    return value


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
    if "\0" in str(path):
        raise Refused("bad_path", "a path has no NUL")
    return parts


def open_folder(work, parts, create=False):
    """The folder of these parts under the work folder, walked without following any symlink."""
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as e:
                    raise path_error(e, part) from None
            inner = open_entry(fd, part, os.O_RDONLY | os.O_DIRECTORY)
            os.close(fd)
            fd = inner
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_entry(folder, name, flags, mode=0o644):
    """name in the folder, never through a symlink, and only a regular file or a folder, opened
    without blocking (a FIFO would wait for its other end). O_NOFOLLOW alone is not enough: gVisor
    (20221219) follows a symlink named with O_DIRECTORY | O_NOFOLLOW. So the entry must be there and
    no symlink before the open (only a create may name what is not there, and a create is never
    O_DIRECTORY), and be the very inode it was after (a swap in between is refused)."""
    try:
        before = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise path_error(OSError(errno.ENOENT, "missing"), name) from None
        before = None
    except OSError as e:
        raise path_error(e, name) from None
    if before is not None:
        plain(before, name)
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=folder)
    except OSError as e:
        raise path_error(e, name) from None
    try:
        after = os.fstat(fd)
        if before is not None and (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise Refused("bad_path", f"{name!r} changed while it was opened")
        plain(after, name)
        return fd
    except BaseException:
        os.close(fd)
        raise


def plain(info, name):
    if stat.S_ISLNK(info.st_mode):
        raise path_error(OSError(errno.ELOOP, "symlink"), name)
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise Refused("bad_path", f"{name!r} is not a regular file or folder")


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


def describe(name, path, info, folder, caps=None):
    """An entry as stat() tells it; a symlink's target and what it is (a stat through it, as nobody:
    what any command could learn), never opened. With caps, a file's or folder's metadata too."""
    entry = {"name": name, "path": path, "kind": kind_of(info), "size": info.st_size, "mode": info.st_mode,
             "uid": info.st_uid, "gid": info.st_gid, "mtime": info.st_mtime, "target": None, "target_kind": None}
    if stat.S_ISLNK(info.st_mode) and folder is not None:
        with contextlib.suppress(OSError):
            entry["target"] = os.readlink(name, dir_fd=folder)
            entry["target_kind"] = kind_of(os.stat(name, dir_fd=folder))
    elif caps is not None and folder is not None:
        with contextlib.suppress(Refused, OSError):
            fd = open_entry(folder, name, os.O_RDONLY)
            try:
                entry["metadata"] = metadata_of(fd, caps)
            finally:
                os.close(fd)
    return entry


def metadata_of(fd, caps):
    """The file's user metadata: its user.e2b.* extended attributes (as E2B's envd keeps them), the
    first caps["metadata"] of them, each value at most caps["metadata_value"] bytes (a longer one,
    set by a command, is left out)."""
    found = {}
    for attribute in sorted(os.listxattr(fd)):
        if not attribute.startswith(METADATA_PREFIX) or len(found) == caps["metadata"]:
            continue
        with contextlib.suppress(OSError):  # removed meanwhile, or too long for the buffer
            value = os.getxattr(fd, attribute)
            if len(value) <= caps["metadata_value"]:
                found[attribute[len(METADATA_PREFIX):]] = value.decode(errors="replace")
    return found


def set_metadata(fd, metadata):
    """Replaces the file's user metadata by these keys and values (checked by the caller)."""
    for attribute in os.listxattr(fd):
        if attribute.startswith(METADATA_PREFIX):
            os.removexattr(fd, attribute)
    for key, value in metadata.items():
        os.setxattr(fd, METADATA_PREFIX + key, value.encode())


def entry_at(folder, name, path, caps):
    return describe(name, "/".join(parts_of(path)), os.stat(name, dir_fd=folder, follow_symlinks=False), folder, caps)


class Files:
    def __init__(self, work, caps):
        self.work = work
        self.caps = caps
        self.entries = caps["entries"]  # most entries a listing holds
        self.chunk = caps["chunk"]  # most bytes a read brings

    def write(self, path, data, append, metadata=None):
        """With metadata (a new file's, or {}), the file's metadata is replaced, as an upload's is."""
        *folders, name = parts_of(path) or [""]
        if not name:
            raise Refused("bad_path", "a file needs a name")
        with as_nobody():
            folder = open_folder(self.work, folders, create=True)
            try:
                fd = open_entry(folder, name, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC))
                try:
                    if metadata is not None:
                        with contextlib.suppress(PermissionError):  # as envd gives an upload its owner: watchers see its chmod
                            os.fchown(fd, UID, UID)
                        set_metadata(fd, metadata)
                    write_all(fd, data)
                except OSError as e:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=folder)  # never a half file
                    raise path_error(e, path) from None
                finally:
                    os.close(fd)
            finally:
                os.close(folder)

    def read(self, path, offset):
        """Up to a chunk of the file from offset, and the file's size."""
        *folders, name = parts_of(path) or [""]
        with as_nobody():
            folder = open_folder(self.work, folders)
            try:
                fd = open_entry(folder, name or ".", os.O_RDONLY)
            finally:
                os.close(folder)
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise Refused("is_folder", f"{path!r} is not a file")
            return os.pread(fd, self.chunk, offset), info.st_size
        finally:
            os.close(fd)

    def list(self, path, depth=1, detail=False):
        """The folder's entries, and with depth > 1 those of its folders below (never through a
        symlink), at most self.entries in all; with detail, each as stat() tells it. And whether
        there were more."""
        with as_nobody():
            folder = open_folder(self.work, parts_of(path))
            try:
                entries = []
                self.metadata_left = self.caps["listed_metadata"]  # a listing's metadata, all entries together
                truncated = self._walk(folder, "/".join(parts_of(path)), depth, detail, entries)
                return sorted(entries, key=lambda e: e["path" if detail else "name"]), truncated
            except OSError as e:  # no descriptor left: the listing is refused
                raise path_error(e, path) from None
            finally:
                os.close(folder)

    def _walk(self, folder, prefix, depth, detail, entries):
        """Adds the folder's entries (and below, to depth); True if the cap left some out."""
        with os.scandir(folder) as found:
            for entry in found:
                if len(entries) == self.entries:
                    return True
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone since the folder was read
                path = f"{prefix}/{entry.name}" if prefix else entry.name
                if detail:
                    entries.append(describe(entry.name, path, info, folder, self.caps if self.metadata_left > 0 else None))
                    self.metadata_left -= sum(len(k) + len(v) for k, v in entries[-1].get("metadata", {}).items())
                else:
                    entries.append({"name": entry.name, "kind": kind_of(info),
                                    "size": info.st_size if stat.S_ISREG(info.st_mode) else 0})
                if depth > 1 and stat.S_ISDIR(info.st_mode):
                    try:
                        inner = open_entry(folder, entry.name, os.O_RDONLY | os.O_DIRECTORY)
                    except Refused:
                        continue  # gone, or unreadable, meanwhile
                    try:
                        if self._walk(inner, path, depth - 1, detail, entries):
                            return True
                    finally:
                        os.close(inner)
        return False

    def stat(self, path):
        *folders, name = parts_of(path) or [""]
        with as_nobody():
            if not name:
                return describe("", "", os.stat(self.work), None)
            folder = open_folder(self.work, folders)
            try:
                return entry_at(folder, name, path, self.caps)
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
                return entry_at(folder, name, path, self.caps)
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
                    return entry_at(target, to_name, destination, self.caps)
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


# ---- watchers: inotify on folders of the work folder ----

IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE = 0x2, 0x4, 0x40, 0x80, 0x100
IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF, IN_IGNORED, IN_ISDIR = 0x200, 0x400, 0x800, 0x8000, 0x40000000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_NONBLOCK, IN_CLOEXEC = 0x01000000, 0x02000000, os.O_NONBLOCK, os.O_CLOEXEC
WATCHED = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
# inotify's events as E2B's (fsnotify's): a move in is a create, a move out a rename, as envd tells them
EVENT_KINDS = ((IN_CREATE | IN_MOVED_TO, "create"), (IN_MODIFY, "write"), (IN_DELETE | IN_DELETE_SELF, "remove"),
               (IN_MOVED_FROM | IN_MOVE_SELF, "rename"), (IN_ATTRIB, "chmod"))
LIBC = ctypes.CDLL(None, use_errno=True)
WATCH_READS = 16  # reads of 64 KiB of a watcher's events at a poll


class Watcher:
    """A folder's changes (and with recursive, its folders' below), kept as they come, up to
    caps["watch_events"] (later ones are dropped), for a poll to take. The inotify watches are added
    as nobody, never following a symlink at the watched folder's name, so a watcher sees at most
    what the sandbox's user may list."""

    def __init__(self, hub, path, recursive, entries):
        self.hub, self.recursive, self.entries = hub, recursive, entries
        self.events = []
        self.folders = {}  # watch descriptor -> its folder, relative to the watched one
        self.root = "/".join(parts_of(path))
        with as_nobody():
            folder = open_folder(hub.work, parts_of(path))  # there, a folder, reached through no symlink
            os.close(folder)
        self.fd = LIBC.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise Refused("too_many", f"no watcher can be made: {os.strerror(ctypes.get_errno())}")
        try:
            self.add("")
        except BaseException:
            os.close(self.fd)
            raise
        hub.watch(self.fd, self.on_ready)

    def add(self, folder):
        """Watches the folder (relative to the watched one) and, if recursive, those below it, up to
        caps["watched"] folders in all."""
        pending = [folder]
        while pending and len(self.folders) < self.hub.caps["watched"]:
            relative = pending.pop()
            path = os.path.join(self.hub.work, self.root, relative)
            with as_nobody():
                wd = LIBC.inotify_add_watch(self.fd, os.fsencode(path), WATCHED | IN_ONLYDIR | IN_DONT_FOLLOW)
            if wd < 0:
                if relative:
                    continue  # gone, or turned into a symlink, meanwhile
                raise path_error(OSError(ctypes.get_errno(), "watch"), self.root or ".")
            self.folders[wd] = relative
            if self.recursive:
                with as_nobody(), contextlib.suppress(OSError), os.scandir(path) as found:
                    pending += [os.path.join(relative, e.name) for e in found if e.is_dir(follow_symlinks=False)]

    def on_ready(self, fd):
        data = read_ready(fd)
        if data:
            self.parse(data)
        return data != b""

    def parse(self, data):
        at = 0
        while at + 16 <= len(data):
            wd, mask, _, size = struct.unpack_from("iIII", data, at)
            name = data[at + 16:at + 16 + size].rstrip(b"\0").decode(errors="surrogateescape")
            at += 16 + size
            if mask & IN_IGNORED:
                self.folders.pop(wd, None)
                continue
            if wd not in self.folders:
                continue
            relative = os.path.join(self.folders[wd], name) if name else self.folders[wd]
            if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                self.add(relative)
            for bits, kind in EVENT_KINDS:
                if mask & bits:
                    self.record({"name": relative, "type": kind})

    def record(self, event):
        if self.entries and event["type"] not in ("remove", "rename"):
            with contextlib.suppress(Refused, OSError):
                event["entry"] = self.hub.files.stat("/".join(filter(None, (self.root, event["name"]))))
        if len(self.events) < self.hub.caps["watch_events"]:
            self.events.append(event)

    def take(self):
        """The events since the last take, those the kernel holds now too (a bounded read: a
        writer's flood is not followed)."""
        for _ in range(WATCH_READS):
            data = read_ready(self.fd)
            if not data:
                break
            self.parse(data)
        events, self.events = self.events, []
        return events

    def close(self):
        self.hub.unwatch(self.fd)
        os.close(self.fd)


# ---- processes run as nobody ----

def exhausted(e):
    return Refused("exhausted", f"the sandbox has no room for another process: {e.strerror}")


def pipes(count):
    """count new pipes, each (read end, write end); Refused, holding none, if the sandbox has no room."""
    made = []
    try:
        for _ in range(count):
            made.append(os.pipe())
    except OSError as e:
        for pair in made:
            for fd in pair:
                os.close(fd)
        raise exhausted(e) from None
    return made


def spawn_terminal(argv, env, folder, size):
    """argv as spawn() starts it, its stdin, stdout and stderr a new terminal of that size (cols,
    rows), its controlling one: the terminal's master side, and the process."""
    try:
        master, terminal = os.openpty()
    except OSError as e:
        raise exhausted(e) from None
    try:
        resize(master, size)

        def enter():
            os.fchdir(folder)
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, env=env, user=UID, group=UID,
                                   extra_groups=[], start_new_session=True, close_fds=True, preexec_fn=enter)
    except (OSError, ValueError, TypeError, subprocess.SubprocessError) as e:
        os.close(master)
        raise spawn_error(e, argv) from None
    finally:
        os.close(terminal)
    return process, nonblocking(master)


def resize(master, size):
    cols, rows = size
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def spawn(argv, env, folder, stdin=subprocess.DEVNULL, pass_fds=()):
    """argv as nobody in a session of its own, in folder: an open folder it enters by its descriptor,
    as nobody, so no path is resolved that its files' owner could swap."""
    (out_r, out_w), (err_r, err_w) = pipes(2)
    try:
        process = subprocess.Popen(argv, stdin=stdin, stdout=out_w, stderr=err_w, env=env, user=UID, group=UID,
                                   extra_groups=[], start_new_session=True, close_fds=True, pass_fds=pass_fds,
                                   preexec_fn=lambda: os.fchdir(folder))
    except (OSError, ValueError, TypeError, subprocess.SubprocessError) as e:
        os.close(out_r)
        os.close(err_r)
        raise spawn_error(e, argv) from None
    finally:
        os.close(out_w)
        os.close(err_w)
    return process, nonblocking(out_r), nonblocking(err_r)


def spawn_error(e, argv):
    if isinstance(e, OSError) and e.errno in (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE):
        return exhausted(e)
    if isinstance(e, OSError):
        return Refused("bad_command", f"{argv[0]!r}: {e.strerror}")
    return Refused("bad_command", f"{argv[0]!r} cannot start: {e}")  # a NUL in it, a bad environment name


def kill_group(process):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


class Feed:
    """Bytes for a child's pipe, written as the child takes them: the hub never waits on a child."""

    def __init__(self, hub, fd):
        self.hub, self.fd = hub, nonblocking(fd)
        self.pending = memoryview(b"")
        self.ending = False  # closed once what is pending is written

    def send(self, data):
        self.pending = memoryview(bytes(self.pending) + data) if self.pending else memoryview(data)
        self.flush()

    def end(self):
        """Closes the pipe once what is pending is written: the child reads its end then."""
        self.ending = True
        self.flush()

    def flush(self):
        if self.fd is not None and self.on_writable(self.fd):
            self.hub.watch_write(self.fd, self.on_writable)

    def on_writable(self, fd):
        try:
            if self.pending:
                self.pending = self.pending[os.write(fd, self.pending):]
        except BlockingIOError:
            pass
        except OSError:  # the child closed its end or died: its context finds out at its next tick
            self.pending = memoryview(b"")
        if self.ending and not self.pending:
            self.close()
        return bool(self.pending)

    def close(self):
        if self.fd is not None:
            self.hub.unwatch_write(self.fd)
            os.close(self.fd)
            self.fd = None


class Lines:
    """A child's channel, a line at a time, each at most `most` bytes: a longer one is dropped as
    it comes (on_long is told), never held."""

    def __init__(self, most, on_line, on_long):
        self.most, self.on_line, self.on_long = most, on_line, on_long
        self.buffer, self.skipping = bytearray(), False

    def on_ready(self, fd):
        data = read_ready(fd)
        if data is None:
            return True
        start = 0
        while start < len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline
            if not self.skipping:
                self.buffer += data[start:end]
                if len(self.buffer) > self.most:
                    self.buffer.clear()
                    self.skipping = True
                    self.on_long()
            if newline >= 0:
                if not self.skipping:
                    line = bytes(self.buffer)
                    self.buffer.clear()
                    self.on_line(line)
                self.skipping = False
            start = end + 1
        return data != b""


class Output:
    """A run's stdout, stderr and results, handed on as events up to the caps."""

    def __init__(self, hub, fds):
        self.hub = hub
        self.fds = fds  # fd -> its stream: stdout, stderr, or a terminal's pty
        self.open = len(self.fds)  # pipes not yet at their end
        self.listeners = []  # other requests that hear it too: a command's clients that attached later
        self.start(None)
        for fd in self.fds:
            hub.watch(fd, self.on_ready)

    def start(self, request):
        self.request, self.sent, self.truncated = request, dict.fromkeys(self.fds.values(), 0), False
        self.results, self.result_bytes = 0, 0

    def on_ready(self, fd):
        data = read_ready(fd)
        if data:
            self.forward(self.fds[fd], data)
        self.open -= data == b""
        return data != b""

    def drain(self):
        """What the pipes hold now: everything written before the run said it ended."""
        for fd in self.fds:
            taken = 0
            while taken < DRAIN_MAX and (data := read_ready(fd)):
                taken += len(data)
                self.forward(self.fds[fd], data)

    def forward(self, stream, data):
        if self.request is None:
            return  # a background process of the user's, between runs
        room = self.hub.caps["output_bytes"] - self.sent[stream]
        if len(data) > room:
            data, self.truncated = data[:max(room, 0)], True
        if data:
            self.sent[stream] += len(data)
            # a terminal's bytes as they are (a character may be cut between two reads); text otherwise
            body = {"data": base64.b64encode(data).decode()} if stream == "pty" else {"text": data.decode(errors="replace")}
            for request in (self.request, *self.listeners):
                emit({"id": request, "type": stream, **body})

    def result(self, data, main):
        """One result (a MIME bundle; main: the cell's value), if the run's results are still within their caps."""
        if self.request is None:
            return
        caps = self.hub.caps
        line = (encoded({"id": self.request, "type": "result", "data": data, "main": main})
                if self.results < caps["results"] and within(data, RESULT_DEPTH) else None)
        if line is None or self.result_bytes + len(line) > caps["result_bytes"]:
            self.truncated = True
            return
        self.drain()  # what was printed before the value comes first
        self.results += 1
        self.result_bytes += len(line)
        write_all(1, line)

    def close(self):
        for fd in self.fds:
            self.hub.unwatch(fd)
            os.close(fd)


def within(value, depth):
    """Whether the JSON value nests no deeper than depth."""
    level = [value]
    for _ in range(depth):
        level = [child for item in level if isinstance(item, (dict, list))
                 for child in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return True
    return False


def error_of(error):
    """A context's error as it goes on: three strings, cut to size (a traceback keeps its end)."""
    if not isinstance(error, dict):
        return None
    name, value, traceback = (str(error.get(key, "")) for key in ("name", "value", "traceback"))
    return {"name": name[:ERROR_CHARS], "value": value[:ERROR_CHARS], "traceback": traceback[-ERROR_CHARS:]}


class Context:
    """A persistent interpreter as a child process; one run at a time."""

    line_max = STATUS_LINE_MAX

    def __init__(self, hub, cid, language):
        self.hub, self.id, self.language = hub, cid, language
        self.count = 0  # runs so far: each run's execution_count
        self.request = None
        self.deadline = self.kill_at = None
        self.note = None  # why the run ended early, when it did
        self.process = None
        self.start()

    def start(self):
        """Starts the interpreter: self.process, self.output, self.input (a Feed), self.channel (its
        fd, read by Lines); Refused if it cannot."""
        raise NotImplementedError

    def started(self, process, out_fd, err_fd, input_fd, channel_fd):
        self.process, self.output = process, Output(self.hub, {out_fd: "stdout", err_fd: "stderr"})
        self.input, self.channel = Feed(self.hub, input_fd), nonblocking(channel_fd)
        self.hub.watch(channel_fd, Lines(self.line_max, self.on_line, self.on_long).on_ready)

    def run(self, request, code, timeout_s, env):
        if self.request is not None:
            raise Refused("busy", f"context {self.id!r} is running {self.request!r}: one run at a time")
        if self.process is None or self.process.poll() is not None:
            self.stop()
            self.start()
        if self.input.pending:  # only after a run its code said had ended, while it went on
            raise Refused("busy", f"context {self.id!r} has not yet taken its last run's code")
        payload = self.payload(code, env)
        self.count += 1
        self.request, self.note, self.timeout_s = request, None, timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.output.start(request)
        self.input.send(payload)

    def payload(self, code, env):
        """What the interpreter is sent to run code, with env's variables for that run alone."""
        raise NotImplementedError

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
        self.count = 0
        if self.process is None:
            self.start()

    def died(self, why):
        kill_group(self.process)
        self.process.wait()
        self.note = None
        self.finish(self.request, {"name": "SandboxInterrupted", "value": why, "traceback": ""})
        self.stop()
        with contextlib.suppress(Refused):  # else the next run starts it, or says why it cannot
            self.start()

    def finish(self, request, error, **extra):
        self.output.drain()
        truncated = self.output.truncated
        self.output.start(None)
        self.request = self.deadline = self.kill_at = None
        if self.note:  # the interrupt's own KeyboardInterrupt, or a run that ended as it came
            error = {"traceback": "", **(error or {}), "name": "KeyboardInterrupt", "value": self.note}
        emit({"id": request, "type": "end", "error": error, "execution_count": self.count, "truncated": truncated,
              "context": self.id, **extra})

    def on_long(self):
        if self.request is not None:
            self.output.truncated = True

    def on_line(self, line):
        raise NotImplementedError

    def stop(self):
        """Ends the interpreter, and the run it had (deleted)."""
        if self.process is None:
            return
        kill_group(self.process)
        self.process.wait()
        if self.request is not None:
            self.finish(self.request, {"name": "SandboxInterrupted", "value": f"context {self.id!r} was deleted",
                                       "traceback": ""})
        self.output.close()
        self.input.close()
        self.hub.unwatch(self.channel)
        os.close(self.channel)
        self.process = None


class KernelContext(Context):
    """A kernel process (kernel.py, kernel.js) that takes runs and tells results on pipes of its own."""

    env = {}

    def argv(self, requests_fd, events_fd):
        raise NotImplementedError

    @property
    def line_max(self):
        return self.hub.caps["result_bytes"] + ERROR_SLACK

    def start(self):
        (requests_r, requests_w), (events_r, events_w) = pipes(2)
        try:
            process, out_fd, err_fd = spawn(self.argv(requests_r, events_w), {**self.hub.env, **self.env},
                                            self.hub.work_fd, pass_fds=(requests_r, events_w))
        except BaseException:
            os.close(requests_w)
            os.close(events_r)
            raise
        finally:
            os.close(requests_r)
            os.close(events_w)
        self.started(process, out_fd, err_fd, requests_w, events_r)

    def payload(self, code, env):
        return encoded({"code": code, "count": self.count + 1, "env": env})  # run() counts it next

    def on_line(self, line):
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            return
        if not isinstance(event, dict) or self.request is None or event.get("count") != self.count:
            return  # between runs, or a run's that the hub has ended
        if event.get("type") == "result" and isinstance(event.get("data"), dict):
            self.output.result(event["data"], event.get("main") is True)
        elif event.get("type") == "done":
            self.finish(self.request, error_of(event.get("error")))


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


class TypeScriptContext(JavaScriptContext):
    """kernel.js, each run's code first made JavaScript by the image's TypeScript compiler."""

    def argv(self, requests_fd, events_fd):
        return [*super().argv(requests_fd, events_fd), "--typescript"]


class BashContext(Context):
    """A shell that sources each run's code with stdin from /dev/null, so cwd, variables and functions
    persist; its status comes back on a pipe of its own after a marker only the hub knows."""

    script = None

    def start(self):
        (commands_r, commands_w), (status_r, status_w) = pipes(2)
        try:
            process, out_fd, err_fd = spawn(["bash", "--noprofile", "--norc"], self.hub.env, self.hub.work_fd,
                                            stdin=commands_r, pass_fds=(status_w,))
        except BaseException:
            os.close(commands_w)
            os.close(status_r)
            raise
        finally:
            os.close(commands_r)
            os.close(status_w)
        self.status_fd = status_w  # its number in the shell
        self.marker = os.urandom(8).hex()
        self.started(process, out_fd, err_fd, commands_w, status_r)

    def payload(self, code, env):
        self.forget_script()
        script = f"{SCRIPTS}/{os.urandom(8).hex()}.sh"
        try:
            with open(script, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(code)
            os.chmod(script, 0o644)
        except (OSError, ValueError) as e:  # ValueError: a lone surrogate in the code
            with contextlib.suppress(OSError):
                os.unlink(script)
            if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
                raise Refused("tmp_full", "the sandbox's /tmp is full, and a bash run's code is kept there: "
                                          "free some of it") from None
            raise
        self.script = script
        # Assignments before `source` hold for that run only: bash restores the variables after it.
        assignments = "".join(f"{name}={shlex.quote(value)} " for name, value in env.items())
        return (f'{assignments}source {script} </dev/null; printf "%d {self.marker}\\n" "$?" >&{self.status_fd}\n'
                .encode(errors="surrogateescape"))

    def on_line(self, line):
        code, _, marker = line.decode(errors="replace").partition(" ")
        if marker == self.marker and self.request is not None and code.isascii() and code.isdigit():
            self.forget_script()
            error = None if code == "0" else {"name": "ExitStatus", "value": f"exit status {code}", "traceback": ""}
            self.finish(self.request, error, exit_code=int(code))

    def forget_script(self):
        if self.script:
            with contextlib.suppress(OSError):
                os.unlink(self.script)
            self.script = None

    def stop(self):
        self.forget_script()
        super().stop()


CONTEXTS = {"python": PythonContext, "javascript": JavaScriptContext, "typescript": TypeScriptContext, "bash": BashContext}


class Command:
    """A program run beside the contexts, to its end or its timeout. Its stdin is what the request
    gave, or with open_stdin a pipe that takes input while it runs (send, close_stdin); with a
    terminal (cols, rows), a terminal of that size is its stdin, stdout and stderr, its input sent
    as a pipe's, its output one stream; with announce, its pid is the first event."""

    def __init__(self, hub, request, argv, folder, cwd, env, stdin, timeout_s, open_stdin=False, tag=None,
                 announce=False, terminal=None):
        self.hub, self.request, self.argv, self.cwd, self.env, self.tag = hub, request, argv, cwd, env, tag
        self.stdin = None  # a Feed, with open_stdin or a terminal
        self.master = None  # a terminal's master side
        if terminal is not None:
            self.process, self.master = spawn_terminal(argv, env, folder, terminal)
            self.stdin = Feed(hub, os.dup(self.master))  # its own descriptor: the output's is closed apart
            fds = {self.master: "pty"}
        else:
            fds = self.spawn(argv, env, folder, stdin, open_stdin)
        if announce:
            emit({"id": request, "type": "start", "pid": self.process.pid})
        self.output = Output(hub, fds)
        self.output.start(request)
        self.deadline = time.monotonic() + timeout_s
        self.timed_out = False

    def spawn(self, argv, env, folder, stdin, open_stdin):
        writer = None
        if open_stdin:
            ((feed, writer),) = pipes(1)
        else:
            try:
                feed = os.memfd_create("stdin")
            except OSError as e:
                raise exhausted(e) from None
        try:
            if writer is None:
                write_all(feed, stdin)
                os.lseek(feed, 0, os.SEEK_SET)
            self.process, out_fd, err_fd = spawn(argv, env, folder, stdin=feed)
        except BaseException:
            if writer is not None:
                os.close(writer)
            raise
        finally:
            os.close(feed)
        if writer is not None:
            self.stdin = Feed(self.hub, writer)
        return {out_fd: "stdout", err_fd: "stderr"}

    def resize(self, size):
        if self.master is None:
            raise Refused("no_terminal", f"process {self.process.pid} has no terminal")
        resize(self.master, size)

    def send(self, data):
        """Input for its stdin, written as the command reads it: never blocks the hub."""
        if self.stdin is None or self.stdin.ending:
            raise Refused("no_stdin", f"process {self.process.pid} takes no input (start it with stdin, and before closing it)")
        if len(self.stdin.pending) + len(data) > self.hub.caps["stdin_bytes"]:
            raise Refused("busy", f"process {self.process.pid} has not read the last {len(self.stdin.pending)} bytes sent to it")
        self.stdin.send(data)

    def close_stdin(self):
        if self.stdin is None or self.stdin.fd is None:
            raise Refused("no_stdin", f"process {self.process.pid} has no open stdin")
        self.stdin.end()

    def signal(self, number):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, number)

    def describe(self):
        return {"pid": self.process.pid, "cmd": self.argv, "cwd": self.cwd, "tag": self.tag,
                "env": {key: value for key, value in self.env.items() if key not in self.hub.env}}

    def tick(self, now):
        if now >= self.deadline and not self.timed_out:
            self.timed_out = True
            kill_group(self.process)
        # a terminal ends with its program: gVisor never tells its master side that the other is closed
        if self.output.open == 0 or self.timed_out or (self.master is not None and self.process.poll() is not None):
            if self.process.poll() is None:
                return False
            kill_group(self.process)  # whatever it left in the background goes with it
            self.output.drain()
            self.output.close()
            if self.stdin is not None:
                self.stdin.close()  # what it did not read is dropped
            code = self.process.returncode
            for request in (self.request, *self.output.listeners):
                emit({"id": request, "type": "end", "exit_code": code if code >= 0 else None, "signal": -code if code < 0 else None,
                      "timed_out": self.timed_out, "truncated": self.output.truncated})
            return True
        return False


class Hub:
    def __init__(self, work, caps, env):
        self.work = work
        self.work_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)  # where contexts start
        self.caps = caps
        self.files = Files(work, caps)
        self.env = {key: value for key, value in env.items() if key not in ("HOSTNAME",)}
        self.readers = {}  # fd -> callback(fd) -> False once the fd is done
        self.writers = {}  # fd -> callback(fd) -> False once nothing is left to write
        self.contexts = {}
        self.commands = []
        self.watchers = {}
        self.contexts["python"] = PythonContext(self, "python", "python")  # ready before the first run
        self.forwarder, self.forwarder_at = None, 0.0
        self.keep_forwarder(time.monotonic())

    def keep_forwarder(self, now):
        """With a network policy, the egress forwarder (supervise.c: 127.0.0.1:3128, the proxy the
        environment names, to the worker's proxy socket), started again within a second when it is
        gone: it takes nobody's identity, so a program's kill(-1) reaches it too."""
        path = self.env.get("CODERUND_EGRESS")
        if not path or now < self.forwarder_at or (self.forwarder is not None and self.forwarder.poll() is None):
            return
        self.forwarder_at = now + 1
        self.forwarder = subprocess.Popen([os.path.join(os.path.dirname(os.path.abspath(__file__)), "supervise"),
                                           "--egress"], env={"CODERUND_EGRESS": path}, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL)

    def watch(self, fd, callback):
        self.readers[fd] = callback

    def unwatch(self, fd):
        self.readers.pop(fd, None)

    def watch_write(self, fd, callback):
        self.writers[fd] = callback

    def unwatch_write(self, fd):
        self.writers.pop(fd, None)

    def serve(self):
        buffer = bytearray()
        self.watch(0, lambda fd: self.on_requests(fd, buffer))
        while 0 in self.readers:
            readable, writable, _ = select.select(list(self.readers), list(self.writers), [], 0.05)
            for fds, callbacks in ((writable, self.writers), (readable, self.readers)):
                for fd in fds:
                    callback = callbacks.get(fd)
                    if callback and not callback(fd):
                        callbacks.pop(fd, None)
            now = time.monotonic()
            for context in list(self.contexts.values()):
                context.tick(now)
            self.commands = [c for c in self.commands if not c.tick(now)]
            self.reap()
            self.keep_forwarder(now)

    def reap(self):
        """As the first process, the hub inherits every orphan: it reaps those that are not its own."""
        own = {c.process.pid for c in self.contexts.values() if c.process} | {c.process.pid for c in self.commands}
        while True:
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if found is None:
                return
            if found.si_pid in own:
                for context in self.contexts.values():
                    if context.process:
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
            self.answer(line)
        return True

    def answer(self, line):
        """One request, done or refused: whatever it asks, the hub answers it and goes on."""
        rid = None
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise Refused("bad_request", "a request is a JSON object")
            rid = request["id"] = request.get("id") if isinstance(request.get("id"), (str, int)) else None
            self.handle(request)
        except Refused as e:
            emit({"id": rid, "type": "end", "error": {"code": e.code, "message": str(e)[:1000]}})
        except (ValueError, TypeError, KeyError, RecursionError, OSError) as e:
            emit({"id": rid, "type": "end", "error": {"code": "bad_request", "message": f"the request failed: {e!r}"[:1000]}})

    def handle(self, request):
        rid, op = request.get("id"), request.get("op")
        for watcher in self.watchers.values():  # changes before this request are seen before its own
            watcher.on_ready(watcher.fd)
        if op == "ping":  # the worker's first word: it is attached, so the answer cannot be lost
            emit({"id": rid, "type": "end"})
        elif op == "run":
            language = optional_text(request, "language")
            context = self.context(optional_text(request, "context") or language or "python")
            if language and language != context.language:
                raise Refused("bad_language", f"context {context.id!r} runs {context.language}, not {language}")
            context.run(rid, text(request, "code", ""), seconds(request, "timeout_s", 30), variables(request, "env"))
        elif op == "interrupt":
            for context in self.contexts.values():
                if context.request is not None and context.request == request.get("target"):
                    context.interrupt("the run was interrupted: its client went away")
            emit({"id": rid, "type": "end"})
        elif op == "command":
            self.command(rid, request)
        elif op == "attach":  # another client of a running command: its pid, then its output from now on, its end
            command = self.running(request)
            if len(command.output.listeners) >= self.caps["attached"]:
                raise Refused("busy", f"process {command.process.pid} has {self.caps['attached']} clients attached already")
            emit({"id": rid, "type": "start", "pid": command.process.pid})
            command.output.listeners.append(rid)
        elif op == "commands":
            emit({"id": rid, "type": "end", "commands": [c.describe() for c in self.commands]})
        elif op in ("input", "close_stdin", "signal", "resize"):
            command = self.running(request)
            if op == "resize":
                command.resize(terminal_size(request))
            elif op == "input":
                command.send(base64.b64decode(text(request, "data", ""), validate=True))
            elif op == "close_stdin":
                command.close_stdin()
            else:
                command.signal(signal.SIGTERM if request.get("signal") == signal.SIGTERM else signal.SIGKILL)
            emit({"id": rid, "type": "end"})
        elif op == "stat":
            emit({"id": rid, "type": "end", "entry": self.files.stat(text(request, "path", "."))})
        elif op == "mkdir":
            emit({"id": rid, "type": "end", "entry": self.files.mkdir(text(request, "path", "."))})
        elif op == "move":
            emit({"id": rid, "type": "end", "entry": self.files.move(text(request, "source"), text(request, "destination"))})
        elif op == "write":
            data = base64.b64decode(text(request, "data", ""), validate=True)
            metadata = None if request.get("metadata") is None else strings(request, "metadata")
            if metadata is not None and (len(metadata) > self.caps["metadata"] or not all(metadata) or any(
                    len(v.encode()) > self.caps["metadata_value"] or len(k) > self.caps["metadata_key"] for k, v in metadata.items())):
                raise Refused("bad_request", f"'metadata' has at most {self.caps['metadata']} keys, each a name of at most"
                                             f" {self.caps['metadata_key']} characters with a value of at most"
                                             f" {self.caps['metadata_value']} bytes")
            self.files.write(text(request, "path"), data, bool(request.get("append")), metadata)
            emit({"id": rid, "type": "end"})
        elif op == "read":
            data, size = self.files.read(text(request, "path"), whole(request, "offset", 0, (1 << 62) - 1))
            if data:
                emit({"id": rid, "type": "chunk", "data": base64.b64encode(data).decode()})
            emit({"id": rid, "type": "end", "size": size})
        elif op == "list":
            depth = max(1, whole(request, "depth", 1, self.caps["depth"]))
            entries, truncated = self.files.list(text(request, "path", "."), depth, bool(request.get("detail")))
            emit({"id": rid, "type": "end", "entries": entries, "truncated": truncated})
        elif op == "delete":
            self.files.delete(text(request, "path"))
            emit({"id": rid, "type": "end"})
        elif op == "watch":
            if len(self.watchers) >= self.caps["watchers"]:
                raise Refused("too_many", f"a sandbox has at most {self.caps['watchers']} watchers: remove one first")
            watcher = Watcher(self, text(request, "path", "."), bool(request.get("recursive")), bool(request.get("entries")))
            wid = os.urandom(8).hex()
            self.watchers[wid] = watcher
            emit({"id": rid, "type": "end", "watcher": wid})
        elif op in ("watch_events", "unwatch"):
            wid = request.get("watcher")
            if not isinstance(wid, str) or wid not in self.watchers:
                raise Refused("not_found", f"no watcher {wid!r}")
            if op == "unwatch":
                self.watchers.pop(wid).close()
                emit({"id": rid, "type": "end"})
            else:
                emit({"id": rid, "type": "end", "events": self.watchers[wid].take()})
        elif op == "context_create":
            language = text(request, "language", "python")
            if language not in CONTEXTS:
                raise Refused("bad_language", f"contexts are {', '.join(CONTEXTS)}, not {language!r}")
            context = self.new_context(os.urandom(6).hex(), language)
            emit({"id": rid, "type": "end", "context": {"id": context.id, "language": language}})
        elif op == "context_list":
            emit({"id": rid, "type": "end", "contexts": [{"id": c.id, "language": c.language, "execution_count": c.count,
                                                           "busy": c.request is not None} for c in self.contexts.values()]})
        elif op in ("context_delete", "context_restart"):
            cid = request.get("context")
            if not isinstance(cid, str) or cid not in self.contexts:
                raise Refused("no_context", f"no context {cid!r}")
            if op == "context_delete":
                self.contexts.pop(cid).stop()
            else:
                self.contexts[cid].restart()
            emit({"id": rid, "type": "end"})
        else:
            raise Refused("bad_op", f"no operation {op!r}")

    def context(self, cid):
        """A context by its id; a language's own context ("python", "bash") starts at its first run."""
        if cid not in self.contexts and cid in CONTEXTS:
            return self.new_context(cid, cid)
        if cid not in self.contexts:
            raise Refused("no_context", f"no context {cid!r}")
        return self.contexts[cid]

    def new_context(self, cid, language):
        if len(self.contexts) >= self.caps["contexts"]:
            raise Refused("too_many", f"a sandbox has at most {self.caps['contexts']} contexts: delete one first")
        self.contexts[cid] = CONTEXTS[language](self, cid, language)
        return self.contexts[cid]

    def command(self, rid, request):
        argv = request.get("cmd")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise Refused("bad_request", "'cmd' must be a list of strings")
        if len(self.commands) >= self.caps["commands"]:
            raise Refused("too_many", f"a sandbox runs at most {self.caps['commands']} commands at once")
        env = {**self.env, **strings(request, "env")}
        stdin, timeout_s = text(request, "stdin", "").encode(errors="surrogateescape"), seconds(request, "timeout_s", 60)
        terminal = None if request.get("terminal") is None else terminal_size(request)
        cwd = text(request, "cwd", ".")
        with as_nobody():  # its folder, found as nobody finds it; entered by its descriptor
            if cwd.startswith("/"):  # outside the work folder: reached as the command's own `cd` would
                try:
                    folder = os.open(cwd, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
                except (OSError, ValueError) as e:
                    raise path_error(e if isinstance(e, OSError) else OSError(errno.EINVAL, "bad"), cwd) from None
            else:
                parts = parts_of(cwd)
                folder = open_folder(self.work, parts)
                cwd = os.path.join(self.work, *parts)
        try:
            self.commands.append(Command(self, rid, argv, folder, cwd, env, stdin, timeout_s,
                                         bool(request.get("open_stdin")), optional_text(request, "tag"),
                                         bool(request.get("announce")), terminal))
        finally:
            os.close(folder)

    def running(self, request):
        """The running command a request names by its pid or its tag."""
        pid, tag = request.get("pid"), optional_text(request, "tag")
        for command in self.commands:
            if command.process.returncode is None and (command.process.pid == pid or (tag and command.tag == tag)):
                return command
        raise Refused("not_found", f"no running process {pid or tag!r}")


def scrubbed(argv):
    """Starts the hub again with an empty environment, the one it had in a memfd: nothing of it is
    left in this process's environ (/proc/1/environ). Returns that environment once restarted."""
    if len(argv) > 3:
        with os.fdopen(int(argv[3]), "rb") as found:
            return json.loads(found.read())
    env = os.memfd_create("env", 0)  # inherited by the next program
    write_all(env, json.dumps(dict(os.environ)).encode())
    os.lseek(env, 0, os.SEEK_SET)
    os.execve(sys.executable, [sys.executable, "-I", "-S", os.path.abspath(__file__), argv[1], argv[2], str(env)], {})


def serve(argv):
    env = scrubbed(argv)
    # Not dumpable: /proc/1 is root's and closed to nobody, whatever identity the hub has for a
    # moment (gVisor gives /proc/1 to the hub's effective user otherwise, nobody during file work).
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")
    caps = json.loads(argv[2])
    os.setgroups([])
    if caps["nproc"]:
        resource.setrlimit(resource.RLIMIT_NPROC, (caps["nproc"], caps["nproc"]))
    os.makedirs(SCRIPTS, mode=0o711, exist_ok=True)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a child's closed pipe is an error to handle, not the hub's end
    try:
        Hub(argv[1], caps, env).serve()
    except BrokenPipeError:  # the worker went: so does the sandbox
        pass


if __name__ == "__main__":
    serve(sys.argv)
