"""Shared fixtures: real hubs on loopback (port 0) and clients connected to them."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from taskhub import Client, Server
from taskhub.partitions import partition_of

# Hypothesis's default 200 ms deadline per example, and its too_slow health check, time the
# machine, not the code: `make test` runs two workers on two cores, beside the hubs they start,
# and a loaded machine failed examples that take 1 ms when quiet (test_assign.py). The
# standard keeps speed out of tests (benchmarks/ has it); every property is checked as before.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")

# taskhub.testing's fixture (taskhub_url), as docs/workers.md tells users to load it.
pytest_plugins = ["taskhub.testing"]

ServerFactory = Callable[..., Awaitable[Server]]
ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[Server] = []

    async def make(creds: list[dict[str, Any]] | None = None, **kwargs: Any) -> Server:
        kwargs.setdefault("store", "memory://")
        kwargs.setdefault("port", 0)
        server = Server(**kwargs)
        for c in creds or []:
            server.add_credentials(**c)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server(pickup_window=1.0)


@pytest.fixture
async def make_client(server: Server) -> AsyncIterator[ClientFactory]:
    clients: list[Client] = []

    async def make(name: str = "svc", url: str | list[str] | None = None, **kwargs: Any) -> Client:
        kwargs.setdefault("connect_timeout", 5)
        client = Client(url or server.url, name=name, **kwargs)
        await client.connect()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        await client.close()


def action_in(partition: int, prefix: str = "job", *, partitions: int) -> str:
    """The first action ``{prefix}{i}:run`` whose tasks fall in ``partition`` of
    ``partitions`` (a test file binds its count: ``partial(action_in, partitions=P)``)."""
    i = 0
    while partition_of(f"{prefix}{i}:run", "", partitions) != partition:
        i += 1
    return f"{prefix}{i}:run"


async def until(check: Callable[[], Any], timeout: float = 5.0, step: float = 0.01) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; return that."""
    for _ in range(int(timeout / step) + 1):
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(step)
    raise TimeoutError(f"condition not met within {timeout}s")
