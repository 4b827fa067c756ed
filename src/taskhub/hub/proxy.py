"""A follower hub's relay: HTTP requests and WebSocket connections passed to the leader.

Several hubs share one Redis; one of them (the leader) runs the task lifecycle, the others
accept connections and relay them byte for byte, so any hub behind a load balancer serves
every client. Relaying at the transport keeps one lifecycle as the single source of truth:
credit, round robin, ``max_connections`` and timers hold across hubs with no shared-state
protocol of our own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

log = logging.getLogger("taskhub.proxy")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Close code for "no leader right now, try again": the client backs off and reconnects.
CLOSE_TRY_AGAIN = 1013
_HOP_HEADERS = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"content-length",
    }
)


class Relay:
    """Forward to whichever hub leads now (``leader()`` returns its base URL or None)."""

    def __init__(self, leader: Callable[[], str | None], *, ssl: Any = None) -> None:
        self.leader = leader
        self.ssl = ssl
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=5.0), verify=ssl if ssl is not None else True
        )
        self.sockets: set[asyncio.Task[None]] = set()
        self.closing = False  # this hub stops: a relay cut off now is not the leader's fault

    async def close(self) -> None:
        self.closing = True
        await self.drop_all()
        await self._http.aclose()

    async def drop_all(self) -> None:
        """The leader changed: end every relayed connection (clients reconnect)."""
        for task in list(self.sockets):
            task.cancel()
        for task in list(self.sockets):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- HTTP --------------------------------------------------------------------------------
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        base = self.leader()
        if base is None:
            await _json(
                send,
                503,
                b'{"code":"no_leader","message":"no hub leads the cluster '
                b'right now; retry shortly"}',
            )
            return
        body = bytearray()
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        url = (
            base
            + scope["path"]
            + (("?" + scope["query_string"].decode()) if scope.get("query_string") else "")
        )
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.lower() not in _HOP_HEADERS
        ]
        try:
            req = self._http.build_request(
                scope["method"], url, headers=headers, content=bytes(body)
            )
            resp = await self._http.send(req, stream=True)
        except httpx.HTTPError as exc:
            if self.closing:
                await _json(
                    send,
                    503,
                    b'{"code":"shutting_down","message":"this hub is shutting down; retry, '
                    b'at another hub of the cluster"}',
                )
                return
            log.warning("relay to leader %s failed: %r", base, exc)
            await _json(
                send,
                503,
                b'{"code":"no_leader","message":"the leading hub did not answer; retry shortly"}',
            )
            return
        started = False
        try:
            out_headers = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in resp.headers.multi_items()
                if k.lower().encode() not in _HOP_HEADERS
            ]
            await send(
                {"type": "http.response.start", "status": resp.status_code, "headers": out_headers}
            )
            started = True
            async for chunk in resp.aiter_raw():  # streams SSE and long polls as they come
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (httpx.HTTPError, OSError):
            log.info("relayed response from %s broke off", base)
        finally:
            await resp.aclose()
        if started:
            # Ended, or broke off (this hub or the leader stopping): end it as a response
            # (an event stream's client reconnects with Last-Event-ID), not as a dropped one.
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    # --- WebSocket ---------------------------------------------------------------------------
    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.sockets.add(task)
        try:
            await self._websocket(scope, receive, send)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await send(
                    {
                        "type": "websocket.close",
                        "code": CLOSE_TRY_AGAIN,
                        "reason": "hub leadership changed; reconnect",
                    }
                )
        finally:
            self.sockets.discard(task)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        base = self.leader()
        if base is None:
            await _try_again(send, "no hub leads the cluster right now; retry shortly")
            return
        url = base.replace("http", "ws", 1) + scope["path"]
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k.lower() == b"authorization"
        }
        try:
            upstream = await connect(
                url,
                additional_headers=headers,
                max_size=None,
                compression=None,
                ping_interval=None,
                ssl=self.ssl if url.startswith("wss") else None,
            )
        except (OSError, InvalidStatus, TimeoutError) as exc:
            log.warning("relay to leader %s failed: %s", base, exc)
            await _try_again(send, "the leading hub did not answer; retry shortly")
            return
        await send({"type": "websocket.accept"})

        async def down() -> None:  # leader -> client
            try:
                async for frame in upstream:
                    if isinstance(frame, str):
                        await send({"type": "websocket.send", "text": frame})
                    else:
                        await send({"type": "websocket.send", "bytes": frame})
            except ConnectionClosed:
                pass
            rcvd = upstream.close_code or 1000
            reason = upstream.close_reason or ""
            with contextlib.suppress(Exception):
                await send(
                    {
                        "type": "websocket.close",
                        "code": rcvd if rcvd != 1006 else CLOSE_TRY_AGAIN,
                        "reason": reason,
                    }
                )

        async def up() -> None:  # client -> leader
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    break
                data = msg.get("text")
                await upstream.send(data if data is not None else msg.get("bytes") or b"")

        tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            with contextlib.suppress(Exception):
                await upstream.close()


async def _try_again(send: Send, reason: str) -> None:
    """Refuse a WebSocket with 1013: accepted first, so the client reads why (not a 403)."""
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN, "reason": reason})


async def _json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
