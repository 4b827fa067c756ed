"""Publishing tasks from a FastAPI app (docs/frameworks.md).

    uvicorn examples.fastapi_app.app:app          # the web app
    TASKHUB_NAME=worker taskhub worker examples.fastapi_app.worker   # its worker, beside it

One async client per process, opened in the app's lifespan and shared by every request: it
multiplexes any number of publishes and waits over one connection.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from taskhub import Client, TaskFailed
from taskhub.errors import TaskNotFound

RESULT_WAIT = 5.0  # seconds /thumbnail waits for its result before answering 504


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    client = Client(
        os.environ.get("TASKHUB_URL", "ws://127.0.0.1:8080"),
        name=os.environ.get("TASKHUB_NAME", "web"),
        key=os.environ.get("TASKHUB_KEY", ""),
    )
    async with client:  # connects at start-up (a wrong key fails the start), closes at the end
        app.state.taskhub = client
        yield


app = FastAPI(lifespan=lifespan)


def taskhub(request: Request) -> Client:
    client: Client = request.app.state.taskhub
    return client


TaskHub = Annotated[Client, Depends(taskhub)]


class Signup(BaseModel):
    email: str


class Thumbnail(BaseModel):
    url: str
    width: int


@app.post("/signup", status_code=202)
async def signup(body: Signup, hub: TaskHub) -> dict[str, Any]:
    """Fire and forget: answer as soon as the hub has stored the task."""
    handle = hub.pub("email:send", {"to": body.email, "template": "welcome"})
    return {"task": await handle.accepted()}


@app.get("/tasks/{task_id}")
async def task_status(task_id: str, hub: TaskHub) -> dict[str, Any]:
    """What a browser polls: the task's state and, once it succeeded, its result."""
    try:
        task = await hub.get(task_id)
    except TaskNotFound:
        raise HTTPException(404, f"no task {task_id}") from None
    return {"state": task["state"], "result": task["result"], "error": task["error"]}


@app.post("/thumbnail")
async def thumbnail(body: Thumbnail, hub: TaskHub) -> dict[str, Any]:
    """Wait for the result within the request, and say so when it takes too long."""
    handle = hub.pub("img:thumbnail", body.model_dump(), timeout=30)
    try:
        return {"thumbnail": await handle.get_result(timeout=RESULT_WAIT)}
    except TimeoutError:  # still running: the client can poll /tasks/{id}
        raise HTTPException(504, {"task": handle.id, "state": handle.state}) from None
    except TaskFailed as exc:  # the worker raised, or the task timed out or was cancelled
        raise HTTPException(502, {"task": handle.id, "error": str(exc)}) from None
