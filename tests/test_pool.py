"""Warm, single-use sandboxes on real Docker: one task per container, refill, recycling, the cold path,
and a hot path that makes no engine call before the report."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest
from prometheus_client import REGISTRY

from coderund import plugins as plugin_loader
from coderund.daemon import make_sandbox
from coderund.domain import Limits, Task
from coderund.domain import TestCase as Case
from coderund.repository.db import Database
from coderund.repository.workers import Workers
from coderund.sandbox import supervisor
from coderund.sandbox.box import Died
from coderund.sandbox.runner import Sandbox, run_shape
from tests.conftest import container_of

def task(code: str, limits: Limits) -> Task:
    return Task(uuid.uuid4(), 0, "python", code, "", [], limits)


def python_plugin(settings) -> plugin_loader.Plugin:
    return plugin_loader.load(settings.plugins_dir).get("python")


def running(container: str) -> bool:
    found = docker.from_env().api.containers(all=True, filters={"id": container})
    return bool(found) and found[0]["State"] == "running"


def exists(container: str) -> bool:
    return bool(docker.from_env().api.containers(all=True, filters={"id": container}))


@contextlib.asynccontextmanager
async def sandbox_of(settings, **changes) -> AsyncIterator[Sandbox]:
    """A worker's sandbox, alone, with its pool running; its worker id has a heartbeat, so the
    session server's leftover sweep leaves its containers alone."""
    own = dataclasses.replace(settings, **changes)
    worker_id = f"pooltest-{uuid.uuid4().hex[:8]}"
    db = Database(settings.database_url)
    await db.open()
    await Workers(db).heartbeat(worker_id, socket.gethostname())
    sandbox = make_sandbox(own, worker_id, await Workers(db).deployment())
    refill = asyncio.create_task(sandbox.pool.run())
    try:
        yield sandbox
    finally:
        refill.cancel()
        await sandbox.pool.close()
        await sandbox.engine.close()
        await Workers(db).forget_worker(worker_id)
        await db.close()


