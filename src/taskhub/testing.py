"""Test your own workers and publishers against a real hub, in-process (docs/workers.md).

```python
import taskhub.testing

async def test_send():                      # in an async test
    async with taskhub.testing.hub() as url:
        ...                                 # Client(url), Worker(url)...

def test_send_sync(taskhub_url):            # the pytest fixture (any test, sync or async)
    ...
```

The hub is a real :class:`~taskhub.Server` on ``127.0.0.1`` (a free port), with a
``memory://`` store unless you pass ``store=``, and open access unless you pass
``credentials=[{"name": ..., "key": ...}, ...]``. Other keyword arguments go to ``Server``
(``task_end_timeout``, ``retries``, ``pickup_window``...).

The fixture ``taskhub_url`` is a pytest plugin: add ``pytest_plugins = ["taskhub.testing"]``
to your ``conftest.py``. It runs the hub in a thread of its own, so it needs no async test
plugin and works for sync and async tests alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskhub.server import Server

__all__ = ["hub", "running_hub", "taskhub_url"]


def _server(credentials: list[dict[str, Any]] | None, kwargs: dict[str, Any]) -> Server:
    from taskhub.server import Server

    kwargs.setdefault("host", "127.0.0.1")
    kwargs.setdefault("port", 0)
    kwargs.setdefault("store", "memory://")
    server = Server(**kwargs)
    for cred in credentials or []:
        server.add_credentials(**cred)
    return server


@contextlib.asynccontextmanager
async def hub(
    *, credentials: list[dict[str, Any]] | None = None, **server_options: Any
) -> AsyncIterator[str]:
    """A hub running on the current event loop for the block; yields its ``ws://`` URL."""
    server = _server(credentials, server_options)
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()


@contextlib.contextmanager
def running_hub(
    *, credentials: list[dict[str, Any]] | None = None, **server_options: Any
) -> Iterator[str]:
    """A hub running in a thread of its own for the block; yields its ``ws://`` URL."""
    server = _server(credentials, server_options)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="taskhub-test-hub", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
        try:
            yield server.url
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixture
    pass
else:

    @pytest.fixture
    def taskhub_url() -> Iterator[str]:
        """The URL of a fresh in-process hub (memory store, open access) for one test."""
        with running_hub() as url:
            yield url
