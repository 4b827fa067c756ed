"""``max_connections`` across hub processes that lead partitions by their leases
(docs/deployment.md, "Connections across hubs"), over one real SQLite file and one real
redis-server: a credential with ``max_connections = 1`` connected to one hub is refused by the
other, with the same error as on one hub; once that connection closes the other hub takes
one; a pull consumer counts too; a hub killed -9 frees its connections' slots within about
a lease, never holding them for good; and the children of ``taskhub serve --processes 2``
count together."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taskhub import Client
from taskhub.errors import TooManyConnections
from tests import redisproc
from tests.conftest import until
from tests.e2e.hubproc import HubProcess, wait_until

P = 4
LEASE = 1.0  # seconds: TASKHUB_LEASE of the hubs whose leases a test waits out
# Seconds: the lease of the hubs of a test that waits for none to run out. A hub the loaded
# machine stalls past its lease stops being counted by the others (its member record, and
# with it its connections' slots, runs out): with LEASE the other hub once let the credential
# in, and refused the consumer for its missing sub permission (403), not for its count (429).
STEADY_LEASE = 10.0
NAME, KEY = "emailer", "k3y-of-the-emailer"
CREDENTIALS = [{"name": NAME, "key": KEY, "max_connections": 1, "pub_permissions": ["*"]}]
REFUSED = f"'{NAME}' already has 1 connection(s), its max_connections is 1"


@pytest.fixture(params=["sqlite", "redis"])
def hubs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[HubProcess]]:
    """Two hub processes on one store, with the credential above and a lease of LEASE."""
    yield from _two_hubs(request.param, tmp_path, LEASE)


@pytest.fixture(params=["sqlite", "redis"])
def steady_hubs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[HubProcess]]:
    """The same, with a lease of STEADY_LEASE."""
    yield from _two_hubs(request.param, tmp_path, STEADY_LEASE)


def _two_hubs(kind: str, tmp_path: Path, lease: float) -> Iterator[list[HubProcess]]:
    if kind == "sqlite":
        store = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        store = redisproc.shared_url("e2econns")
    env = {"TASKHUB_LEASE": str(lease), "TASKHUB_CREDENTIALS": json.dumps(CREDENTIALS)}
    made: list[HubProcess] = []
    try:
        for _ in range(2):
            made.append(HubProcess(store, None, "--partitions", str(P), env=env).start())
        # Both are members that split the partitions (their keepers ran rounds).
        wait_until(lambda: [len(h.health()["partitions"]) for h in made] == [2, 2], 20)
        yield made
    finally:
        for hub in made:
            hub.stop()


def client(hub: HubProcess | str) -> Client:
    url = hub if isinstance(hub, str) else hub.url
    return Client(url, name=NAME, key=KEY, connect_timeout=5, max_backoff=0.2)


async def refused(hub: HubProcess | str) -> str:
    """Connect to ``hub`` (or a URL) expecting the refusal; its message."""
    with pytest.raises(TooManyConnections) as info:
        await client(hub).connect()
    return info.value.message


async def connected(hub: HubProcess | str) -> Client | None:
    """A connection to ``hub`` (or a URL), or None while it is refused."""
    try:
        return await client(hub).connect()
    except TooManyConnections:
        return None


async def test_a_credential_connected_to_one_hub_is_refused_by_the_other(
    steady_hubs: list[HubProcess],
) -> None:
    one, two = steady_hubs
    first = await client(one).connect()
    try:
        assert await refused(two) == REFUSED  # the same words as one hub says them
        assert await refused(one) == REFUSED
        # A pull consumer counts as a connection too, on any hub.
        async with httpx.AsyncClient(base_url=two.http_url, timeout=5) as http:
            answer = await http.post(
                "/v1/consumers",
                json={"actions": ["mail:send"]},
                headers={"Authorization": f"Bearer {NAME}:{KEY}"},
            )
        assert answer.status_code == 429, answer.text
        assert answer.json()["code"] == "too_many_connections"
    finally:
        await first.close()
    # Closed: its slot is given back (written in the background), and the other hub takes one.
    second = await until(lambda: connected(two), timeout=10.0)
    try:
        assert await refused(one) == REFUSED
    finally:
        await second.close()


async def test_a_hub_killed_9_frees_its_connections_within_about_a_lease(
    hubs: list[HubProcess],
) -> None:
    one, two = hubs
    held = await client(two).connect()  # goes on trying to reconnect to the dead hub: closed
    try:
        assert await refused(one) == REFUSED
        two.kill()  # no close, no goodbye: its slot lives until its member record expires
        # About a lease after its last heartbeat (a third of one before the kill, at most);
        # polled, with room for a loaded machine.
        again = await until(lambda: connected(one), timeout=10 * LEASE)
        await again.close()
    finally:
        await held.close()


def leaders(url: str) -> set[str]:
    """The other hubs' URLs that ``url``'s ``/healthz`` names as leaders."""
    with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
        return {u for u in json.loads(answer.read())["leaders"].values() if u}


async def test_the_children_of_serve_processes_count_together(tmp_path: Path) -> None:
    env = {"TASKHUB_LEASE": str(LEASE), "TASKHUB_CREDENTIALS": json.dumps(CREDENTIALS)}
    store = f"sqlite:///{tmp_path / 'hub.db'}"
    serve = HubProcess(store, None, "--partitions", str(P), "--processes", "2", env=env)
    serve.start(timeout=60)
    try:
        # Each child's own URL: the child behind the shared port names the other, which
        # names the first (once each leads two partitions).
        own: list[str] = []

        def both() -> bool:
            other = leaders(serve.http_url)
            own[:] = [*other, *(leaders(next(iter(other))) if len(other) == 1 else ())]
            return len(set(own)) == 2

        wait_until(both, 30, serve.log)
        x, y = (url.replace("http://", "ws://", 1) for url in own)
        first = await client(x).connect()
        try:
            assert await refused(y) == REFUSED
            assert await refused(serve.url) == REFUSED  # whichever child the kernel picks
        finally:
            await first.close()
        second = await until(lambda: connected(y), timeout=10.0)
        try:
            assert await refused(x) == REFUSED
        finally:
            await second.close()
    finally:
        serve.stop()
