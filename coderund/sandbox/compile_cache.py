"""Build outputs by content: the same sources, compiler image, command and environment build once.

An entry is one file named by the SHA-256 of everything that can change a build; it holds the work
folder the build left and the compiler's messages, followed by a SHA-256 of those bytes, so a torn
or corrupt entry is detected and dropped. Entries are written to a temporary name and renamed into
place, so concurrent writers (several workers on one host) never expose half an entry. Least
recently used entries go first when the cache passes its size.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import metrics
from .supervisor import FOLDER, Files

log = logging.getLogger(__name__)
DIGEST = 32
SUFFIX = ".build"
PARTIAL = ".partial-"
STALE_PARTIAL_S = 3600


@dataclass(frozen=True)
class Build:
    files: Files
    compile_output: bytes


def key(*, plugin: str, image_id: str, command: tuple[str, ...], env: tuple[tuple[str, str], ...], memory_mb: int,
        time_ms: int, sources: Files) -> str:
    """Everything a build depends on. Sources are hashed by name and content, in name order."""
    digest = hashlib.sha256()
    header = {"plugin": plugin, "image": image_id, "command": list(command), "env": [list(e) for e in env],
              "limits": [time_ms, memory_mb]}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name in sorted(sources.data):
        content = sources.data[name]
        for part in (name.encode(), b"%o" % sources.mode(name), content or b""):
            digest.update(b"%d:" % len(part))
            digest.update(part)
    return digest.hexdigest()


def _encode(build: Build) -> bytes:
    index = {"compile_output": len(build.compile_output),
             "files": [[name, build.files.mode(name), None if content is FOLDER else len(content)]
                       for name, content in build.files.data.items()]}
    head = json.dumps(index).encode()
    body = b"".join([b"%d\n" % len(head), head, build.compile_output,
                     *(content for content in build.files.data.values() if content is not FOLDER)])
    return body + hashlib.sha256(body).digest()


def _decode(data: bytes) -> Build:
    body, checksum = data[:-DIGEST], data[-DIGEST:]
    if len(data) <= DIGEST or hashlib.sha256(body).digest() != checksum:
        raise ValueError("checksum mismatch")
    head_len, _, rest = body.partition(b"\n")
    index = json.loads(rest[: int(head_len)])
    at = int(head_len) + index["compile_output"]
    compile_output = rest[int(head_len):at]
    files = Files()
    for name, mode, size in index["files"]:
        files.modes[name] = mode & 0o777
        if size is None:
            files.data[name] = FOLDER
        else:
            files.data[name] = rest[at:at + size]
            at += size
    if at != len(rest):
        raise ValueError("length mismatch")
    return Build(files, compile_output)


class CompileCache:
    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        if max_bytes > 0:
            folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def get(self, key: str, language: str) -> Build | None:
        """The build, or None on a miss; a corrupt entry is removed and counts as a miss."""
        if self.max_bytes <= 0:
            return None
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            metrics.COMPILE_CACHE.labels(language, "miss").inc()
            return None
        try:
            build = _decode(data)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            log.warning("compile cache: dropping corrupt entry %s (%s)", path.name, e)
            path.unlink(missing_ok=True)
            metrics.COMPILE_CACHE.labels(language, "corrupt").inc()
            return None
        os.utime(path)  # least recently used goes first: a hit makes it recent
        metrics.COMPILE_CACHE.labels(language, "hit").inc()
        return build

    def put(self, key: str, build: Build) -> None:
        if self.max_bytes <= 0:
            return
        data = _encode(build)
        if len(data) > self.max_bytes:
            return
        fd, partial = tempfile.mkstemp(dir=self.folder, prefix=PARTIAL)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(partial, self._path(key))
        except OSError as e:
            log.warning("compile cache: could not store an entry: %s", e)
            Path(partial).unlink(missing_ok=True)
            return
        self._evict()

    def _evict(self) -> None:
        entries = []
        for path in self.folder.iterdir():
            try:
                info = path.stat()
            except FileNotFoundError:
                continue  # another worker evicted or renamed it
            if path.name.endswith(SUFFIX):
                entries.append((info.st_mtime, info.st_size, path))
            elif path.name.startswith(PARTIAL) and info.st_mtime < time.time() - STALE_PARTIAL_S:
                path.unlink(missing_ok=True)  # left by a writer that died
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            metrics.COMPILE_CACHE_EVICTIONS.inc()
            total -= size
        metrics.COMPILE_CACHE_BYTES.set(total)
