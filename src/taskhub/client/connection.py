"""One logical connection to a hub: reconnects with backoff, batches outgoing messages.

Messages sent in one event-loop turn leave as one frame. Requests that want an answer carry a
``ref`` and get a future (:meth:`Connection.request`), or name an object that is told of the
answer (:meth:`Connection.post`, what a ``pub`` uses: no future and no callback per task);
when the connection drops, those fail with :class:`ConnectionClosed` and the owner (the
:class:`Client`) restores its subscriptions and followed tasks on the next connection.

With a :class:`Reader` (:meth:`Connection.share_reading`: a worker's handler loop) another
thread reads the socket too: what it reads goes through :meth:`Inbox.receive`, which shows
the messages to that thread first, then queues them, in order, for this loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import os
import random
import socket
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import msgspec
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidHandshake, InvalidStatus

from taskhub.client import retry, typed
from taskhub.client.outbox import BATCH_ITEMS, BatchAnswer, Entry, QueuedPub, take
from taskhub.client.retry import RETRIED, Resend
from taskhub.client.wire import Wire, dial
from taskhub.errors import (
    AuthenticationFailed,
    ConnectionClosed,
    FrameTooLarge,
    TaskHubError,
    from_wire,
)
from taskhub.protocol import WS_PATH
from taskhub.version import __version__

log = logging.getLogger("taskhub.client")
Message = dict[str, Any]
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class Receiver(Protocol):
    """What :meth:`Connection.post` tells of the answer to a request."""

    def feed_answer(self, reply: Message) -> None:
        """The hub's ``ok`` or ``error``, called as it is read (before the rest of its frame)."""

    def feed_unanswered(self, exc: BaseException) -> None:
        """No answer will come: the connection dropped, the client closed, or it was not sent."""


class PubReceiver(Receiver, Protocol):
    """What :meth:`Connection.post_pub` tells of the answer: also an accepted item of an
    answer read as structs (client/typed.py)."""

    def feed_accepted(self, task_id: str, created: bool | None, pooled: bool) -> None:
        """The hub stored the task as ``task_id`` (``created`` False: a ``key=`` seen before;
        ``pooled``: no worker group subscribed)."""


class Reader(Protocol):
    """Another thread that reads a connection's socket (see :meth:`Connection.share_reading`).
    Both methods are called on the connection's loop."""

    def attach(self, conn: Connection, ws: Wire) -> None:
        """Start reading ``ws`` (with ``conn.inbox.receive``), from a duplicate of ``ws.fd`` made
        now, before this call returns."""

    def detach(self, ws: Wire) -> None:
        """``ws`` was lost: stop reading it."""


# Called on the reading thread with the messages of each frame it read (the wire's lock held:
# it must not write); returns what to queue for the connection's loop, in their place: the
# messages, or a function to call there instead of dispatching one.
Tap = Callable[[list["Message"]], list["Message | Callable[[], None]"]]
Waiter = asyncio.Future[Message] | Receiver | QueuedPub


class Inbox:
    """What is read on any thread (shared reading), in the order read, for the connection's
    loop: messages dispatched there (``dispatch``), or what a reader's ``tap`` put in their
    place (called there)."""

    def __init__(self, dispatch: Callable[[Message], None]) -> None:
        self._dispatch = dispatch
        self._items: deque[Message | Callable[[], None]] = deque()
        self.thread = 0  # the connection's loop's, once it opens

    def receive(self, ws: Wire, fd: int, tap: Tap | None = None) -> bool:
        """From any thread, when ``fd`` (a duplicate of ``ws``'s socket) is readable: read,
        show each frame's messages to ``tap`` (on this thread), and queue them (or what
        ``tap`` puts in their place) for the connection's loop. On that loop they are
        dispatched now; from another thread the caller has :meth:`drain` called there
        (once for several reads, when it suits it). False once ``ws`` has ended: stop
        reading it."""
        with ws.lock:
            for frame in ws.receive_from(fd):
                msgs = decode_frame(frame)
                self._items.extend(msgs if tap is None else tap(msgs))
            ended = ws.ended
        if threading.get_ident() == self.thread:
            self.drain()
        return not ended

    @property
    def received(self) -> bool:
        """Something read on another thread waits for :meth:`drain`."""
        return bool(self._items)

    def drain(self) -> None:
        """On the connection's loop: dispatch what was read, in order."""
        items = self._items
        while items:
            item = items.popleft()
            if isinstance(item, dict):
                self._dispatch(item)
            else:
                item()


