"""The worker of examples/fastapi_app: a process of its own, started beside the web app.

    TASKHUB_NAME=worker taskhub worker examples.fastapi_app.worker

It reads TASKHUB_URL, TASKHUB_NAME and TASKHUB_KEY (or --url, --name, --key). SIGTERM or
Ctrl-C stops it gracefully: it takes nothing new, lets running tasks finish within the grace
(--grace, 30 s) and hands the rest back to the hub, which offers them again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from taskhub import Worker
from taskhub.worker import SyncTask, Task

worker = Worker()


@worker.task("email:send", concurrency=8)
async def send_email(task: Task) -> dict[str, Any]:
    message = task.payload
    await asyncio.sleep(0.01)  # an SMTP call would go here
    return {"sent_to": message["to"]}


@worker.task("img:thumbnail", concurrency=2)
def make_thumbnail(task: SyncTask) -> str:  # a plain def runs in a thread of its own
    image = task.payload
    if image["width"] <= 0:
        raise ValueError(f"width must be positive, not {image['width']}")
    return f"{image['url']}?w={image['width']}"  # the resizing would go here
