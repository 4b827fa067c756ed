"""One logical connection to a hub: reconnects with backoff, batches outgoing messages.

Messages sent in one event-loop turn leave as one frame. Requests that want an answer carry a
``ref`` and get a future; when the connection drops, those futures fail with
:class:`ConnectionClosed` and the owner (the :class:`Client`) restores its subscriptions and
followed tasks on the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidHandshake, InvalidStatus

from taskhub.errors import (
    AuthenticationFailed,
    ConnectionClosed,
    FrameTooLarge,
    TaskHubError,
    from_wire,
)
from taskhub.protocol import WS_PATH

log = logging.getLogger("taskhub.client")
Message = dict[str, Any]
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def ws_url(url: str) -> str:
    """Accept ``ws://host:port``, ``http://host:port`` or a URL that already has the path."""
    if url.startswith("http://"):
        url = "ws://" + url[7:]
    elif url.startswith("https://"):
        url = "wss://" + url[8:]
    if not url.rstrip("/").endswith(WS_PATH):
        url = url.rstrip("/") + WS_PATH
    return url


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
        self.on_connect = on_connect
        self.max_backoff = max_backoff
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.max_frame = max_frame
        self.ssl = ssl
        self.welcome: Message = {}
        self.connected = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._outbox: list[Message] = []
        self._flush_scheduled = False
        self._refs = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._on_reply: dict[int, Callable[[Message], None]] = {}
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._url_index = 0

    # --- life --------------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect once (raising what went wrong), then keep reconnecting in the background."""
        deadline = asyncio.get_running_loop().time() + self.connect_timeout
        delay = 0.05
        while True:
            try:
                ws = await self._dial()
                break
            except AuthenticationFailed:
                raise
            except TaskHubError:
                raise
            except (OSError, InvalidHandshake, WsClosed, TimeoutError) as exc:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise ConnectionClosed(
                        f"could not connect to {', '.join(self.urls)}: {exc}"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        self._runner = asyncio.create_task(self._run(ws), name="taskhub-client")
        await self.connected.wait()

    async def close(self) -> None:
        self._closing = True
        self._flush()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        self._fail_pending(ConnectionClosed("the client was closed"))

    async def _dial(self) -> ClientConnection:
        url = self.urls[self._url_index % len(self.urls)]
        self._url_index += 1
        try:
            ws = await connect(
                url,
                additional_headers={"Authorization": f"Bearer {self.name}:{self.key}"},
                max_size=self.max_frame,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_interval,
                open_timeout=self.connect_timeout,
                ssl=self.ssl,
                compression=None,
            )
        except InvalidStatus as exc:
            raise ConnectionClosed(f"{url} refused the WebSocket handshake: {exc}") from None
        try:
            first = _decoder.decode(await ws.recv(decode=False))
        except WsClosed as exc:
            # e.g. 1013 "try again later" from a hub whose cluster has no leader yet
            raise ConnectionRefusedError(f"{url} closed the connection: {exc}") from None
        if isinstance(first, dict) and first.get("op") == "error":
            await ws.close()
            raise from_wire(first)
        if not (isinstance(first, dict) and first.get("op") == "welcome"):
            await ws.close()
            raise ConnectionClosed(f"{url} did not greet with a welcome message: {first!r}")
        self.welcome = first
        return ws

    async def _run(self, ws: ClientConnection | None) -> None:
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
            self._ws = ws
            try:
                await self.on_connect()
            except Exception:
                log.exception("restoring state after connecting failed")
            self.connected.set()
            self._flush()
            try:
                async for frame in ws:
                    self._dispatch(frame)
            except WsClosed:
                pass
            self.connected.clear()
            self._ws = None
            ws = None
            self._fail_pending(ConnectionClosed("the connection to the hub was lost"))
            if not self._closing:
                log.warning("connection to the hub lost; reconnecting")

    def _dispatch(self, frame: str | bytes) -> None:
        try:
            data = _decoder.decode(frame)
        except msgspec.DecodeError:
            log.error("the hub sent a frame that is not JSON; ignored")
            return
        for msg in data if isinstance(data, list) else (data,):
            ref = msg.get("ref")
            if ref is not None and msg.get("op") in ("ok", "error"):
                fut = self._pending.pop(ref, None)
                hook = self._on_reply.pop(ref, None)
                if hook is not None:
                    try:
                        hook(msg)
                    except Exception:
                        log.exception("handling the answer to request %s failed", ref)
                if fut is not None and not fut.done():
                    if msg["op"] == "ok":
                        fut.set_result(msg)
                    else:
                        fut.set_exception(from_wire(msg))
                    continue
            try:
                self.on_message(msg)
            except Exception:
                log.exception("handling %s from the hub failed", msg.get("op"))

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        self._on_reply = {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._outbox = [m for m in self._outbox if "ref" not in m]

    # --- sending -----------------------------------------------------------------------------
    def send(self, msg: Message) -> None:
        """Queue a message; everything queued in one loop turn leaves as one frame."""
        self._outbox.append(msg)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def request(
        self, msg: Message, on_reply: Callable[[Message], None] | None = None
    ) -> asyncio.Future[Message]:
        """Send with a ``ref``; the future gets the hub's ``ok`` or raises its ``error``.

        ``on_reply`` runs synchronously as the answer is read, before the rest of its frame:
        a ``pub`` answer and the task's first events can share one frame, and the handle must
        be known before those events are dispatched (a future's callbacks run a turn later).
        """
        if not self.connected.is_set() and self._closing:
            raise ConnectionClosed("the client is closed")
        ref = next(self._refs)
        msg["ref"] = ref
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[ref] = fut
        if on_reply is not None:
            self._on_reply[ref] = on_reply
        self.send(msg)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        ws = self._ws
        if not self._outbox or ws is None or not self.connected.is_set():
            return
        out, self._outbox = self._outbox, []
        limit = int(self.welcome.get("max_frame", self.max_frame))
        for frame in self._frames(out, limit):
            task = asyncio.ensure_future(ws.send(frame.decode()))
            task.add_done_callback(_ignore_closed)

    def _frames(self, msgs: list[Message], limit: int) -> list[bytes]:
        """Encode as few frames as fit the hub's ``max_frame``; refuse a message too big alone."""
        frame = _encoder.encode(msgs[0] if len(msgs) == 1 else msgs)
        if len(frame) <= limit:
            return [frame]
        if len(msgs) > 1:
            half = len(msgs) // 2
            return self._frames(msgs[:half], limit) + self._frames(msgs[half:], limit)
        exc = FrameTooLarge(
            f"{msgs[0].get('op')} message of {len(frame)} bytes is over the "
            f"hub's frame limit of {limit} bytes; it was not sent"
        )
        fut = self._pending.pop(msgs[0].get("ref", -1), None)
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        else:
            log.error("%s", exc)
        return []


def _ignore_closed(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # a lost connection is handled by the reader; nothing to do here
