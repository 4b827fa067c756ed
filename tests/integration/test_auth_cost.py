"""What a login costs the hub (issue 15, items 6 and 7), over real HTTP and WebSocket.

The work is counted, not timed: a spy around ``hashlib.scrypt`` counts the real key
derivations (and can hold them, to fill the hub's scrypt threads on purpose). Callers speak
from several loopback addresses (Linux routes all of 127/8 to lo).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from taskhub import Client, Server
from taskhub.errors import InvalidOption
from tests.conftest import ServerFactory, until

CREDS: list[dict[str, Any]] = [
    {"name": "svc", "key": "svc-key", "pub_permissions": ["*"], "sub_permissions": ["*"]},
    {"name": "late", "key": "late-key", "pub_permissions": ["*"]},
]


class ScryptSpy:
    """Counts real scrypt runs; while ``gate`` is clear, each waits before running."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, *args: Any, **kwargs: Any) -> bytes:
        with self.lock:
            self.calls += 1
        self.gate.wait(30)
        result: bytes = self.real(*args, **kwargs)
        return result


@pytest.fixture
async def hub(make_server: ServerFactory) -> Server:
    return await make_server(creds=CREDS)  # keys are hashed here, before the spy


@pytest.fixture
def scrypt(hub: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[ScryptSpy]:
    spy = ScryptSpy(hashlib.scrypt)
    monkeypatch.setattr(hashlib, "scrypt", spy)
    yield spy
    spy.gate.set()  # never leave the hub's threads waiting


@pytest.fixture
async def http_from(hub: Server) -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    def make(address: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=hub.http_url,
            transport=httpx.AsyncHTTPTransport(local_address=address),
            timeout=30,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def _auth(name: str, key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}:{key}"}


async def test_every_failed_attempt_costs_one_key_check_whatever_the_name(
    scrypt: ScryptSpy, http_from: Any
) -> None:
    http = http_from("127.0.0.1")
    assert (await http.get("/v1/tasks", headers=_auth("svc", "svc-key"))).status_code == 200
    assert scrypt.calls == 1
    assert (await http.get("/v1/tasks", headers=_auth("svc", "svc-key"))).status_code == 200
    assert scrypt.calls == 1  # a key verified before is remembered
    # A wrong key for that name cannot use what was remembered: it pays a key check ...
    assert (await http.get("/v1/tasks", headers=_auth("svc", "guess"))).status_code == 401
    assert scrypt.calls == 2
    # ... exactly as an unknown name does (one, not two), and a name never seen before.
    assert (await http.get("/v1/tasks", headers=_auth("nobody", "guess"))).status_code == 401
    assert scrypt.calls == 3
    assert (await http.get("/v1/tasks", headers=_auth("late", "guess"))).status_code == 401
    assert scrypt.calls == 4
    # The answers are the same too.
    a = await http.get("/v1/tasks", headers=_auth("svc", "guess2"))
    b = await http.get("/v1/tasks", headers=_auth("nobody2", "guess2"))
    assert a.json()["message"].replace("svc", "X") == b.json()["message"].replace("nobody2", "X")


async def test_a_flood_from_one_address_is_throttled_without_key_checks(
    hub: Server, scrypt: ScryptSpy, http_from: Any
) -> None:
    legit = http_from("127.0.0.1")
    assert (await legit.get("/v1/tasks", headers=_auth("svc", "svc-key"))).status_code == 200
    before = scrypt.calls
    flood = http_from("127.0.0.2")
    answers = [await flood.get("/v1/tasks", headers=_auth(f"nobody{i}", "x")) for i in range(12)]
    assert [r.status_code for r in answers[:5]] == [401] * 5
    assert {r.status_code for r in answers[5:]} == {429}
    throttled = answers[5].json()
    assert throttled["code"] == "auth_failed"
    assert "too many failed authentications from 127.0.0.2" in throttled["message"]
    assert int(answers[5].headers["retry-after"]) >= 1
    assert scrypt.calls - before == 5  # the throttled ones cost no key check
    # Also with the right key from there: a throttle that a good guess skipped would tell.
    assert (await flood.get("/v1/tasks", headers=_auth("late", "late-key"))).status_code == 429
    # A key verified before still gets in from there, and other addresses are not throttled.
    assert (await flood.get("/v1/tasks", headers=_auth("svc", "svc-key"))).status_code == 200
    other = http_from("127.0.0.3")
    assert (await other.get("/v1/tasks", headers=_auth("late", "late-key"))).status_code == 200
    # Operators see it.
    metrics = (await legit.get("/metrics", headers=_auth("svc", "svc-key"))).text
    assert "taskhub_auth_throttled_total 8.0" in metrics
    assert "taskhub_auth_failures_total 5.0" in metrics


async def test_an_address_has_at_most_two_key_checks_at_once(
    hub: Server, scrypt: ScryptSpy, http_from: Any
) -> None:
    scrypt.gate.clear()  # key checks wait: they pile up as under a flood
    flood = http_from("127.0.0.2")
    pending = [
        asyncio.create_task(flood.get("/v1/tasks", headers=_auth(f"n{i}", "x"))) for i in range(8)
    ]
    await until(lambda: sum(t.done() for t in pending) == 6, timeout=20)
    assert scrypt.calls == 2
    refused = [t.result() for t in pending if t.done()]
    assert {r.status_code for r in refused} == {429}
    assert "at once" in refused[0].json()["message"]
    scrypt.gate.set()
    assert {(await t).status_code for t in pending} == {401, 429}


async def test_a_flood_does_not_hold_up_a_known_client(
    hub: Server, scrypt: ScryptSpy, http_from: Any
) -> None:
    """Every scrypt thread busy with flooders (held on purpose) and more queued: a client
    whose key was verified before connects over WebSocket and HTTP without waiting."""
    async with Client(hub.url, name="svc", key="svc-key") as first:
        assert first.connected
    scrypt.gate.clear()
    flooders = [http_from(f"127.0.0.{i}") for i in range(10, 18)]
    pending = [
        asyncio.create_task(http.get("/v1/tasks", headers=_auth(f"n{i}{j}", "x")))
        for i, http in enumerate(flooders)
        for j in range(2)
    ]
    await until(lambda: scrypt.calls >= 2)  # both threads held, the rest queued behind
    try:
        async with Client(hub.url, name="svc", key="svc-key", connect_timeout=10) as again:
            assert again.connected
        legit = http_from("127.0.0.1")
        r = await asyncio.wait_for(legit.get("/v1/tasks", headers=_auth("svc", "svc-key")), 10)
        assert r.status_code == 200
        assert not all(t.done() for t in pending)  # the flood is still waiting
    finally:
        scrypt.gate.set()
        await asyncio.gather(*pending)


@pytest.mark.parametrize(
    ("trusted", "counted"),
    [(None, "203.0.113.7"), ([], "127.0.0.1"), (["10.0.0.0/8"], "127.0.0.1")],
)
async def test_the_throttle_counts_the_client_a_trusted_proxy_names(
    make_server: ServerFactory, trusted: list[str] | None, counted: str
) -> None:
    """Behind a proxy every client has the proxy's address; X-Forwarded-For from a trusted
    one (loopback by default) names the client, and the throttle counts by that."""
    server = await make_server(creds=CREDS, trusted_proxies=trusted)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        forwarded = {"X-Forwarded-For": "203.0.113.7"}
        for _ in range(5):
            r = await http.get("/v1/tasks", headers={**_auth("nobody", "x"), **forwarded})
            assert r.status_code == 401
        r = await http.get("/v1/tasks", headers={**_auth("nobody", "x"), **forwarded})
        assert r.status_code == 429 and f"from {counted};" in r.json()["message"]


def test_a_bad_trusted_proxy_is_named() -> None:
    with pytest.raises(InvalidOption, match=r"trusted_proxies: 'proxy\.lan'"):
        Server(store="memory://", trusted_proxies=["proxy.lan"])
