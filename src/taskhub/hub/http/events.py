"""Events over the ``/v1`` HTTP API: a task's events as Server-Sent Events (the stored ones,
then live ones) and broadcast events emitted to a topic. :class:`TaskEvents` hands the
lifecycle's task events to the requests waiting on a task (this stream, the result long poll,
the dashboard)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from pydantic.config import JsonDict

from taskhub.errors import TaskHubError
from taskhub.hub import writes
from taskhub.hub.http.deps import Caller, HubDep, error_responses, read_task
from taskhub.hub.hub import Hub
from taskhub.hub.views import event_view
from taskhub.lifecycle import Lifecycle, Task
from taskhub.records import TERMINAL_STATES, EventRecord

SSE_KEEPALIVE = 15.0  # a comment line this often keeps proxies from closing a quiet stream
TOPIC_SCHEMA: JsonDict = {"pattern": r"^[A-Za-z0-9_\-]+([/:.][A-Za-z0-9_\-]+)*$", "maxLength": 255}


class NotImplementedYet(TaskHubError):
    code = "not_implemented"


class EmitAccepted(BaseModel):
    topic: str
    delivered: int = Field(description="Connections it was queued for.")


class TaskEvents:
    """Hands the lifecycle's task events to the HTTP requests waiting on that task."""

    def __init__(self, hub: Hub) -> None:
        self._waiting: dict[str, set[Callable[[EventRecord], None]]] = {}
        # A lifecycle listener only while some request waits: most events have no waiter.
        self._hub = hub

    @property
    def _lcs(self) -> tuple[Lifecycle, ...]:
        return self._hub.lifecycles  # the partitions led here now

    def _on_event(self, task: Task, ev: EventRecord) -> None:
        fns = self._waiting.get(ev.task_id)
        if fns:
            for fn in tuple(fns):
                fn(ev)

    @contextlib.contextmanager
    def watch(self, task_id: str, fn: Callable[[EventRecord], None]) -> Iterator[None]:
        fns = self._waiting.setdefault(task_id, set())
        fns.add(fn)
        for lc in self._lcs:
            lc.listen(self._on_event, True)
        try:
            yield
        finally:
            fns.discard(fn)
            if not fns:
                self._waiting.pop(task_id, None)
                for lc in self._lcs:
                    lc.listen(self._on_event, bool(self._waiting))


def _events(request: Request) -> TaskEvents:
    events: TaskEvents = request.app.state.task_events
    return events


# The app's fan-out (``install`` puts one on ``app.state``), for the routes that wait on a task.
TaskEventsDep = Annotated[TaskEvents, Depends(_events)]


def _sse(ev: EventRecord) -> bytes:
    data = msgspec.json.encode(event_view(ev))
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (ev.seq, ev.type.encode(), data)


class _Sent:
    """Where one stream is: the seq of the last event it sent, and whether the task ended."""

    def __init__(self, after: int) -> None:
        self.seq = after
        self.ended = False

    def sse(self, events: Iterable[EventRecord]) -> Iterator[bytes]:
        """``events`` not sent yet (a later seq), up to the terminal one; a terminal one
        already sent (before ``Last-Event-ID``) ends the stream too."""
        for ev in events:
            if ev.seq > self.seq:
                self.seq = ev.seq
                yield _sse(ev)
            if ev.type in TERMINAL_STATES:
                self.ended = True
                return


async def event_stream(
    hub: Hub, events: TaskEvents, task_id: str, after: int
) -> AsyncIterator[bytes]:
    if hub.router.slot_of_task(task_id).local is None:  # another hub leads it: read there
        async for chunk in _linked_stream(hub, task_id, after):
            yield chunk
        return
    live: asyncio.Queue[EventRecord | None] = asyncio.Queue()  # None: the hub shuts down
    sent = _Sent(after)
    # On a shutdown the stream ends; an EventSource reconnects with Last-Event-ID.
    with events.watch(task_id, live.put_nowait), hub.long_wait(lambda: live.put_nowait(None)):
        # Listening first, then reading the store after a flush: no event falls in between;
        # the live ones already stored are skipped by seq.
        hub.lc_of(task_id).write_deferred(task_id)  # its offers too (Lifecycle.defer_offers)
        await hub.flush()
        for chunk in sent.sse(await hub.store_of(task_id).get_events(task_id)):
            yield chunk
        if sent.ended:
            return
        if hub.lc_of(task_id).get(task_id) is None and live.empty():
            # Ended before we listened, and its terminal event is not stored (removed by
            # retention). Had it ended while the store was read, its events would be in `live`.
            return
        while True:
            try:
                first = await asyncio.wait_for(live.get(), SSE_KEEPALIVE)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            got = [first]
            while not live.empty():
                got.append(live.get_nowait())
            batch = [ev for ev in got if ev is not None]
            if batch:
                await hub.flush()  # like the WebSocket: nothing is streamed before it is stored
            for chunk in sent.sse(batch):
                yield chunk
            if sent.ended or len(batch) < len(got):
                return  # the task ended, or the hub shuts down