def decode_frame(frame: str | bytes | bytearray | memoryview) -> list[Message]:
    """A frame's messages (a frame holds one, or a list of them)."""
    try:
        data = _decoder.decode(frame)
    except msgspec.DecodeError:
        log.error("the hub sent a frame that is not JSON; ignored")
        return []
    return data if isinstance(data, list) else [data]


def ws_url(url: str) -> str:
    """Accept ``ws://host:port``, ``http://host:port`` or a URL that already has the path."""
    if url.startswith("http://"):
        url = "ws://" + url[7:]
    elif url.startswith("https://"):
        url = "wss://" + url[8:]
    if not url.rstrip("/").endswith(WS_PATH):
        url = url.rstrip("/") + WS_PATH
    return url


# A long burst of messages in one loop turn leaves in frames of about this size while it is
# still being made, rather than all when the turn ends: the hub starts on the first frames while
# the caller goes on (publishing, or creating a task per handle to collect the results).
EARLY_SEND = 64 * 1024


class Connection:
    def __init__(
        self,
        urls: list[str],
        *,
        name: str,
        key: str,
        on_message: Callable[[Message], None],
        on_connect: Callable[[], Awaitable[None]],
        max_backoff: float = 5.0,
        connect_timeout: float = 10.0,
        ping_interval: float = 5.0,
        max_frame: int = 16 * 1024 * 1024,
        ssl: Any = None,
    ) -> None:
        self.urls = [ws_url(u) for u in urls]
        self.name = name
        self.key = key
        self.on_message = on_message
        self.typed: typed.Reader | None = None  # what reads frames as structs, if any
        self.on_connect = on_connect
        self.max_backoff = max_backoff
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.max_frame = max_frame
        self.ssl = ssl
        self.welcome: Message = {}
        # The largest frame the hub takes: its welcome's max_frame, else our own setting
        # (kept with the welcome, not looked up in it per message sent).
        self.frame_limit = max_frame
        # The loop the connection runs on, known from open(): asyncio.get_running_loop() costs
        # a getpid() system call, too much to pay for every publish.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connected = asyncio.Event()
        self.up = False  # connected.is_set(), read without a call (a publisher's, per task)
        self._ws: Wire | None = None  # the WebSocket while connected
        # Messages are encoded as they are queued: the bytes hold no references, so a burst of
        # publishes leaves nothing behind for the garbage collector until the next flush.
        # Batchable runs are made into batched messages at the flush (client/outbox.py).
        self._outbox: list[Entry] = []
        self._outbox_size = 0
        self._flush_scheduled = False
        # Frames made while the transport was full (Wire.paused), written in order when it
        # takes data again: a frame made later never overtakes them.
        self._held: list[bytes] = []
        self._keepalive: asyncio.TimerHandle | None = None
        self._refs = itertools.count(1)
        self._pending: dict[int, Waiter] = {}
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._url_index = 0
        # Shared reading (share_reading): messages read on any thread, in the order read,
        # dispatched on this loop; a thread other than this loop's wakes it once per batch.
        self._reader: Reader | None = None
        self._shared: Wire | None = None  # the wire read so, while connected
        self.inbox = Inbox(self._dispatch_one)

    # --- life --------------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect once (raising what went wrong), then keep reconnecting in the background."""
        self.loop = asyncio.get_running_loop()
        self.inbox.thread = threading.get_ident()
        deadline = self.loop.time() + self.connect_timeout
        delay = 0.05
        refused: BaseException | None = None  # the last attempt that got an answer
        while True:
            try:
                # Each attempt gets what is left of the deadline, not a whole connect_timeout.
                ws = await self._dial(max(0.001, deadline - self.loop.time()))
                break
            except AuthenticationFailed:
                raise
            except TaskHubError:
                raise
            except (OSError, InvalidHandshake, WsClosed, TimeoutError) as exc:
                if not isinstance(exc, TimeoutError):
                    refused = exc
                if asyncio.get_running_loop().time() + delay > deadline:
                    # A last attempt that ran out of time says less than what the hub
                    # answered before it (a 1013 "no leader yet", a refused upgrade).
                    said = exc if refused is None or refused is exc else f"{refused}; then {exc}"
                    raise ConnectionClosed(
                        f"could not connect to {', '.join(self.urls)}: {said}"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        self._runner = asyncio.create_task(self._run(ws), name="taskhub-client")
        await self.connected.wait()

    async def close(self) -> None:
        self._closing = True
        self._flush()
        self.connected.clear()  # from now on post() refuses at once
        self.up = False
        ws = self._ws
        if ws is not None:
            for frame in self._held if ws.open else ():  # before the close frame, whatever
                ws.send_text(frame)  # the transport holds
            self._held = []
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        self._fail_pending(ConnectionClosed("the client was closed"))

    async def _dial(self, timeout: float | None = None) -> Wire:
        url = self.urls[self._url_index % len(self.urls)]
        self._url_index += 1
        try:
            ws, frame = await dial(
                url,
                authorization=f"Bearer {self.name}:{self.key}",
                max_size=self.max_frame,
                ssl=self.ssl,
                timeout=self.connect_timeout if timeout is None else timeout,
            )
        except InvalidStatus as exc:
            raise ConnectionClosed(f"{url} refused the WebSocket handshake: {exc}") from None
        except WsClosed as exc:
            # e.g. 1013 "try again later" from a hub whose cluster has no leader yet
            raise ConnectionRefusedError(f"{url} closed the connection: {exc}") from None
        first = _decoder.decode(frame)
        if isinstance(first, dict) and first.get("op") == "error":
            await ws.close()
            raise from_wire(first)
        if not (isinstance(first, dict) and first.get("op") == "welcome"):
            await ws.close()
            raise ConnectionClosed(f"{url} did not greet with a welcome message: {first!r}")
        self.welcome = first
        self.frame_limit = int(first.get("max_frame", self.max_frame))
        return ws

    async def _run(self, ws: Wire | None) -> None:
        delay = 0.05
        while not self._closing:
            if ws is None:
                try:
                    ws = await self._dial()
                    delay = 0.05
                except (TaskHubError, OSError, InvalidHandshake, WsClosed, TimeoutError) as exc:
                    log.warning("reconnect failed (%s); next try in %.2fs", exc, delay)
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, self.max_backoff)
                    continue
            await self._serve(ws)
            ws = None
            self._fail_pending(ConnectionClosed("the connection to the hub was lost"))
            if not self._closing:
                log.warning("connection to the hub lost; reconnecting")

    async def _serve(self, ws: Wire) -> None:
        """Use ``ws`` until it is lost: restore the client's state, send, keep it alive."""
        loop = asyncio.get_running_loop()
        self._ws = ws
        ws.on_resume = self._send_held
        ws.take_frames(self._dispatch)  # from now on; the welcome was read by _dial
        if self._reader is not None and ws.share_reading():
            self._shared = ws  # read by the reader, or here when read_here(True) says so
            self._reader.attach(self, ws)
        self._keepalive = loop.call_later(self.ping_interval, self._ping, ws)
        self.send(hello())  # first on every connection: the hub forgets it on a drop
        try:
            await self.on_connect()
        except Exception:
            log.exception("restoring state after connecting failed")
        self.connected.set()
        self.up = True
        self._flush()
        try:
            await asyncio.shield(ws.lost)
        finally:
            self._keepalive.cancel()
            self.connected.clear()
            self.up = False
            if self._shared is ws:
                self._shared = None
                if self._reader is not None:
                    self._reader.detach(ws)
                self.inbox.drain()  # what was read before the end, before failing what waits
            self._ws = None
            self._held = []  # never written: their requests fail with the others

    def _ping(self, ws: Wire) -> None:
        """The keepalive: a ping every ping_interval; one unanswered by the next fails the
        connection (it is then dialled again). Pings run here, on the connection's loop."""
        if ws.keepalive() and not ws.lost.done():
            loop = asyncio.get_running_loop()
            self._keepalive = loop.call_later(self.ping_interval, self._ping, ws)

    # --- shared reading --------------------------------------------------------------------
    def share_reading(self, reader: Reader) -> None:
        """Before :meth:`open`: let ``reader`` (another thread) read the socket of every
        connection from now on, except over TLS (read by this loop only). This loop reads
        it too while :meth:`read_here` says so (the reader is busy)."""
        self._reader = reader

    def read_here(self, on: bool) -> None:
        """On the connection's loop: read the shared socket here too (``on``), or leave it to
        the reader. Both may read at once: the wire's lock keeps the bytes in order."""
        ws = self._shared
        if ws is not None:
            ws.read_on_loop(functools.partial(self._read_here, ws) if on else None)

    def _read_here(self, ws: Wire) -> None:
        fd = ws.fd
        if fd is None or not self.inbox.receive(ws, fd):
            ws.read_on_loop(None)

    def _dispatch(self, frame: str | bytes | bytearray | memoryview) -> None:
        if self.inbox.received:  # read elsewhere before: those first
            self.inbox.drain()
        if self.typed is not None and self.typed.took(frame):
            return  # offers or task events read as structs (client/typed.py)
        on_message = self.on_message
        for msg in decode_frame(frame):
            if "ref" in msg:  # an answer, maybe
                self._dispatch_one(msg)
                continue
            try:  # _dispatch_one's steps, without a call per event (a publisher's most)
                on_message(msg)
            except Exception:
                log.exception("handling %s from the hub failed", msg.get("op"))

    def _dispatch_one(self, msg: Message) -> None:
        ref = msg.get("ref")
        if ref is not None and ((op := msg.get("op")) == "ok" or op == "error"):
            waiter = self._pending.pop(ref, None)
            if waiter is not None and _answer(self, waiter, msg, op):
                return
        try:
            self.on_message(msg)
        except Exception:
            log.exception("handling %s from the hub failed", msg.get("op"))

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        # Requests still queued are failed below: they must not go out on the next connection.
        queued, self._outbox = self._outbox, []
        for part in queued:
            if isinstance(part, tuple):  # a pub
                _fail(part[1], exc)
            elif "ref" not in _decoder.decode(part):
                self._outbox.append(part)
        self._outbox_size = sum(len(part) for part in self._outbox if isinstance(part, bytes))
        for waiter in pending.values():
            _fail(waiter, exc)

    # --- sending -----------------------------------------------------------------------------
    def send(self, msg: Message | bytes, *, own: bool = False) -> None:
        """Queue a message; everything queued in one loop turn leaves as one frame. Raises at
        once, sending nothing, if ``msg`` cannot be encoded as JSON (``TypeError``) or is too
        large for the hub's frames (:class:`FrameTooLarge`): nobody waits for an answer to
        it, so later would be too late to say so. ``own``: the client made ``msg`` of short
        strings and integers only (an ack, a pickup, a release), so it skips those checks
        (:func:`encode`'s costs as much as the encoding). Bytes: a message already encoded
        and checked (:func:`encode_return`)."""
        if own:
            part = _encoder.encode(msg)
        else:  # checked as JSON and against the frame limit (a worker's result, per task)
            part = msg if type(msg) is bytes else encode(msg)  # type: ignore[arg-type]
            if len(part) > self.frame_limit:
                raise _not_sent(_decoder.decode(part).get("op"), len(part), self.frame_limit)
        # _queue's steps, without its call (a worker sends two messages per task)
        self._outbox.append(part)
        self._outbox_size += len(part)
        if self._outbox_size >= EARLY_SEND or not self._flush_scheduled:
            self._queued()

    def send_now(self, msg: Message | bytes) -> bool:
        """Thread-safe: from a thread other than the connection's loop, write ``msg`` at once,
        in a frame of its own, without waking the loop (a worker's handler thread sends its
        result so). Only while nothing made earlier waits to be written (no frame held for a
        full transport, nothing unwritten in it) and not over TLS; False: nothing was sent,
        and ``msg`` should go through :meth:`send` on the loop (which also reports what
        cannot be sent)."""
        return self.send_all_now([msg])

    def send_all_now(self, msgs: Sequence[Message | bytes], *, own: bool = False) -> bool:
        """:meth:`send_now` for several messages, in one frame (all or none); ``own`` and
        bytes as for :meth:`send`."""
        ws = self._ws
        if ws is None or self._held or not self.connected.is_set():
            return False
        try:
            if own:
                part = _join([_encoder.encode(m) for m in msgs])
            else:
                part = _join([m if isinstance(m, bytes) else encode(m) for m in msgs])
        except UNSENDABLE:
            return False
        if len(part) > self.frame_limit:
            return False
        return ws.send_text_now(part)

    def _queue(self, part: bytes, entry: Entry | None = None) -> None:
        self._outbox.append(part if entry is None else entry)
        # A pub queued alone gets its `,"ref":N` at the flush: counted so, a burst's frames
        # stay near EARLY_SEND (in a batch it takes less).
        self._outbox_size += len(part) if entry is None else len(part) + 16
        if self._outbox_size >= EARLY_SEND or not self._flush_scheduled:
            self._queued()

    def _queued(self) -> None:
        """Something was queued: send now if the outbox holds EARLY_SEND bytes, else flush
        at the end of this loop turn (once per turn)."""
        if self._outbox_size >= EARLY_SEND:
            self._send_out()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            (self.loop or asyncio.get_running_loop()).call_soon(self._flush)

    def request(self, msg: Message) -> asyncio.Future[Message]:
        """Send with a ``ref``; the future gets the hub's ``ok`` or raises its ``error``."""
        fut: asyncio.Future[Message] = (self.loop or asyncio.get_running_loop()).create_future()
        self.post(msg, fut)
        return fut

    def post(self, msg: Message, waiter: asyncio.Future[Message] | Receiver) -> None:
        """Send with a ``ref``; the answer goes to ``waiter``: a future (as :meth:`request`), or
        a :class:`Receiver`, told synchronously as the answer is read, before the rest of its
        frame: a ``pub`` answer and the task's first events can share one frame, and the
        handle must be known before those events are dispatched (a future's callbacks run a
        loop turn later)."""
        if self._closing and not self.connected.is_set():
            raise ConnectionClosed("the client is closed")
        if msg["op"] in RETRIED and type(waiter) is not Resend:  # client/retry.py
            waiter = Resend(msg, waiter)
        ref = next(self._refs)
        msg["ref"] = ref
        part = encode(msg)  # first: a message that cannot be encoded is not pending
        self._pending[ref] = waiter
        self._queue(part)

    def post_pub(self, msg: Message, receiver: PubReceiver, part: bytes | None = None) -> None:
        """Send a ``pub`` (``part``: ``msg`` already encoded); its answer goes to
        ``receiver`` as for :meth:`post`. Several in one loop turn leave as one ``pubs``
        message when the hub takes batched messages."""
        if self._closing and not self.connected.is_set():
            raise ConnectionClosed("the client is closed")
        if part is None:
            # Its ref comes at the flush (client/outbox.py); one too large for a frame fails
            # its receiver there, as a request's does (_too_large).
            part = encode(msg)
        # _queue's steps, without its call (per task)
        self._outbox.append((part, receiver, 0))
        self._outbox_size += len(part) + 16  # its `,"ref":N` (less in a batch)
        if self._outbox_size >= EARLY_SEND or not self._flush_scheduled:
            self._queued()

    def requeue(self, entry: QueuedPub) -> None:
        """Queue a ``pub`` again, as :meth:`post_pub` queued it (client/retry.py)."""
        if self._closing and not self.connected.is_set():
            raise ConnectionClosed("the client is closed")
        self._queue(entry[0], entry)

    def _batch(self) -> int:
        """Items per batched message the hub takes (its welcome's ``max_batch``); 0: none."""
        return min(BATCH_ITEMS, int(self.welcome.get("max_batch", 0)))

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._send_out()

    def _send_out(self) -> None:
        ws = self._ws
        if not self._outbox or ws is None or not self.connected.is_set():
            return
        queued, self._outbox = self._outbox, []
        self._outbox_size = 0
        limit = self.frame_limit
        out = take(queued, batch=self._batch(), limit=limit, refs=self._refs, pending=self._pending)
        too_large = functools.partial(_too_large, self._pending)
        frames = _frames(out, sum(map(len, out)), limit, too_large)
        if self._held or ws.paused or not ws.open:
            self._held.extend(frames)  # behind the frames already waiting
            return
        for i, frame in enumerate(frames):
            ws.send_text(frame)
            if ws.paused:  # the transport is full now: the rest waits for it to drain
                self._held.extend(frames[i + 1 :])
                return

    def _send_held(self) -> None:
        """The transport takes data again: write the frames that waited, in order."""
        ws = self._ws
        while self._held and ws is not None and ws.open and not ws.paused:
            ws.send_text(self._held.pop(0))

    def answered(self, answer: typed.PubsAnswer) -> bool:
        """The answer to a ``pubs`` read as structs (client/typed.py), handed to its batch's
        receivers; False if its request is not a ``pubs`` (then read it as a dict)."""
        waiter = self._pending.get(answer.ref)
        if type(waiter) is not BatchAnswer:
            return False
        del self._pending[answer.ref]
        waiter.feed_items(answer.items, self)
        return True


