"""The compile cache: what the key covers, hits and misses, LRU eviction, corruption, concurrent
writers, and a repeated C submission through the API that skips its build container."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from prometheus_client import REGISTRY

from coderund.sandbox.compile_cache import Build, CompileCache, key
from coderund.sandbox.supervisor import FOLDER, Files
from tests.conftest import container_of

SOURCES = Files({"main.c": b"int main(void) { return 0; }"})


def a_key(**changes) -> str:
    values = {"plugin": "c", "image_id": "sha256:1", "command": ("gcc", "main.c"), "env": (), "memory_mb": 1024,
              "time_ms": 30000, "sources": SOURCES, **changes}
    return key(**values)


def build(size: int = 100) -> Build:
    return Build(Files({"main": os.urandom(size), "main.c": b"int main;", "pkg": FOLDER},
                       {"main": 0o755, "main.c": 0o644, "pkg": 0o755}), b"warning: x\n")


def counter(outcome: str) -> float:
    return REGISTRY.get_sample_value("coderund_compile_cache_total", {"language": "c", "outcome": outcome}) or 0.0


def test_the_key_covers_everything_a_build_depends_on():
    base = a_key()
    assert a_key() == base
    for change in ({"plugin": "cpp"}, {"image_id": "sha256:2"}, {"command": ("gcc", "-O2", "main.c")},
                   {"env": (("CC", "x"),)}, {"memory_mb": 512}, {"time_ms": 1},
                   {"sources": Files({"main.c": b"int main(void) { return 1; }"})},
                   {"sources": Files({"other.c": SOURCES.data["main.c"]})},
                   {"sources": Files({"main.c": SOURCES.data["main.c"]}, {"main.c": 0o755})},
                   {"sources": Files({"main.c": SOURCES.data["main.c"], "x.h": b""})}):
        assert a_key(**change) != base, change
    # Names and contents cannot be shifted into each other.
    assert a_key(sources=Files({"ab": b"c"})) != a_key(sources=Files({"a": b"bc"}))


def test_hit_miss_and_round_trip(tmp_path: Path):
    cache = CompileCache(tmp_path, 1 << 20)
    misses, hits = counter("miss"), counter("hit")
    assert cache.get(a_key(), "c") is None and counter("miss") == misses + 1
    stored = build()
    cache.put(a_key(), stored)
    assert cache.get(a_key(), "c") == stored and counter("hit") == hits + 1
    assert CompileCache(tmp_path, 0).get(a_key(), "c") is None  # 0 turns it off


def test_corrupt_or_torn_entries_are_dropped(tmp_path: Path):
    cache = CompileCache(tmp_path, 1 << 20)
    for damage in (lambda d: d[:-1], lambda d: d[:10], lambda d: d[:50] + bytes([d[50] ^ 1]) + d[51:], lambda d: b""):
        cache.put(a_key(), build())
        [entry] = tmp_path.glob("*.build")
        entry.write_bytes(damage(entry.read_bytes()))
        corrupt = counter("corrupt")
        assert cache.get(a_key(), "c") is None and counter("corrupt") == corrupt + 1
        assert not entry.exists()


def test_least_recently_used_entries_go_first(tmp_path: Path):
    cache = CompileCache(tmp_path, 3 * 1200)  # room for three entries of ~1 KB
    keys = [a_key(time_ms=i) for i in range(4)]
    for i, k in enumerate(keys[:3]):
        cache.put(k, build(1000))
        os.utime(next(tmp_path.glob(f"{k}*")), (time.time() - 100 + i, time.time() - 100 + i))
    assert cache.get(keys[0], "c") is not None  # the oldest, used again: now the newest
    cache.put(keys[3], build(1000))
    assert [cache.get(k, "c") is not None for k in keys] == [True, False, True, True]
    assert sum(p.stat().st_size for p in tmp_path.glob("*.build")) <= 3 * 1200


def test_concurrent_writers_and_readers_never_see_half_an_entry(tmp_path: Path):
    cache = CompileCache(tmp_path, 64 << 20)
    entries = [build(200_000) for _ in range(4)]
    seen: list[Build | None] = []
    corrupt = counter("corrupt")

    def write(i: int) -> None:
        for _ in range(20):
            cache.put(a_key(), entries[i])

    def read() -> None:
        for _ in range(200):
            seen.append(cache.get(a_key(), "c"))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)] + [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter("corrupt") == corrupt
    assert all(b is None or b in entries for b in seen) and any(b is not None for b in seen)
    assert not list(tmp_path.glob(".partial-*"))


async def test_a_repeated_c_submission_skips_its_build(api, settings):
    token = await api.user("cache")
    code = f"#include <stdio.h>\n// {os.urandom(8).hex()}\nint main(void) {{ puts(\"cached\"); return 0; }}\n"
    hits, misses = counter("hit"), counter("miss")
    first = await api.run(token, language="c", code=code)
    assert first["verdict"] == "ok" and first["stdout"] == "cached\n"
    assert counter("miss") == misses + 1 and counter("hit") == hits
    builds = REGISTRY.get_sample_value("coderund_task_compile_seconds_count", {"language": "c"})
    second_id = await api.submit(token, language="c", code=code)
    second = await api.result(token, second_id)
    assert second["verdict"] == "ok" and second["stdout"] == "cached\n"
    assert counter("hit") == hits + 1
    # No build ran for it: the compile-time histogram did not move.
    assert REGISTRY.get_sample_value("coderund_task_compile_seconds_count", {"language": "c"}) == builds
    assert await container_of(settings, second_id)
    # A compile error is never cached: it is built, and fails, each time.
    bad = "int main(void) { return x; }"
    for _ in range(2):
        assert (await api.run(token, language="c", code=bad))["verdict"] == "compile_error"
    assert counter("hit") == hits + 1
