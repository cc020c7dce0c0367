"""Fair shares of a worker's sandbox slots among users.

Every sandbox step (a build, a run, one test case) holds a slot while it runs. When steps wait, the
next free slot goes to the waiting user who holds the fewest slots now, then to whoever came first: a
user with two 64-case tasks takes turns with another user's single hello instead of starving it,
and a single user still gets every slot when nobody else waits.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(order=True)
class _Waiter:
    seq: int
    who: int = field(compare=False)
    granted: asyncio.Future[None] = field(compare=False)


class FairGate:
    def __init__(self, slots: int) -> None:
        self.free = slots
        self.holding: Counter[int] = Counter()
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> bool:
        """Whether a step waits for a slot."""
        return bool(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self, who: int) -> AsyncIterator[None]:
        if self.free and not self._waiting:
            self._take(who)
        else:
            waiter = _Waiter(next(self._seq), who, asyncio.get_running_loop().create_future())
            self._waiting.append(waiter)
            try:
                await waiter.granted
            except asyncio.CancelledError:
                if waiter.granted.done() and not waiter.granted.cancelled():
                    self._release(who)  # granted just as we were cancelled: pass it on
                else:
                    self._waiting.remove(waiter)
                raise
        try:
            yield
        finally:
            self._release(who)

    def _take(self, who: int) -> None:
        self.free -= 1
        self.holding[who] += 1

    def _release(self, who: int) -> None:
        self.free += 1
        self.holding[who] -= 1
        if not self.holding[who]:
            del self.holding[who]
        while self.free and self._waiting:
            nxt = min(self._waiting, key=lambda w: (self.holding[w.who], w.seq))
            self._waiting.remove(nxt)
            self._take(nxt.who)
            nxt.granted.set_result(None)