def _too_large(pending: dict[int, Waiter], part: bytes, limit: int) -> None:
    """A message too large for a frame: its request fails (else it is logged)."""
    msg = _decoder.decode(part)
    exc = _not_sent(msg.get("op"), len(part), limit)
    waiter = pending.pop(msg.get("ref", -1), None)
    if waiter is None or (isinstance(waiter, asyncio.Future) and waiter.done()):
        log.error("%s", exc)
    else:
        _fail(waiter, exc)


def encode(msg: Message) -> bytes:
    """``msg`` as JSON, or raise naming what JSON cannot carry and where (docs/decisions.md,
    "Payloads are plain JSON"): NaN and infinities (``ValueError``), and any value that is not
    a dict with string keys, list, tuple, str, int, float, bool or None (``TypeError``), such
    as a datetime, UUID, Decimal, set or bytes. msgspec would write NaN as null and those
    types as strings or lists: the data would arrive changed without a word.

    The check costs one decode and one comparison, both in C: a message that comes back
    equal carried over as it is. Only one that does not is walked, to find what changed (a
    tuple comes back as a list, which is allowed, as ``json.dumps`` does)."""
    try:
        part = _encoder.encode(msg)
    except TypeError:  # a type msgspec does not know: say where it is
        _refuse_not_json(msg)
        raise
    if _decoder.decode(part) != msg:
        _refuse_not_json(msg)
    return part


