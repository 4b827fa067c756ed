"""`taskhub serve --processes 2` from its first moment (docs/deployment.md, "While a partition
has no leader"): while the second child joins and the first hands it its share, a bare
``pub`` for every partition (no client retries) is accepted, never answered
``partition_unavailable``: a message for a partition being handed over waits for its leader.
Before, the first messages of the scale bench's generator were refused so."""

from __future__ import annotations

import asyncio
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import action_in as conftest_action_in
from tests.e2e.hubproc import HubProcess
from tests.e2e.test_processes import shares

P = 4


action_in = partial(conftest_action_in, partitions=P)


def settled(hub: HubProcess) -> bool:
    """Two children lead two partitions each, and each names every other leader."""
    try:
        seen = shares(hub)
    except OSError:
        return False
    every = sorted(p for share in seen.values() for p in share)
    return len(seen) == 2 and every == list(range(P))


async def publish_until_settled(hub: HubProcess, seconds_after: float) -> list[dict[str, Any]]:
    """Bare pubs, one at a time, to every partition in turn, from the moment the port answers
    until ``seconds_after`` past the children's split; every answer. A connection closed
    under it (a partition it followed tasks in moved: 1012) is opened again."""
    answers: list[dict[str, Any]] = []
    ref, done_at = 0, None
    while done_at is None or time.monotonic() < done_at:
        try:
            async with connect(hub.url + "/v1/ws", open_timeout=5) as ws:
                assert json.loads(await ws.recv())["op"] == "welcome"
                while done_at is None or time.monotonic() < done_at:
                    ref += 1
                    msg = {"op": "pub", "ref": ref, "action": action_in(ref % P), "payload": ref}
                    await ws.send(json.dumps(msg))
                    while (answer := json.loads(await asyncio.wait_for(ws.recv(), 20))).get(
                        "ref"
                    ) != ref:
                        pass
                    answers.append(answer)
                    if done_at is None and await asyncio.to_thread(settled, hub):
                        done_at = time.monotonic() + seconds_after
        except (ConnectionClosed, OSError):
            await asyncio.sleep(0.05)
    return answers


async def test_pubs_while_two_processes_split_the_partitions_are_all_accepted(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = HubProcess(
        store, None, "--partitions", str(P), "--processes", "2", env={"TASKHUB_LEASE": "2"}
    )
    hub.start(timeout=60)
    try:
        answers = await publish_until_settled(hub, 1.0)
    finally:
        hub.stop()
    refused = [a for a in answers if a["op"] != "ok"]
    assert not refused, refused[:3]
    assert len(answers) >= 2 * P  # it published through the whole hand-over
