"""The worker of examples/fastapi_app: a process of its own, started beside the web app.

    python -m examples.fastapi_app.worker

It works until it is stopped (Ctrl-C or SIGTERM); tasks it had not finished go back to the
hub, which offers them again.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from taskhub import Client, TaskContext


async def send_email(task: TaskContext) -> dict[str, Any]:
    message = await task.get_payload()
    await asyncio.sleep(0.01)  # an SMTP call would go here
    return {"sent_to": message["to"]}


async def make_thumbnail(task: TaskContext) -> str:
    image = await task.get_payload()
    if image["width"] <= 0:
        raise ValueError(f"width must be positive, not {image['width']}")
    await asyncio.sleep(0.01)  # the resizing would go here
    return f"{image['url']}?w={image['width']}"


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Client(
        os.environ.get("TASKHUB_URL", "ws://127.0.0.1:8080"),
        name=os.environ.get("TASKHUB_NAME", "worker"),
        key=os.environ.get("TASKHUB_KEY", ""),
    ) as client:
        await client.sub("email:send", send_email, concurrency=8)
        await client.sub("img:thumbnail", make_thumbnail, concurrency=2)
        print("worker ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
