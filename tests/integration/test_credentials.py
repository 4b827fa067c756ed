"""Credentials: keys, permissions, max_connections, and loopback-only open access."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from taskhub import AuthenticationFailed, Client, PermissionDenied, Server, TooManyConnections
from taskhub.errors import InvalidOption
from taskhub.hub.auth import hash_key
from tests.conftest import ServerFactory

CREDS: list[dict[str, Any]] = [
    {
        "name": "emailer",
        "key": "s3cret",
        "sub_permissions": ["email/bulk:send"],
        "pub_permissions": ["email:send", "weather"],
        "max_connections": 1,
    },
    {"name": "web", "key": "webkey", "pub_permissions": ["email/bulk"], "sub_permissions": []},
]


@pytest.fixture
async def secured(make_server: ServerFactory) -> Server:
    return await make_server(creds=CREDS)


async def test_wrong_key_is_refused_with_a_reason(secured: Server) -> None:
    with pytest.raises(AuthenticationFailed, match="emailer"):
        await Client(secured.url, name="emailer", key="wrong", connect_timeout=2).connect()
    with pytest.raises(AuthenticationFailed):
        await Client(secured.url, name="nobody", key="x", connect_timeout=2).connect()


async def test_permissions_are_enforced_and_named(secured: Server) -> None:
    async with (
        Client(secured.url, name="emailer", key="s3cret") as emailer,
        Client(secured.url, name="web", key="webkey") as web,
    ):
        with pytest.raises(PermissionDenied, match="email/bulk:send"):
            await emailer.pub("email/bulk:send", []).accepted()
        assert await emailer.pub("weather/metno:forecast", "oslo").accepted()
        with pytest.raises(PermissionDenied, match="weatherman:x"):
            await emailer.pub("weatherman:x").accepted()
        with pytest.raises(PermissionDenied, match="geo:geocode"):
            await emailer.sub("geo:geocode", lambda t: None)
        await emailer.sub("email/bulk:send", lambda t: "sent")
        assert await web.pub("email/bulk:send", ["a"]).get_result(timeout=5) == "sent"


async def test_max_connections(secured: Server) -> None:
    async with Client(secured.url, name="emailer", key="s3cret"):
        with pytest.raises(TooManyConnections, match="max_connections is 1"):
            await Client(secured.url, name="emailer", key="s3cret", connect_timeout=2).connect()
    # the slot is free again once the first connection is gone
    for _ in range(50):
        if not secured.registry.connections.get("emailer"):
            break
        import asyncio

        await asyncio.sleep(0.02)
    async with Client(secured.url, name="emailer", key="s3cret") as again:
        assert again.connected


async def test_keys_are_stored_hashed(secured: Server) -> None:
    entry = secured.registry._entries["emailer"]
    assert b"s3cret" not in entry.digest + entry.salt and len(entry.digest) == 32


async def test_open_access_is_loopback_only() -> None:
    server = Server(host="0.0.0.0", port=0, store="memory://")
    with pytest.raises(InvalidOption, match="loopback"):
        await server.start()


@pytest.mark.parametrize(
    "key_hash",
    [
        "scrypt$...",  # the README's placeholder
        "scrypt$abcd",
        "bcrypt$00$" + "0" * 64,
        "scrypt$zz$" + "0" * 64,
        "scrypt$" + "0" * 32 + "$" + "0" * 10,
        "",
    ],
)
def test_a_malformed_key_hash_is_refused_naming_the_credential(key_hash: str) -> None:
    server = Server(port=0, store="memory://")
    with pytest.raises(InvalidOption, match="credential 'emailer': key_hash"):
        server.add_credentials("emailer", key_hash=key_hash)


def test_a_config_with_a_placeholder_key_hash_does_not_start(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[[credentials]]\nname = "emailer"\nkey_hash = "scrypt$..."\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from taskhub.cli import main; main()",
            "serve",
            "--config",
            str(config),
            "--port",
            "0",
            "--store",
            "memory://",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "credential 'emailer': key_hash" in proc.stderr
    assert "taskhub creds hash" in proc.stderr


def test_a_hash_from_creds_hash_is_accepted() -> None:
    server = Server(port=0, store="memory://")
    server.add_credentials("emailer", key_hash=hash_key("s3cret"))


async def test_the_log_names_the_address_really_bound(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="taskhub.server"):
        server = await make_server(creds=CREDS, host="0.0.0.0")
    [line] = [r.getMessage() for r in caplog.records if "listening on" in r.getMessage()]
    assert f"ws://0.0.0.0:{server.port}/v1/ws" in line, line
    assert server.url == f"ws://127.0.0.1:{server.port}"  # where a client on this machine dials
