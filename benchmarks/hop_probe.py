"""Sequential round trips through one hub of several: for an action whose partition that hub
leads ("own") and, when there is one, an action another hub leads ("across").

    python benchmarks/hop_probe.py --url ws://127.0.0.1:P --partitions 8 --led 0,2,5,7

One TaskHub client, connected to the hub at ``--url`` (``--led``: the partitions it leads, as
its ``/healthz`` lists them), works on both actions and publishes to them one task at a time:
the worker and the publisher are the same connection, so an "own" task never leaves that hub
unless the hub relays it, and an "across" task goes to the other leader and back. Issue 19
asks that adding hubs add no relay hop for a client whose partition its hub leads: the "own"
p50 with k hubs should stay that of one hub. Prints one ``{"kind": "result", ...}`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import emit, payload, percentile
from taskhub_bench import run

from taskhub import Client
from taskhub.partitions import partition_of


def pick(led: set[int], partitions: int, own: bool) -> str | None:
    """The first ``hop:N`` action whose partition is (own) or is not (across) in ``led``."""
    for n in range(10_000):
        action = f"hop:{n}"
        if (partition_of(action, "", partitions) in led) == own:
            return action
    return None


async def sequential(client: Client, action: str, n: int, timeout: float) -> list[float]:
    seconds = []
    for i in range(n):
        start = time.perf_counter()
        result = await asyncio.wait_for(client.pub(action, payload(i)).get_result(), timeout)
        if not (isinstance(result, dict) and result.get("id") == i):
            raise RuntimeError(f"{action}: task {i} came back as {result!r}")
        seconds.append(time.perf_counter() - start)
    return seconds


async def probe(args: argparse.Namespace) -> dict[str, Any]:
    led = {int(p) for p in args.led.split(",") if p != ""}
    actions = {"own": pick(led, args.partitions, True), "across": pick(led, args.partitions, False)}

    async def echo(task: Any) -> Any:
        return await task.get_payload()

    out: dict[str, Any] = {"partitions": args.partitions, "led": sorted(led)}
    async with Client(args.url, name="hop-probe") as client:
        for action in actions.values():
            if action is not None:
                await client.sub(action, echo, group="probe")
        for kind, action in actions.items():
            if action is None:
                continue  # one hub leads every partition: nothing is across
            await sequential(client, action, args.warmup, args.timeout)
            seconds = await sequential(client, action, args.seq, args.timeout)
            out[f"{kind}_action"] = action
            out[f"{kind}_p50_ms"] = round(percentile(seconds, 50) * 1000, 3)
            out[f"{kind}_p99_ms"] = round(percentile(seconds, 99) * 1000, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the hub to connect to")
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--led", required=True, help="the partitions that hub leads: 0,3,5")
    parser.add_argument("--seq", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    result: dict[str, Any] = {}

    async def go() -> None:
        result.update(await probe(args))

    run(go())
    emit("result", **result)


if __name__ == "__main__":
    main()
