"""A failure in the hub's flusher is logged and does not leave the hub deaf (issue 15, item 17).

With uvicorn 0.50-0.52 the hub's writer read an attribute those versions lack: the first
``welcome`` raised inside the flusher task, the task died without a word, and the hub went
on taking frames and answering none. Here one connection's sender raises the same way; the
hub must say so, close that connection, and keep serving the others.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from taskhub import Server
from taskhub.lifecycle import Credentials, Peer
from tests.conftest import ClientFactory


async def test_a_sender_that_raises_is_logged_and_the_hub_goes_on(
    server: Server, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = server.hub
    assert hub is not None
    closed: list[tuple[int, str]] = []

    def broken_sender(frame: bytes) -> None:
        raise AttributeError("'HubWebSocketProtocol' object has no attribute 'disconnected'")

    async def closer(code: int, reason: str) -> None:
        closed.append((code, reason))

    peer = Peer("broken", Credentials("broken", sub_permissions=("*",), pub_permissions=("*",)))
    hub.attach(peer, broken_sender, closer)
    hub.lc.send(peer, {"op": "welcome"})
    hub.kick()
    client = await make_client("alive")
    worker = await make_client("worker")
    await worker.sub("echo:say", lambda t: "pong")
    # The hub still answers: a publish is stored, offered, run and its result delivered.
    assert await asyncio.wait_for(client.pub("echo:say").get_result(), 10) == "pong"
    assert closed == [(1011, "internal error")]
    assert peer not in hub.senders
    assert any(
        r.levelno == logging.ERROR and "sending to connection broken" in r.getMessage()
        for r in caplog.records
    )
    assert hub.ready
