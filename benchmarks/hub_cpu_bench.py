"""CPU per task of the hub's own work, without sockets: frames in, frames out.

    .venv/bin/python benchmarks/hub_cpu_bench.py --n 20000 --rounds 5

Builds a real hub (memory:// store unless --store says otherwise) with every listener the
server installs (dashboard, metrics, HTTP waiters, logs), feeds it the frames a publisher and
a worker would send (a burst of pubs, then the worker's returns in frames of 64, or
--frame; --flush-each commits after each frame instead of after all that are ready; with
--pickup a pickup before each, as the client sends when a handler waits), runs the commit
pipeline, and reports the hub's CPU microseconds per task (process time,
median of the rounds). With --batched the publisher's pubs go as ``pubs`` messages of 64 and
the worker's replies as ``returns`` (and ``pickups``), and the worker reads ``offers``
(docs/protocol.md, "Batched messages"), as TaskHub's clients do (process time,
median of the rounds). The WebSocket layer is left out on purpose: this isolates the part of
the hub the lifecycle, the store and the listeners cost, so changes to them can be compared
on a busy 2-core machine (CPU time barely depends on what else runs).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import itertools
import logging
import statistics
import sys
import time
from typing import Any

import msgspec

from taskhub import protocol as p
from taskhub.hub.app import create_app
from taskhub.hub.hub import Hub
from taskhub.ids import new_id
from taskhub.lifecycle import Clock, Credentials, Peer
from taskhub.logs import events_log, log_task_event
from taskhub.store import open_store

ACTION = "bench:echo"
_enc = msgspec.json.Encoder()


def _payload(i: int) -> dict[str, Any]:
    return {"id": i, "to": "someone@example.com", "subject": "hello", "n": [1, 2, 3]}


def _frame(msgs: list[dict[str, Any]], batched: bool, ref: bool = False) -> bytes:
    """``msgs`` (one kind) as a frame: an array, or with --batched batched messages of 64;
    ``ref``: a ref per message, or per batch."""
    if not batched:
        return _enc.encode([{**m, "ref": i + 2} for i, m in enumerate(msgs)] if ref else msgs)
    out = []
    for i in range(0, len(msgs), 64):
        items = [{k: v for k, v in m.items() if k != "op"} for m in msgs[i : i + 64]]
        batch = {"op": msgs[0]["op"] + "s", "items": items}
        if ref:
            batch["ref"] = i + 2
        out.append(batch)
    return _enc.encode(out)


def _replies(
    offers: list[dict[str, Any]], per_frame: int, pickup: bool, batched: bool
) -> list[bytes]:
    """The worker's frames for ``offers``: per ``per_frame`` of them, (pickups and) returns,
    as the Python client sends them (batched: a run of pickups, then one of returns)."""
    frames = []
    for i in range(0, len(offers), per_frame):
        chunk = offers[i : i + per_frame]
        if batched:
            msgs: list[dict[str, Any]] = []
            if pickup:
                picks = [{"task": m["task"], "attempt": m["attempt"]} for m in chunk]
                msgs.append({"op": "pickups", "items": picks})
            rets = [
                {"task": m["task"], "attempt": m["attempt"], "result": m["payload"]} for m in chunk
            ]
            msgs.append({"op": "returns", "items": rets})
            frames.append(_enc.encode(msgs))
            continue
        reply = []
        for m in chunk:
            if pickup:  # the Python client leaves it out when the handler is done at once
                reply.append({"op": "pickup", "task": m["task"], "attempt": m["attempt"]})
            reply.append(
                {
                    "op": "return",
                    "task": m["task"],
                    "attempt": m["attempt"],
                    "result": m["payload"],
                    "ref": 1,
                }
            )
        frames.append(_enc.encode(reply))
    return frames


def _offers(got: Any) -> list[dict[str, Any]]:
    """The offers in a decoded frame to the worker: single, or the items of ``offers``."""
    msgs = got if isinstance(got, list) else [got]
    out = [m for m in msgs if m["op"] == "offer"]
    for m in msgs:
        if m["op"] == "offers":
            out.extend(m["items"])
    return out


def fixed_clock() -> Clock:
    """A clock that advances 10 us per reading, for the hub and its ids (``time.time_ns``):
    ids, event counts per second and the charts' sampling then take the same paths in every
    run, so instruction counts of two versions compare within ~0.1 % instead of ~1 %."""
    time.time_ns = functools.partial(next, itertools.count(1_700_000_000 * 10**9, 10_000))
    return functools.partial(next, itertools.count(1_700_000_000.0, 1e-5))


async def one_round(
    store_url: str,
    n: int,
    pickup: bool = False,
    per_frame: int = 64,
    flush_each: bool = False,
    batched: bool = False,
    clock: Clock | None = None,
) -> float:
    hub = Hub(open_store(store_url)) if clock is None else Hub(open_store(store_url), clock=clock)
    if events_log.isEnabledFor(logging.DEBUG):  # as Server._make_hub
        hub.lc.listeners.append(log_task_event)
    create_app(hub)  # installs the listeners the server has (dashboard, metrics, waiters)
    await hub.start()
    frames: dict[Peer, list[bytes]] = {}
    publisher = Peer(new_id(), Credentials("publisher"))
    worker = Peer(new_id(), Credentials("worker"))
    for peer in (publisher, worker):
        frames[peer] = []
        hub.attach(peer, frames[peer].append)
    worker.batch = batched  # as its hello would say
    publisher.starts = batched  # the Python client's hello says it too (its "starts")
    sub = {"op": "sub", "action": ACTION, "ref": 1, "concurrency": 64}
    hub.handle(worker, p.decode_frame(_enc.encode(sub))[0])
    await hub.flush()
    frames[worker].clear()
    pubs = [{"op": "pub", "action": ACTION, "payload": _payload(i)} for i in range(n)]
    frame = _frame(pubs, batched, ref=True)
    dec = msgspec.json.Decoder()
    gc.collect()
    started = time.process_time()
    for msg in p.decode_frame(frame):
        hub.handle(publisher, msg)
    hub.kick()
    await hub.flush()
    done = 0
    worker_side = 0.0  # time spent playing the worker: decoding offers, encoding replies
    while done < n:
        t0 = time.process_time()
        out = frames[worker]
        frames[worker] = []
        hub.senders[worker] = frames[worker].append
        offers = []
        for sent in out:
            offers.extend(_offers(dec.decode(sent)))
        if not offers:
            await hub.flush()
            continue
        batches = _replies(offers, per_frame, pickup, batched)
        done += len(offers)
        worker_side += time.process_time() - t0
        for reply_frame in batches:
            for msg in p.decode_frame(reply_frame):
                hub.handle(worker, msg)
            hub.kick()
            if flush_each:  # a commit round per frame, as when the hub keeps up with the worker
                await hub.flush()
        await hub.flush()
    seconds = time.process_time() - started - worker_side
    await hub.stop()
    return seconds * 1e6 / n


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", default="memory://")
    parser.add_argument(
        "--pickup",
        action="store_true",
        help="send pickup + return per task, as a worker whose handler waits does",
    )
    parser.add_argument("--frame", type=int, default=64, help="worker replies per frame")
    parser.add_argument(
        "--flush-each",
        action="store_true",
        help="commit after each worker frame (more, smaller batches: the store's per-batch cost)",
    )
    parser.add_argument(
        "--batched",
        action="store_true",
        help="batched messages (pubs, returns, pickups; offers to the worker), as the clients",
    )
    parser.add_argument(
        "--fixed-clock",
        action="store_true",
        help="a clock advancing 10 us per reading (deterministic, for instruction counts)",
    )
    args = parser.parse_args()
    clock = fixed_clock() if args.fixed_clock else None
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)  # as `taskhub serve` (server.py)
    figures = [
        await one_round(
            args.store, args.n, args.pickup, args.frame, args.flush_each, args.batched, clock
        )
        for _ in range(args.rounds)
    ]
    print(
        f"hub CPU per task ({args.store}, n={args.n}): median {statistics.median(figures):.1f} us "
        f"(rounds: {', '.join(f'{f:.1f}' for f in figures)})"
    )


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
    sys.exit(0)
