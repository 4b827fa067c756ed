"""Web pages and an open-access hub (issue 15, item 8): cross-site WebSocket hijacking, DNS
rebinding and cross-site posts are refused; the hub's own page and programs are not."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from taskhub import Client, Server
from taskhub.errors import InvalidOption
from tests.conftest import ServerFactory

EVIL = "http://evil.example"


async def _ws(server: Server, **kwargs: Any) -> dict[str, Any]:
    """The hub's first message to a raw WebSocket handshake with these headers."""
    async with connect(f"{server.url}/v1/ws", open_timeout=10, **kwargs) as ws:
        first = json.loads(await ws.recv())
    return dict(first[0] if isinstance(first, list) else first)


async def test_a_websocket_from_another_site_is_refused(server: Server) -> None:
    with pytest.raises(InvalidStatus) as err:
        await _ws(server, origin=EVIL)
    response = err.value.response
    assert response.status_code == 403
    body = json.loads(response.body)
    assert body["code"] == "cross_site" and EVIL in body["message"]
    assert "allowed_origins" in body["message"]


async def test_the_hubs_own_page_and_programs_get_in(server: Server) -> None:
    own = f"http://127.0.0.1:{server.port}"
    assert (await _ws(server, origin=own))["op"] == "welcome"  # the dashboard's origin
    assert (await _ws(server))["op"] == "welcome"  # no Origin: a program, not a page
    async with Client(server.url, name="svc") as client:  # the Python client sends none
        assert client.connected


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "10.1.2.3"])
async def test_a_foreign_host_is_refused_dns_rebinding(server: Server, host: str) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        r = await http.get("/v1/tasks", headers={"Host": host})
        assert r.status_code == 403 and r.json()["code"] == "cross_site"
        assert host in r.json()["message"]
    assert (await _raw_handshake(server, host)).startswith(b"HTTP/1.1 403")


async def _raw_handshake(server: Server, host: str) -> bytes:
    """The status line of a WebSocket handshake sent by hand (a client library sets Host)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        f"GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return line


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "app.localhost"])
async def test_loopback_hosts_are_answered(server: Server, host: str) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        r = await http.get("/v1/tasks", headers={"Host": f"{host}:{server.port}"})
        assert r.status_code == 200


async def test_a_cross_site_post_is_refused_and_a_body_must_be_declared_json(
    server: Server,
) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        plain = {"Content-Type": "text/plain"}
        cross = await http.post(
            "/v1/events/x:y", content=b'{"a": 1}', headers={**plain, "Origin": EVIL}
        )
        assert cross.status_code == 403 and cross.json()["code"] == "cross_site"
        # Without an Origin (no page, no browser) the body still has to say it is JSON.
        r = await http.post("/v1/tasks", content=b'{"action": "a:b"}', headers=plain)
        assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
        assert "application/json" in r.json()["message"] and "text/plain" in r.json()["message"]
        form = await http.post("/add", data={"tasks": "x"})
        assert form.status_code == 415
        ok = await http.post(
            "/v1/tasks",
            content=b'{"action": "a:b"}',
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert ok.status_code == 201
        # A request without a body needs no Content-Type.
        assert (await http.delete(f"/v1/tasks/{ok.json()['id']}")).status_code == 200


async def test_allowed_origins_let_a_page_in(make_server: ServerFactory) -> None:
    server = await make_server(allowed_origins=["http://localhost:3000/"])
    assert (await _ws(server, origin="http://localhost:3000"))["op"] == "welcome"
    with pytest.raises(InvalidStatus):
        await _ws(server, origin="http://localhost:3001")
    anyone = await make_server(allowed_origins=["*"])
    assert (await _ws(anyone, origin=EVIL))["op"] == "welcome"
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        # The host of an allowed origin may be the Host too (a page served under that name).
        assert (await http.get("/v1/tasks", headers={"Host": "localhost:3000"})).status_code == 200
    named = await make_server(allowed_origins=["http://devbox.lan:3000"])
    async with httpx.AsyncClient(base_url=named.http_url) as http:
        assert (await http.get("/v1/tasks", headers={"Host": "devbox.lan:3000"})).status_code == 200
        assert (await http.get("/v1/tasks", headers={"Host": "other.lan"})).status_code == 403
    async with httpx.AsyncClient(base_url=anyone.http_url) as http:
        assert (await http.get("/v1/tasks", headers={"Host": "evil.example"})).status_code == 200


@pytest.mark.parametrize("origin", ["localhost:3000", "ftp://x", "http://x/path", ""])
def test_a_bad_allowed_origin_is_named(origin: str) -> None:
    with pytest.raises(InvalidOption, match="allowed_origins"):
        Server(store="memory://", allowed_origins=[origin])


async def test_a_hub_with_credentials_answers_any_host(make_server: ServerFactory) -> None:
    """Behind a proxy or on 0.0.0.0 it is reached by any name; the key protects it."""
    server = await make_server(creds=[{"name": "svc", "key": "k", "pub_permissions": ["*"]}])
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        r = await http.get(
            "/v1/tasks",
            headers={"Host": "hub.internal", "Origin": EVIL, "Authorization": "Bearer svc:k"},
        )
        assert r.status_code == 200
        plain = await http.post(
            "/v1/events/x:y",
            content=b"{}",
            headers={"Content-Type": "text/plain", "Authorization": "Bearer svc:k"},
        )
        assert plain.status_code == 415
