"""Connections that never finish a request (slowloris) and many connections from one address
(issue 15, item 4), over real loopback sockets against a real hub.

The hubs here use short timeouts (a fraction of a second) so that nothing waits long; the
assertions are "closed at all" and "answered", never how fast.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from taskhub import Client, Server
from taskhub.config import load
from taskhub.errors import InvalidOption
from tests.conftest import ServerFactory

HALF = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


class Raw:
    """A TCP connection to the hub, from a chosen loopback address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def closed_by_hub(self, within: float = 20.0) -> bytes:
        """Everything the hub sends until it closes the connection (fails if it never does)."""
        return await asyncio.wait_for(self.reader.read(), within)


Dial = Callable[..., Awaitable[Raw]]


@pytest.fixture
async def raw() -> AsyncIterator[Dial]:
    opened: list[Raw] = []

    async def dial(server: Server, data: bytes = b"", local: str = "127.0.0.1") -> Raw:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, local_addr=(local, 0)
        )
        writer.write(data)
        conn = Raw(reader, writer)
        opened.append(conn)
        return conn

    yield dial
    for conn in opened:
        conn.writer.close()


async def test_a_half_sent_request_head_is_closed(make_server: ServerFactory, raw: Dial) -> None:
    server = await make_server(request_timeout=0.3)
    conn = await raw(server, HALF)
    assert await conn.closed_by_hub() == b""


async def test_a_byte_after_a_kept_alive_answer_does_not_keep_it_open(
    make_server: ServerFactory, raw: Dial
) -> None:
    server = await make_server(request_timeout=0.3, keepalive_timeout=0.3)
    conn = await raw(server, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await conn.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    conn.writer.write(b"G")  # uvicorn's keep-alive timer stops at the first byte
    rest = await conn.closed_by_hub()
    assert b"HTTP/1.1" not in rest.partition(b"}")[2]  # nothing more was answered


async def test_a_body_that_never_ends_is_closed(make_server: ServerFactory, raw: Dial) -> None:
    server = await make_server(request_timeout=0.3)
    conn = await raw(
        server,
        b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{",
    )
    await conn.closed_by_hub()


async def test_a_long_poll_outlives_the_request_timeout(make_server: ServerFactory) -> None:
    """The deadline is for requests still arriving, not for answers the hub is waiting on."""
    server = await make_server(request_timeout=0.2)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=30) as http:
        task = (await http.post("/v1/tasks", json={"action": "slow:job"})).json()
        r = await http.get(f"/v1/tasks/{task['id']}/result", params={"wait": 1})
        assert r.status_code == 202  # waited the whole second, then answered "not yet"
        again = await http.get("/healthz")  # the same kept-alive connection still serves
        assert again.status_code == 200


async def test_http_connections_per_address_are_capped(
    make_server: ServerFactory, raw: Dial
) -> None:
    server = await make_server(max_connections_per_address=4)
    held = [await raw(server, HALF, "127.0.0.2") for _ in range(4)]
    refused = await (await raw(server, b"", "127.0.0.2")).closed_by_hub()
    assert refused.startswith(b"HTTP/1.1 429")
    assert b"max_connections_per_address is 4" in refused
    # Others are not locked out, and WebSockets do not count (credentials bound those).
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/healthz")).status_code == 200
    async with Client(server.url, name="svc") as client:
        assert client.connected
    # Once those connections are gone, the address may connect again.
    for conn in held:
        conn.writer.close()
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2", retries=0)
    async with httpx.AsyncClient(base_url=server.http_url, transport=transport) as http:
        for _ in range(100):
            try:
                if (await http.get("/healthz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
        else:
            pytest.fail("127.0.0.2 stayed refused after its connections closed")


async def test_upgraded_websockets_release_their_count(
    make_server: ServerFactory, raw: Dial
) -> None:
    server = await make_server(max_connections_per_address=2)
    clients = [Client(server.url, name=f"w{i}") for i in range(4)]
    for client in clients:
        await client.connect()  # 4 WebSockets from 127.0.0.1, over a cap of 2
    try:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            assert (await http.get("/healthz")).status_code == 200
    finally:
        for client in clients:
            await client.close()


def test_limits_are_checked() -> None:
    with pytest.raises(InvalidOption, match="request_timeout"):
        Server(store="memory://", request_timeout=0)
    with pytest.raises(InvalidOption, match="max_connections_per_address"):
        Server(store="memory://", max_connections_per_address=-1)


async def test_the_uvicorn_internals_the_guard_uses_are_there() -> None:
    """hub/http/protocol.py subclasses uvicorn's httptools protocol and reads these: an
    upgrade of uvicorn that renames them fails here first."""

    async def app(scope: object, receive: object, send: object) -> None:
        pass

    config = uvicorn.Config(app)
    config.load()
    proto = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    assert hasattr(proto, "cycle") and proto.cycle is None
    for method in ("on_response_complete", "handle_websocket_upgrade", "on_headers_complete"):
        assert callable(getattr(HttpToolsProtocol, method))
    assert not inspect.signature(HttpToolsProtocol.handle_websocket_upgrade).parameters.keys() - {
        "self"
    }
    source = inspect.getsource(RequestResponseCycle.__init__)
    assert "self.response_complete" in source and "self.more_body" in source


def test_the_limits_are_server_settings(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        '[server]\nrequest_timeout = "2s"\nkeepalive_timeout = 3\n'
        'max_connections_per_address = 0\nallowed_origins = ["http://localhost:3000"]\n'
    )
    server = load(path, env={})
    assert (server.request_timeout, server.keepalive_timeout) == (2.0, 3.0)
    assert server.max_connections_per_address is None  # 0: no cap
    assert server.registry.allowed_origins == {"http://localhost:3000"}
    env = {
        "TASKHUB_ALLOWED_ORIGINS": "http://a.localhost:1, https://b.localhost",
        "TASKHUB_MAX_CONNECTIONS_PER_ADDRESS": "10",
        "TASKHUB_REQUEST_TIMEOUT": "1m",
    }
    server = load(None, env=env)
    assert server.registry.allowed_origins == {"http://a.localhost:1", "https://b.localhost"}
    assert server.max_connections_per_address == 10 and server.request_timeout == 60.0
    defaults = load(None, env={})
    assert defaults.max_connections_per_address == 256 and defaults.request_timeout == 10.0
    with pytest.raises(InvalidOption, match="allowed_origins"):
        load(None, env={"TASKHUB_ALLOWED_ORIGINS": "evil.example"})
