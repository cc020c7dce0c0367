"""Warm, single-use sandboxes: containers created and started ahead of the tasks that will use them.

A task takes a ready container of its shape (image, memory limit, environment), which ends with that
task: its supervisor serves one request and exits. The pool refills in the background. Sizing is
adaptive: a shape in use keeps about as many ready as it was asked for in the last few seconds (at
least one, at most `per_shape`); a shape unused for `idle_s` keeps none; `max_total` bounds them all,
and when it binds, a shape just asked for takes the place of one used longer ago (with many languages,
the ones in use are warm, not the first ones served). A shape not served that tasks ask for (other
limits, a Jobe run's process limit) is adopted: kept warm while in demand like a served one, and
forgotten once idle; at most ADOPTED_MAX at a time. Containers idle longer than `max_age_s` are
replaced.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Hashable

from typing import Protocol

from .. import metrics
from .engine import SandboxError


class Warm(Protocol):
    """What the pool keeps: a task's Box, or a stateful sandbox's Hub."""

    @property
    def alive(self) -> bool: ...

    @property
    def created(self) -> float: ...


Shape = Hashable  # what makes two of them interchangeable: engine.Shape, or stateful.Spec

log = logging.getLogger(__name__)
DEMAND_WINDOW_S = 10
TICK_S = 1
FILL_BACKOFF_S = (1, 60)  # after a failed fill of a shape: first and longest pause
ADOPTED_MAX = 16  # shapes kept warm because tasks asked for them, beside the served ones


class WarmPool:
    def __init__(self, make: Callable[[Shape], Awaitable[Warm]], discard: Callable[[Warm], None], *, max_total: int,
                 per_shape: int, max_age_s: float, idle_s: float, fill_parallel: int) -> None:
        self.make = make
        self.discard = discard
        self.max_total = max_total
        self.per_shape = per_shape
        self.max_age_s = max_age_s
        self.idle_s = idle_s
        self.fill_parallel = fill_parallel
        self.ready: dict[Shape, deque[Warm]] = {}
        self.filling: Counter[Shape] = Counter()
        self._takes: dict[Shape, deque[float]] = {}
        self._last_used: dict[Shape, float] = {}
        self._paused_until: dict[Shape, tuple[float, float]] = {}  # shape: (until, pause)
        self._adopted: set[Shape] = set()
        self._wake = asyncio.Event()
        self._fills: set[asyncio.Task[None]] = set()

    def serve(self, shape: Shape) -> None:
        """Keeps this shape warm from now on (as if just used); other shapes always start cold."""
        if self.max_total > 0:
            self.ready.setdefault(shape, deque())
            self._takes.setdefault(shape, deque())
            self._last_used[shape] = time.monotonic()
            self._wake.set()

    def take(self, shape: Shape) -> Warm | None:
        """A ready container of this shape, or None (the caller makes one: the cold path). Its
        replacement waits for wake, or the next tick: started at once, it would take the CPU from the
        program that just took this one (measured: python hello's wall time doubles)."""
        ready = self.ready.get(shape)
        if ready is None:
            metrics.WARM_TAKES.labels("cold").inc()
            if self.max_total > 0 and len(self._adopted) < ADOPTED_MAX:
                self._adopted.add(shape)
                self.serve(shape)
                self._takes[shape].append(time.monotonic())
            return None
        now = time.monotonic()
        self._last_used[shape] = now
        self._takes[shape].append(now)
        while ready:
            box = ready.popleft()
            if box.alive:
                metrics.WARM_TAKES.labels("hit").inc()
                return box
            self.discard(box)
        metrics.WARM_TAKES.labels("miss").inc()
        return None

    def has(self, shape: Shape) -> bool:
        """Whether take would find a ready container of this shape now."""
        return any(warm.alive for warm in self.ready.get(shape, ()))

    def wake(self) -> None:
        """Refills now: a step that took a container has ended, or a container was taken for a
        client that will not run a program in it at once."""
        self._wake.set()

    def target(self, shape: Shape, now: float) -> int:
        if now - self._last_used[shape] > self.idle_s:
            return 0
        takes = self._takes[shape]
        while takes and takes[0] < now - DEMAND_WINDOW_S:
            takes.popleft()
        return max(1, min(self.per_shape, len(takes)))

    @property
    def size(self) -> int:
        return sum(len(r) for r in self.ready.values()) + sum(self.filling.values())

    async def run(self) -> None:
        """Refills, trims and recycles until cancelled."""
        while True:
            self._tick(time.monotonic())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            except TimeoutError:
                pass

    def _tick(self, now: float) -> None:
        for shape in [s for s in self._adopted if self.target(s, now) == 0 and not self.ready[s] and not self.filling[s]]:
            self._adopted.discard(shape)
            for table in (self.ready, self._takes, self._last_used, self._paused_until):
                table.pop(shape, None)
        for shape, ready in self.ready.items():
            target = self.target(shape, now)
            while ready and (len(ready) > target or now - ready[0].created > self.max_age_s or not ready[0].alive):
                self.discard(ready.popleft())  # the oldest first: surplus, too old, or dead
        self._refill(now)
        metrics.WARM_READY.set(sum(len(r) for r in self.ready.values()))

    def _refill(self, now: float) -> None:
        """The most recently used shapes fill first when the total cap binds. Once no shape used
        longer ago has a container to give up for one, none has for the shapes after it either:
        a tick is linear in the shapes served (it runs after every task)."""
        newest_first = sorted(self.ready, key=self._last_used.__getitem__, reverse=True)
        size = self.size
        for shape in newest_first:
            missing = self.target(shape, now) - len(self.ready[shape]) - self.filling[shape]
            while missing > 0 and len(self._fills) < self.fill_parallel and self._paused_until.get(shape, (0, 0))[0] <= now:
                if size >= self.max_total:
                    if not self._evict_for(shape, newest_first):
                        return
                    size -= 1
                self._fill(shape)
                size += 1
                missing -= 1

    def _evict_for(self, shape: Shape, newest_first: list[Shape]) -> bool:
        """Makes room for shape by discarding a ready container of the shape used longest before it."""
        for older in reversed(newest_first):
            if self._last_used[older] >= self._last_used[shape]:
                return False
            if self.ready[older]:
                self.discard(self.ready[older].popleft())
                return True
        return False

    def _fill(self, shape: Shape) -> None:
        self.filling[shape] += 1
        fill = asyncio.create_task(self._fill_one(shape))
        self._fills.add(fill)
        fill.add_done_callback(self._fills.discard)

    async def _fill_one(self, shape: Shape) -> None:
        try:
            box = await self.make(shape)
        except SandboxError as e:
            pause = min(self._paused_until.get(shape, (0, FILL_BACKOFF_S[0] / 2))[1] * 2, FILL_BACKOFF_S[1])
            self._paused_until[shape] = (time.monotonic() + pause, pause)
            log.warning("warm pool: could not start a %s container (%s); retrying in %.0f s", shape.image, e, pause)
            return
        finally:
            self.filling[shape] -= 1
            self._wake.set()
        self._paused_until.pop(shape, None)
        self.ready[shape].append(box)

    async def close(self) -> None:
        """Removes every ready container. Fills under way are let finish (a cancelled one could
        leave a container nobody knows of), then removed too."""
        self.max_total = 0
        if self._fills:
            await asyncio.wait(set(self._fills), timeout=30)
        for ready in self.ready.values():
            while ready:
                self.discard(ready.popleft())