async def _linked_stream(hub: Hub, task_id: str, after: int) -> AsyncIterator[bytes]:
    """The stream of a task another hub leads: one request over the link per step, each
    answered by that hub with the events stored after the last one sent (waiting up to the
    keep-alive interval for one)."""
    sent = _Sent(after)
    ending = asyncio.Event()
    with hub.long_wait(ending.set):  # this hub shuts down: the stream ends (as here)
        while not ending.is_set():
            asking = asyncio.ensure_future(
                writes.task_events(hub, task_id, sent.seq, SSE_KEEPALIVE)
            )
            stopping = asyncio.ensure_future(ending.wait())
            try:
                await asyncio.wait({asking, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                if not asking.done():
                    asking.cancel()
            if not asking.done() or asking.cancelled() or asking.exception() is not None:
                return  # this hub shuts down, or the link broke: reconnect (Last-Event-ID)
            events, live = asking.result()
            for chunk in sent.sse(events):
                yield chunk
            if sent.ended:
                return
            if not events:
                if not live:
                    return  # ended, and its terminal event is not stored (retention)
                yield b": keep-alive\n\n"


def last_event_id(request: Request) -> int:
    """The seq an EventSource resumes after (its ``Last-Event-ID``); 0 for none or not a seq."""
    last = request.headers.get("last-event-id", "")
    return int(last) if last.isdigit() else 0


def sse_response(stream: AsyncIterator[bytes]) -> StreamingResponse:
    """``stream`` as ``text/event-stream``, neither cached nor buffered by a proxy."""
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


SSE_EVENT_SCHEMA: JsonDict = {
    "type": "object",
    "description": "One event: `id` is its seq, `event` its type, `data` a JSON object "
    "{task, seq, type, at, group, service, data}.",
    "properties": {
        "id": {"type": "string"},
        "event": {"type": "string"},
        "data": {"type": "string"},
    },
}

router = APIRouter(prefix="/v1")


@router.get(
    "/tasks/{task_id}/events",
    tags=["tasks"],
    summary="Stream a task's events (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`text/event-stream`: the stored events, then live ones, ending "
            "after the terminal event (`success`, `fail` or `end`).",
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        },
        **error_responses(_403="May not read the task's action.", _404="Unknown task."),
    },
)
async def task_events(
    task_id: str,
    request: Request,
    hub: HubDep,
    creds: Caller,
    events: TaskEventsDep,
) -> StreamingResponse:
    await read_task(hub, creds, task_id)
    return sse_response(event_stream(hub, events, task_id, last_event_id(request)))


@router.post(
    "/events/{topic:path}",  # the whole rest of the path: a topic may have a '/'
    status_code=202,
    response_model=EmitAccepted,
    tags=["events"],
    summary="Emit a broadcast event",
    responses=error_responses(
        _403="No permission for the topic.",
        _422="Bad topic name.",
        _501="This hub has no broadcast events yet.",
    ),
)
async def emit_event(
    topic: Annotated[str, Path(json_schema_extra=TOPIC_SCHEMA)],
    hub: HubDep,
    creds: Caller,
    data: Annotated[Any, Body()] = None,
) -> Any:
    """The JSON body is the event's data; it goes to every connection subscribed to the topic."""
    # From partition 0's hub, which holds the topics (over the link where it is another).
    return {"topic": topic, "delivered": await writes.emit(hub, creds, topic, data)}
