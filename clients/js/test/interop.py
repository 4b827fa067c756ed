"""The Python side of the interop tests (test/interop.test.mjs), run with the repo's venv.

``interop.py worker URL ACTION``: a Python worker; prints ``ready`` once subscribed.
``interop.py pub URL ACTION JSON``: publishes, prints ``{"result": ..., "updates": [...]}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from taskhub import Client
from taskhub.client.task import TaskContext


async def worker(url: str, action: str) -> None:
    async with Client(url, name="py-worker") as client:

        async def handle(task: TaskContext) -> dict[str, Any]:
            payload = await task.get_payload()
            await task.update({"py": "working"})
            return {"python_got": payload}

        await client.sub(action, handle)
        print("ready", flush=True)
        await asyncio.Event().wait()  # until the test stops this process


async def pub(url: str, action: str, payload: str) -> None:
    async with Client(url, name="py-pub") as client:
        updates: list[Any] = []
        handle = client.pub(action, json.loads(payload))
        handle.on("update", lambda h: updates.append(h.last_update))
        result = await handle.get_result()
        print(json.dumps({"result": result, "updates": updates}), flush=True)


if __name__ == "__main__":
    mode, url, action, *rest = sys.argv[1:]
    asyncio.run(worker(url, action) if mode == "worker" else pub(url, action, rest[0]))
