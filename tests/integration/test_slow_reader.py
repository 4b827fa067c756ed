"""A peer that stops reading cannot hold the hub's memory (issue 15, item 3).

A raw TCP socket speaks the WebSocket handshake by hand, subscribes to a topic, and then
never reads again (with a small receive buffer, so the kernel holds little for it). The hub
must bound what it keeps for that peer in bytes (``max_send_buffer``), close it as too slow,
and really release the connection although its close frame can never be flushed: before,
the frames stayed queued (up to 1024 of any size: 61 → 436 MiB of hub RSS for one such peer
with 512 KiB broadcasts) and the connection stayed open for good.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any

import pytest

from taskhub import Client, Server
from tests.conftest import ServerFactory, until

BLOB = 256 * 1024  # bytes per broadcast


async def _raw_subscriber(server: Server, topic: str) -> tuple[asyncio.StreamReader, Any]:
    """A WebSocket client made of a bare socket: handshake, welcome, subscribe; then the test
    simply never reads from it again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Authorization: Bearer slow:\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    assert json.loads(await _read_frame(reader))["op"] == "welcome"
    _write_frame(writer, json.dumps({"op": "subscribe", "topic": topic, "ref": 1}).encode())
    assert json.loads(await _read_frame(reader)) == {"op": "ok", "ref": 1}
    return reader, writer


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    first, second = await reader.readexactly(2)
    assert first & 0x0F == 1, "a text frame"
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    return await reader.readexactly(size)


def _write_frame(writer: Any, data: bytes) -> None:
    mask = os.urandom(4)
    head = bytes([0x81, 0x80 | len(data)]) if len(data) < 126 else b""
    assert head, "small frames only"
    writer.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


async def test_a_peer_that_stops_reading_is_bounded_in_bytes_and_released(
    make_server: ServerFactory,
) -> None:
    # No keepalive ping during the test (the raw peer would not answer one): the slow-reader
    # close alone must release it. ping_timeout is also how long its close frame may take.
    server = await make_server(ping_interval=600, ping_timeout=0.2)
    hub = server.hub
    assert hub is not None
    hub.limits.max_send_buffer = 2 * 1024 * 1024  # 8 broadcasts wait at most
    fast = await Client(server.url, name="fast").connect()
    pub = await Client(server.url, name="pub").connect()
    got: list[int] = []
    await fast.subscribe("feed", lambda d, t: got.append(d["n"]))
    _reader, writer = await _raw_subscriber(server, "feed")
    assert len(hub.senders) == 3
    blob = "x" * BLOB
    counted = 0  # broadcasts the slow peer was still counted for
    for n in range(200):  # 50 MiB in all; the frame limit (1024) alone would keep it all
        if await pub.emit("feed", {"n": n, "blob": blob}) == 2:
            counted += 1
    # Dropped once max_send_buffer bytes waited (plus what the sockets took): not 200 frames.
    assert counted < 100
    # Released: it never reads, so its close frame cannot leave, and the transport is
    # aborted after ping_timeout; its deliveries, topics and memory go with it.
    await until(lambda: len(hub.senders) == 2, timeout=10)
    assert sorted(p.service for p in hub.senders) == ["fast", "pub"]
    await until(lambda: len(got) == 200)  # the fast reader lost nothing
    writer.close()
    await fast.close()
    await pub.close()


async def test_a_peer_that_misses_the_keepalive_with_a_full_socket_is_released(
    make_server: ServerFactory,
) -> None:
    """uvicorn closes a peer that did not answer a ping with ``transport.close()``, which
    waits for the buffered frames to leave: a peer that stopped reading kept its connection
    for good. The hub aborts it ``ping_timeout`` later."""
    server = await make_server(ping_interval=1.0, ping_timeout=0.2)
    hub = server.hub
    assert hub is not None
    pub = await Client(server.url, name="pub").connect()
    _reader, writer = await _raw_subscriber(server, "feed")
    blob = "x" * BLOB
    for n in range(40):  # 10 MiB: more than the sockets take, less than max_send_buffer
        assert await pub.emit("feed", {"n": n, "blob": blob}) == 1
    # It answers no ping: dropped by the keepalive, and released although nothing leaves.
    await until(lambda: len(hub.senders) == 1, timeout=10)
    assert [p.service for p in hub.senders] == ["pub"]
    writer.close()
    await pub.close()


def test_max_send_buffer_is_a_setting() -> None:
    from taskhub import config
    from taskhub.errors import InvalidOption

    server = config.load(env={"TASKHUB_MAX_SEND_BUFFER": "1048576"})
    assert server.limits.max_send_buffer == 1048576
    assert Server(port=0, store="memory://").limits.max_send_buffer == 16 * 1024 * 1024
    with pytest.raises(InvalidOption, match="max_send_buffer must be at least 65536"):
        Server(port=0, store="memory://", max_send_buffer=1000)
