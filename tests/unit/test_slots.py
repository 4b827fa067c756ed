"""A subscription's handler slots (client/handlers.py's ``Slots``): at most ``concurrency``
at once, the rest wait in order, and a delivery cancelled while it waits (a revoke) neither
keeps a slot nor loses one."""

from __future__ import annotations

import asyncio

from taskhub.client.handlers import Slots


async def _hold(slots: Slots, name: str, log: list[str], release: asyncio.Event) -> None:
    wait = slots.take()
    if wait is not None:
        await slots.wait(wait)
    log.append(name)
    try:
        await release.wait()
    finally:
        slots.give()


async def test_at_most_concurrency_run_and_the_others_start_in_order() -> None:
    slots = Slots(2)
    log: list[str] = []
    gates = {name: asyncio.Event() for name in "abcde"}
    tasks = [asyncio.create_task(_hold(slots, n, log, gates[n])) for n in "abcde"]
    await asyncio.sleep(0.01)
    assert log == ["a", "b"]  # two slots: c, d and e wait
    gates["b"].set()
    await asyncio.sleep(0.01)
    assert log == ["a", "b", "c"]  # b's slot went to the first waiting
    gates["a"].set()
    gates["c"].set()
    await asyncio.sleep(0.01)
    assert log == ["a", "b", "c", "d", "e"]
    gates["d"].set()
    gates["e"].set()
    await asyncio.gather(*tasks)
    assert slots.free == 2 and slots.take() is None  # every slot came back


async def test_a_waiter_cancelled_before_its_turn_takes_no_slot() -> None:
    slots = Slots(1)
    log: list[str] = []
    gates = {name: asyncio.Event() for name in "abc"}
    a = asyncio.create_task(_hold(slots, "a", log, gates["a"]))
    b = asyncio.create_task(_hold(slots, "b", log, gates["b"]))
    c = asyncio.create_task(_hold(slots, "c", log, gates["c"]))
    await asyncio.sleep(0.01)
    b.cancel()  # revoked while it waits
    await asyncio.sleep(0.01)
    gates["a"].set()
    await asyncio.sleep(0.01)
    assert log == ["a", "c"]  # the slot skipped b
    gates["c"].set()
    await asyncio.gather(a, c)
    assert b.cancelled()
    assert slots.free == 1


async def test_a_waiter_cancelled_after_it_was_handed_a_slot_gives_it_on() -> None:
    slots = Slots(1)
    assert slots.take() is None  # this test holds the one slot
    log: list[str] = []
    gates = {name: asyncio.Event() for name in "bc"}
    b = asyncio.create_task(_hold(slots, "b", log, gates["b"]))
    c = asyncio.create_task(_hold(slots, "c", log, gates["c"]))
    await asyncio.sleep(0.01)
    assert log == []
    slots.give()  # to b, whose wake-up is queued...
    b.cancel()  # ...when b is cancelled, in the same loop turn
    await asyncio.sleep(0.01)
    assert b.cancelled()
    assert log == ["c"]  # b passed the slot on instead of keeping it
    gates["c"].set()
    await c
    assert slots.free == 1
