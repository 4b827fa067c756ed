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
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

log = logging.getLogger("taskhub.proxy")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Close code for "no leader right now, try again": the client backs off and reconnects.
CLOSE_TRY_AGAIN = 1013
# Set on what a follower relays (the value: its instance id). A hub that gets a relayed
# request while it does not lead answers it itself (no_leader / 1013) instead of relaying
# again: two hubs that each take the other for the leader, for a moment, cannot loop.
RELAYED_HEADER = b"x-taskhub-relayed"
# Seconds the relay waits for the leader's side of a WebSocket close: a relayed link to a
# stalled leader must not hold the follower up (the leader's side times out by itself).
RELAY_CLOSE_TIMEOUT = 1.0
SHUTTING_DOWN = (
    b'{"code":"shutting_down","message":"this hub is shutting down; retry, '
    b'at another hub of the cluster"}'
)
NO_LEADER = b'{"code":"no_leader","message":"no hub leads the cluster right now; retry shortly"}'
LEADER_CHANGED = b'{"code":"no_leader","message":"the leading hub changed; retry"}'
NO_ANSWER = b'{"code":"no_leader","message":"the leading hub did not answer; retry shortly"}'
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
    """Forward to whichever hub leads now (``leader()`` returns its base URL or None).

    A relayed link must notice a leader that stopped answering (a partition, a stall) and
    let its clients go, rather than relay into a dead link and deliver what the leader sent
    long ago once it heals (an offer for a task that another worker has finished since).
    WebSocket links ping the leader every ``keepalive[0]`` seconds and give up after
    ``keepalive[1]`` more without a pong: the client is closed with 1013 and reconnects.
    HTTP links use TCP keepalive with the same bounds (a long poll may rightly wait minutes
    for its answer, so there is no read timeout), and are answered 503 ``no_leader`` when
    the leader changes.
    """

    def __init__(
        self,
        leader: Callable[[], str | None],
        *,
        ssl: Any = None,
        keepalive: tuple[float | None, float | None] = (5.0, 5.0),
        via: str = "",
    ) -> None:
        self.leader = leader
        self.ssl = ssl
        self.keepalive = keepalive
        self.via = via  # this hub's instance id, sent in RELAYED_HEADER
        self.own_url = ""  # this hub's advertised URL: never relayed to
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=5.0),
            transport=httpx.AsyncHTTPTransport(
                verify=ssl if ssl is not None else True, socket_options=_tcp_keepalive(keepalive)
            ),
        )
        self.sockets: set[asyncio.Task[None]] = set()
        self.requests: set[asyncio.Task[Any]] = set()  # HTTP relays under way
        self.closing = False  # this hub stops: a relay cut off now is not the leader's fault

    async def close(self) -> None:
        self.closing = True
        await self.drop_all()
        await self._http.aclose()

    async def drop_all(self) -> None:
        """The leader changed: end every relayed connection (clients reconnect) and answer
        every relayed HTTP request that has not begun its answer 503."""
        tasks = list(self.sockets) + list(self.requests)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _target(self) -> str | None:
        base = self.leader()
        if base is None or base.rstrip("/") == self.own_url:
            return None  # never relay to ourselves
        return base

    # --- HTTP --------------------------------------------------------------------------------
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        base = self._target()
        if base is None:
            await send_json(send, 503, NO_LEADER)
            return
        body = await _read_body(receive)
        resp = await self._forward(base, scope, body, send)
        if resp is not None:
            await _stream_back(resp, send, base)

    async def _forward(
        self, base: str, scope: Scope, body: bytes, send: Send
    ) -> httpx.Response | None:
        """The leader's response to the request, its body still to read; None once ``send``
        has answered 503 (the leader changed, did not answer, or this hub stops)."""
        query = scope.get("query_string")
        url = base + scope["path"] + (("?" + query.decode()) if query else "")
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.lower() not in _HOP_HEADERS
        ]
        headers.append((RELAYED_HEADER.decode(), self.via))
        req = self._http.build_request(scope["method"], url, headers=headers, content=body)
        sending = asyncio.ensure_future(self._http.send(req, stream=True))
        self.requests.add(sending)
        try:
            return await asyncio.shield(sending)
        except asyncio.CancelledError:
            if not sending.cancelled():
                sending.cancel()
                raise  # this request itself is cancelled (the hub stops)
            await send_json(send, 503, SHUTTING_DOWN if self.closing else LEADER_CHANGED)
        except httpx.HTTPError as exc:
            if not self.closing:
                log.warning("relay to leader %s failed: %r", base, exc)
            await send_json(send, 503, SHUTTING_DOWN if self.closing else NO_ANSWER)
        finally:
            self.requests.discard(sending)
        return None

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
        base = self._target()
        if base is None:
            await try_again(send, "no hub leads the cluster right now; retry shortly")
            return
        upstream = await self._dial(base, scope, send)
        if upstream is None:
            return
        await send({"type": "websocket.accept"})
        tasks = [
            asyncio.create_task(_downstream(upstream, send)),
            asyncio.create_task(_upstream(receive, upstream)),
        ]
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

    async def _dial(self, base: str, scope: Scope, send: Send) -> ClientConnection | None:
        """A WebSocket to the leader, with the client's credentials; None once ``send`` has
        refused the client with 1013 (the leader did not answer)."""
        url = base.replace("http", "ws", 1) + scope["path"]
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k.lower() == b"authorization"
        }
        headers[RELAYED_HEADER.decode()] = self.via
        interval, timeout = self.keepalive
        try:
            return await connect(
                url,
                additional_headers=headers,
                max_size=None,
                compression=None,
                ping_interval=interval,
                ping_timeout=timeout,
                close_timeout=RELAY_CLOSE_TIMEOUT,
                open_timeout=5.0,
                ssl=self.ssl if url.startswith("wss") else None,
            )
        except (OSError, InvalidStatus, TimeoutError) as exc:
            log.warning("relay to leader %s failed: %s", base, exc)
            await try_again(send, "the leading hub did not answer; retry shortly")
            return None