def encode_pub(action: str, payload: Any) -> bytes:
    """``encode({"op": "pub", "action": action, "payload": payload})``, the same bytes and
    the same refusals, in less work: only the payload is decoded and compared (the rest is
    the client's own strings, and a valid action needs no escaping); anything that does not
    come back equal is left to :func:`encode`, which names what JSON cannot carry."""
    try:
        body = _encoder.encode(payload)
        if _decoder.decode(body) == payload:
            head = _PUB_HEADS.get(action)
            if head is None:
                head = _pub_head(action)
            return head + body + b"}"
    except Exception:
        pass  # encode says what is wrong, and how (TypeError, ValueError...)
    return encode({"op": "pub", "action": action, "payload": payload})


def encode_return(task_id: str, attempt: int, result: Any) -> bytes:
    """``encode({"op": "return", "task": task_id, "attempt": attempt, "result": result})``,
    the same bytes and the same refusals, checking only the result (as :func:`encode_pub`)."""
    try:
        body = _encoder.encode(result)
        if type(attempt) is int and _decoder.decode(body) == result:
            task = _encoder.encode(task_id)
            return b'{"op":"return","task":%b,"attempt":%d,"result":%b}' % (task, attempt, body)
    except Exception:
        pass  # encode says what is wrong, and how (TypeError, ValueError...)
    return encode({"op": "return", "task": task_id, "attempt": attempt, "result": result})


