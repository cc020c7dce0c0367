"""The fair gate over a worker's sandbox slots (pure asyncio)."""
from __future__ import annotations

import asyncio

from coderund.sandbox.gate import FairGate


async def test_a_waiting_user_with_fewer_slots_goes_first():
    gate, order = FairGate(2), []
    release = asyncio.Event()

    async def step(who: int, name: str) -> None:
        async with gate.slot(who):
            order.append(name)
            await release.wait()

    # User 1 fills both slots and queues four more steps; user 2 comes last with one.
    steps = [asyncio.create_task(step(1, f"a{i}")) for i in range(6)]
    await asyncio.sleep(0)
    steps.append(asyncio.create_task(step(2, "b")))
    await asyncio.sleep(0)
    assert order == ["a0", "a1"] and gate.free == 0 and gate.waiting
    release.set()
    await asyncio.gather(*steps)
    assert order[2] == "b", order  # the first free slot went to the user holding none
    assert gate.free == 2 and not gate.holding and not gate.waiting


async def test_one_user_alone_gets_every_slot_and_cancelled_waiters_give_theirs_back():
    gate = FairGate(2)
    held = asyncio.Event()

    async def hold() -> None:
        async with gate.slot(7):
            await held.wait()

    first, second = asyncio.create_task(hold()), asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert gate.free == 0 and gate.holding[7] == 2
    waiting = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    held.set()
    await asyncio.gather(first, second)
    assert gate.free == 2 and not gate.holding