async def _downstream(upstream: ClientConnection, send: Send) -> None:
    """Leader -> client, then the leader's close (1013 if it dropped or stopped answering)."""
    try:
        # A link the keepalive gave up is aborted by websockets at once: nothing that arrives
        # later (stale, after a partition heals) is read.
        async for frame in upstream:
            if isinstance(frame, str):
                await send({"type": "websocket.send", "text": frame})
            else:
                await send({"type": "websocket.send", "bytes": frame})
    except ConnectionClosed:
        pass
    rcvd = upstream.close_code
    reason = upstream.close_reason or ""
    if rcvd is None or rcvd in (1006, 1011):  # dropped, or the keepalive gave up
        rcvd, reason = CLOSE_TRY_AGAIN, "the leading hub stopped answering; reconnect"
    with contextlib.suppress(Exception):
        await send({"type": "websocket.close", "code": rcvd, "reason": reason})


async def _upstream(receive: Receive, upstream: ClientConnection) -> None:
    """Client -> leader, until the client disconnects."""
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            break
        data = msg.get("text")
        await upstream.send(data if data is not None else msg.get("bytes") or b"")


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return bytes(body)


async def _stream_back(resp: httpx.Response, send: Send, base: str) -> None:
    """Relay the leader's response as it comes (event streams and long polls too)."""
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
        async for chunk in resp.aiter_raw():
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


def _tcp_keepalive(keepalive: tuple[float | None, float | None]) -> list[Any]:
    """Socket options that make the kernel drop a connection whose peer stopped answering
    within about ``interval + timeout`` seconds, whether idle (keepalive probes) or sending
    (``TCP_USER_TIMEOUT``)."""
    interval, timeout = keepalive
    if not interval or not timeout or not hasattr(socket, "TCP_KEEPIDLE"):
        return []
    probes = 3
    step = max(1, round(timeout / probes))
    options: list[Any] = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, round(interval))),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, step),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes),
    ]
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        options.append(
            (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int((interval + timeout) * 1000))
        )
    return options


async def try_again(send: Send, reason: str) -> None:
    """Refuse a WebSocket with 1013: accepted first, so the client reads why (not a 403)."""
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN, "reason": reason})


async def send_json(send: Send, status: int, body: bytes) -> None:
    """Answer an HTTP request with ``status`` and a JSON ``body``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