# A pub's JSON up to its payload, by action (at most _MAX_HEADS actions remembered).
_PUB_HEADS: dict[str, bytes] = {}
_MAX_HEADS = 1024


def _pub_head(action: str) -> bytes:
    if len(_PUB_HEADS) >= _MAX_HEADS:
        _PUB_HEADS.clear()
    head = _PUB_HEADS[action] = b'{"op":"pub","action":' + _encoder.encode(action) + b',"payload":'
    return head


def _refuse_not_json(msg: Message) -> None:
    problem = _not_json(msg, "")
    if problem is not None:
        raise type(problem)(f"{msg.get('op')} message: {problem}; it was not sent") from None


def _not_json(value: Any, where: str) -> TypeError | ValueError | None:
    """What in ``value`` JSON cannot carry, named by its path (``payload['at'][0]``)."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return ValueError(f"{where} is float({str(value)!r}): JSON has no NaN or Infinity")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return TypeError(
                    f"{where or 'the message'} has the key {k!r} ({type(k).__name__}): "
                    "JSON object keys are strings"
                )
            problem = _not_json(v, f"{where}[{k!r}]" if where else k)
            if problem is not None:
                return problem
        return None
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            problem = _not_json(v, f"{where}[{i}]")
            if problem is not None:
                return problem
        return None
    kind = type(value)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    hint = _HINTS.get(name, "convert it to JSON data (dict, list, str, int, float, bool, None)")
    return TypeError(f"{where} is a {name}, which JSON cannot carry: {hint}")


_HINTS = {
    "datetime.datetime": "send value.isoformat() (or value.timestamp())",
    "datetime.date": "send value.isoformat()",
    "datetime.time": "send value.isoformat()",
    "datetime.timedelta": "send value.total_seconds()",
    "uuid.UUID": "send str(value)",
    "decimal.Decimal": "send str(value) (exact) or float(value)",
    "set": "send a list, e.g. sorted(value)",
    "frozenset": "send a list, e.g. sorted(value)",
    "bytes": "send text, e.g. base64.b64encode(value).decode()",
    "bytearray": "send text, e.g. base64.b64encode(value).decode()",
}


# What sending a message raises when it cannot go at all (Connection.send): not JSON
# (TypeError, ValueError, RecursionError for a cyclic value), or too large for a frame.
UNSENDABLE = (TypeError, ValueError, RecursionError, FrameTooLarge)


def _not_sent(op: Any, size: int, limit: int) -> FrameTooLarge:
    return FrameTooLarge(
        f"{op} message of {size} bytes is over the hub's frame limit of {limit} bytes; "
        "it was not sent"
    )


def _frames(
    parts: list[bytes], size: int, limit: int, too_large: Callable[[bytes, int], None]
) -> list[bytes]:
    """Pack the encoded messages (``size`` bytes in all), in order, into as few frames as fit
    the hub's ``max_frame`` (``limit``); a message too big alone goes to ``too_large``."""
    if size + len(parts) + 1 <= limit:
        return [_join(parts)]  # the common case
    frames: list[bytes] = []
    chunk: list[bytes] = []
    size = 1  # of the frame `[a,b,...]` so far: 2 brackets, a comma between two parts
    for part in parts:
        if len(part) > limit:
            too_large(part, limit)
            continue
        if chunk and size + len(part) + 1 > limit:
            frames.append(_join(chunk))
            chunk, size = [], 1
        chunk.append(part)
        size += len(part) + 1
    if chunk:
        frames.append(_join(chunk))
    return frames