async def ready(sandbox: Sandbox, shape, count: int = 1, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        boxes = list(sandbox.pool.ready.get(shape, ()))
        if len(boxes) >= count:
            return boxes
        await asyncio.sleep(0.05)
    raise AssertionError(f"the pool did not reach {count} ready for {shape}")


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def docker_calls() -> dict[str, float]:
    return {s.labels["call"]: s.value for m in REGISTRY.collect() if m.name == "coderund_docker_api_calls"
            for s in m.samples if s.name.endswith("_total")}


async def test_a_warm_container_serves_one_task_and_then_is_gone(settings):
    plugin = python_plugin(settings)
    async with sandbox_of(settings, warm_max=2) as sandbox:
        sandbox.serve([plugin])
        shape = run_shape(plugin, plugin.limits)
        [box] = await ready(sandbox, shape)
        assert sandbox.pool.take(shape) is box
        request = supervisor.request(supervisor.Files({"main.py": b"print(open('/proc/1/cmdline').read())"}), b"",
                                     ("python3", "main.py"), wall_ms=5000, output_cap=1000, collect=False)
        report, _ = await box.exchange(request, 1 << 20)
        assert report.exit_code == 0 and b"supervise" in report.stdout
        # The supervisor served its one request and ended the container: a second one finds no one.
        with pytest.raises((Died, ConnectionError)):
            await box.exchange(request, 1 << 20)
        for _ in range(50):
            if not running(box.id):
                break
            await asyncio.sleep(0.1)
        assert not running(box.id)
        sandbox.engine.discard(box)


async def test_the_hot_path_makes_no_engine_call_before_the_report(settings):
    plugin = python_plugin(settings)
    async with sandbox_of(settings, warm_max=2) as sandbox:
        sandbox.serve([plugin])
        await ready(sandbox, run_shape(plugin, plugin.limits))
        hits = counter("coderund_warm_pool_takes_total", outcome="hit")
        before = docker_calls()
        result = await sandbox.execute(plugin, task("print('hot')", plugin.limits), {"coderund.task": "hot"})
        after = docker_calls()
        assert result.stdout == b"hot\n"
        assert counter("coderund_warm_pool_takes_total", outcome="hit") == hits + 1
        made = {call: after[call] - before.get(call, 0) for call in after if after[call] != before.get(call, 0)}
        # At most the used container's removal (it runs beside the result) and the pool's refill.
        assert set(made) <= {"DELETE /containers/{id}", "POST /containers/create", "POST /containers/{id}/start",
                             "POST /containers/{id}/attach"}, made
        assert made.get("POST /containers/{id}/start", 0) <= made.get("POST /containers/create", 0)


async def test_cold_path_when_the_pool_is_off_or_the_limits_differ(settings):
    plugin = python_plugin(settings)
    async with sandbox_of(settings, warm_max=0) as sandbox:
        sandbox.serve([plugin])
        result = await sandbox.execute(plugin, task("print('cold')", plugin.limits), {"coderund.task": "cold-1"})
        assert result.stdout == b"cold\n" and not sandbox.pool.ready
    async with sandbox_of(settings, warm_max=4) as sandbox:
        sandbox.serve([plugin])
        await ready(sandbox, run_shape(plugin, plugin.limits))
        other = Limits(time_ms=1000, memory_mb=plugin.limits.memory_mb // 2)
        cold = counter("coderund_warm_pool_takes_total", outcome="cold")
        result = await sandbox.execute(plugin, task("print('other limits')", other), {"coderund.task": "cold-2"})
        assert result.stdout == b"other limits\n"
        assert counter("coderund_warm_pool_takes_total", outcome="cold") == cold + 1
        inspect = docker.from_env().api.inspect_container
        assert inspect(result.container)["HostConfig"]["Memory"] == other.memory_mb * 1024 * 1024
        assert inspect(result.container)["Config"]["Labels"]["coderund.task"] == "cold-2"
        # The warm one waits on, untouched, with the plugin's own limit.
        [box] = sandbox.pool.ready[run_shape(plugin, plugin.limits)]
        assert inspect(box.id)["HostConfig"]["Memory"] == plugin.limits.memory_mb * 1024 * 1024


async def test_refill_after_a_burst_and_recycling_by_age_and_idleness(settings):
    plugin = python_plugin(settings)
    shape = run_shape(plugin, plugin.limits)
    async with sandbox_of(settings, warm_max=3, concurrency=2, warm_max_age_s=3, warm_idle_s=8) as sandbox:
        sandbox.serve([plugin])
        await ready(sandbox, shape)
        burst = await asyncio.gather(*(sandbox.execute(plugin, task(f"print({i})", plugin.limits),
                                                       {"coderund.task": f"burst-{i}"}) for i in range(6)))
        assert [r.stdout for r in burst] == [b"%d\n" % i for i in range(6)]
        assert len({r.container for r in burst}) == 6  # six tasks, six containers
        # Demand raised the target: the pool refills to its cap.
        boxes = await ready(sandbox, shape, 3)
        assert sandbox.pool.size <= 3
        # Past their age, waiting containers are replaced by new ones, and removed.
        await asyncio.sleep(4.5)
        fresh = await ready(sandbox, shape)
        assert not {b.id for b in boxes} & {b.id for b in fresh}
        for _ in range(50):
            if not any(exists(b.id) for b in boxes):
                break
            await asyncio.sleep(0.1)
        assert not any(exists(b.id) for b in boxes)
        # Unused for longer than warm_idle_s, the shape keeps none.
        await asyncio.sleep(5)
        assert not sandbox.pool.ready[shape] and sandbox.pool.filling[shape] == 0


async def test_tasks_through_the_api_never_share_a_container_or_see_leftovers(api, settings):
    token = await api.user("single")
    code = ("import os, uuid\nmarker = uuid.uuid4().hex\nopen('/tmp/' + marker, 'w').write('x')\nopen(marker, 'w').write('x')\n"
            "print(marker, sorted(os.listdir('/tmp')), sorted(os.listdir('.')),"
            " sorted(p for p in os.listdir('/proc') if p.isdigit()))")
    ids = [await api.submit(token, language="python", code=code) for _ in range(6)]
    results = [await api.result(token, task_id) for task_id in ids]
    containers = [await container_of(settings, task_id) for task_id in ids]
    assert len(set(containers)) == 6
    markers = [r["stdout"].split()[0] for r in results]
    for result, marker in zip(results, markers, strict=True):
        assert result["verdict"] == "ok", result
        # Its own files only: the work folder holds main.py and its marker, /tmp its marker.
        assert f"['{marker}'] ['{marker}', 'main.py']" in result["stdout"], result["stdout"]
        assert not any(other in result["stdout"] for other in markers if other != marker)
        # No process but the supervisor and the program itself.
        assert result["stdout"].rstrip().endswith("]") and len(result["stdout"].rsplit("[", 1)[1].split(",")) == 2


class FakeBox:
    """Stands in for a container in the pool's own bookkeeping (no engine here)."""

    def __init__(self, shape) -> None:
        self.shape = shape
        self.created = time.monotonic()
        self.alive = True


async def test_a_shape_in_use_takes_the_place_of_one_used_longer_ago():
    from coderund.sandbox.engine import Shape
    from coderund.sandbox.pool import WarmPool

    discarded = []

    async def make(shape):
        return FakeBox(shape)

    pool = WarmPool(make, discarded.append, max_total=2, per_shape=4, max_age_s=300, idle_s=600, fill_parallel=4)
    shapes = [Shape(f"image-{i}", 64) for i in range(3)]
    for shape in shapes:  # served in this order: the last two are the newest
        pool.serve(shape)
        await asyncio.sleep(0.01)
    pool._tick(time.monotonic())
    await asyncio.sleep(0.05)
    assert [len(pool.ready[s]) for s in shapes] == [0, 1, 1] and not discarded
    assert pool.take(shapes[0]) is None  # cold: the cap was spent on the others
    pool._tick(time.monotonic())
    await asyncio.sleep(0.05)
    # The shape just asked for got a container in place of the one used longest ago.
    assert [len(pool.ready[s]) for s in shapes] == [1, 0, 1] and [b.shape for b in discarded] == [shapes[1]]
    pool._tick(time.monotonic())
    await asyncio.sleep(0.05)
    assert [len(pool.ready[s]) for s in shapes] == [1, 0, 1] and len(discarded) == 1  # and no churn after


async def test_a_shape_tasks_ask_for_is_adopted_while_in_demand_then_forgotten():
    from coderund.sandbox.engine import Shape
    from coderund.sandbox.pool import WarmPool

    discarded = []

    async def make(shape):
        return FakeBox(shape)

    pool = WarmPool(make, discarded.append, max_total=4, per_shape=4, max_age_s=300, idle_s=1, fill_parallel=4)
    jobe_run = Shape("image", 64, (), 32)  # a pids limit of its own: no served shape has it
    assert pool.take(jobe_run) is None  # the first is cold
    pool._tick(time.monotonic())
    await asyncio.sleep(0.05)
    assert len(pool.ready[jobe_run]) == 1
    assert pool.take(jobe_run) is not None  # the next is warm
    await asyncio.sleep(1.1)
    pool._tick(time.monotonic())  # idle: its container goes, then the shape
    pool._tick(time.monotonic())
    assert jobe_run not in pool.ready and len(discarded) == 0
    off = WarmPool(make, discarded.append, max_total=0, per_shape=4, max_age_s=300, idle_s=1, fill_parallel=4)
    assert off.take(jobe_run) is None and not off.ready  # a pool that is off adopts nothing


async def test_a_taken_containers_replacement_starts_once_its_task_is_done(settings, monkeypatch):
    """Not while the task runs: a refill beside the program took the CPU from it (python hello's wall
    time doubled). The pool's own tick, which would refill anyway, is set far off here."""
    from coderund.sandbox import pool as pool_module

    monkeypatch.setattr(pool_module, "TICK_S", 60)
    plugin = python_plugin(settings)
    async with sandbox_of(settings, warm_max=2) as sandbox:
        sandbox.serve([plugin])
        shape = run_shape(plugin, plugin.limits)
        await ready(sandbox, shape)
        box = sandbox.pool.take(shape)
        await asyncio.sleep(0.5)
        assert not sandbox.pool.ready[shape] and not sandbox.pool.filling[shape]
        sandbox.refill()  # the worker has finished the task
        await ready(sandbox, shape)
        sandbox.engine.discard(box)


async def test_a_task_never_waits_for_a_lane_of_cases_it_no_longer_needs(settings):
    """A second lane opens (its fresh start taken for cheap here), but its start is held back until
    the first lane has run every case: the task's result comes without it, and the container it then
    gets is removed unused."""
    plugin = python_plugin(settings)
    cases = tuple(Case(str(n), (), str(n * n)) for n in range(6))
    async with sandbox_of(settings, warm_max=0) as sandbox:
        made: list[str] = []
        release = asyncio.Event()
        real_make = sandbox.engine.make

        async def make(shape, labels, **stateful):
            if made:  # the first lane's sandbox goes through; any other waits for the task's result
                await release.wait()
            box = await real_make(shape, labels, **stateful)
            made.append(box.id)
            return box

        sandbox.engine.make = make
        sandbox.engine.start_s = 0.0
        judged = dataclasses.replace(task("print(int(input()) ** 2)", plugin.limits), tests=cases)
        result = await asyncio.wait_for(sandbox.execute(plugin, judged, {"coderund.task": "lanes"}, case_parallel=2), 30)
        assert [case.verdict.value for case in result.tests] == ["ok"] * len(cases)
        assert len(made) == 1  # the second lane's start is still held back
        release.set()
        for _ in range(100):
            if len(made) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(made) == 2
        for _ in range(100):  # the second sandbox is removed, having run nothing
            if not exists(made[1]):
                break
            await asyncio.sleep(0.05)
        assert not exists(made[1])


async def test_a_removal_the_engine_fails_is_tried_again(settings, monkeypatch):
    """The engine cannot remove the container at first (a file of it that may not be deleted, as a
    sandbox slow to die under gVisor also fails it); once it can, the retry removes it."""
    from coderund.sandbox import engine as engine_module

    monkeypatch.setattr(engine_module, "REMOVE_RETRY_S", (1.0, 1.0, 1.0))
    plugin = python_plugin(settings)
    async with sandbox_of(settings, warm_max=0) as sandbox:
        box = await sandbox.engine.make(run_shape(plugin, plugin.limits), {})
        upper = docker.from_env().api.inspect_container(box.id)["GraphDriver"]["Data"]["UpperDir"]
        stuck = Path(upper, "stuck")
        stuck.touch()
        subprocess.run(["chattr", "+i", str(stuck)], check=True)
        try:
            sandbox.engine.discard(box)
            await asyncio.sleep(1.5)  # the first try and the first retry have failed
            assert exists(box.id)
        finally:
            subprocess.run(["chattr", "-i", str(stuck)], check=True)
        for _ in range(60):
            if not exists(box.id):
                break
            await asyncio.sleep(0.1)
        assert not exists(box.id)