def _join(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"[" + b",".join(parts) + b"]"


def _answer(conn: Connection, waiter: Waiter, msg: Message, op: str) -> bool:
    """Hand the answer ``msg`` to ``waiter`` (or send its request again: client/retry.py);
    False for a future that has its result already (the message goes on as any other)."""
    if isinstance(waiter, tuple):  # a pub's: its receiver is a handle, never a future
        if op == "error" and retry.retryable(msg, waiter[2]):
            retry.later(conn, waiter, msg)
            return True
        waiter = waiter[1]
    elif isinstance(waiter, asyncio.Future):
        if waiter.done():
            return False
        if op == "ok":
            waiter.set_result(msg)
        else:
            waiter.set_exception(from_wire(msg))
        return True
    elif isinstance(waiter, Resend):
        if op == "error" and retry.retryable(msg, waiter.tries):
            retry.later(conn, waiter, msg)
            return True
    elif isinstance(waiter, BatchAnswer):
        waiter.feed_answer(msg, conn)
        return True
    try:
        waiter.feed_answer(msg)
    except Exception:
        log.exception("handling the answer to request %s failed", msg.get("ref"))
    return True


def _fail(waiter: Waiter, exc: BaseException) -> None:
    if isinstance(waiter, asyncio.Future):
        if not waiter.done():
            waiter.set_exception(exc)
        return
    if isinstance(waiter, tuple):  # a pub's: its receiver
        waiter = waiter[1]
    try:
        waiter.feed_unanswered(exc)
    except Exception:
        log.exception("failing a request without an answer failed")


def hello() -> Message:
    """Who this client is, for the hub's dashboard (the protocol's optional ``hello``)."""
    return {
        "op": "hello",
        "client": "taskhub-python",
        "version": __version__,
        "host": socket.gethostname()[:255],
        "pid": os.getpid(),
        "batch": True,  # it reads batched messages (offers)
        "starts": True,  # its tasks' start events as one `starts` message (docs/protocol.md)
    }
