"""uvicorn's HTTP protocol with the two limits it lacks: a deadline for the request, and a cap
on the HTTP connections one address holds (docs/operations.md, "Limits").

uvicorn times out an idle keep-alive connection (``timeout_keep_alive``), but cancels that
timer at the first byte that arrives and arms nothing while a request head is incomplete: a
connection that sends half a head and stops (slowloris) is kept forever, and about a thousand
of them take every file descriptor of the process. Here a connection must have sent a whole
request (head and body) within ``request_timeout`` seconds of being opened, or of the last
response plus ``keepalive_timeout``; otherwise it is closed. A request whose handler runs
long (a long poll) is not affected: the deadline only closes a connection whose request is
still arriving. WebSocket connections leave this protocol at the upgrade (ws/transport.py) and
are bounded by credentials and pings instead.

Many addresses together can still open more connections than the process has descriptors:
of the connections waiting for a request head, at most half the descriptor limit are kept,
the one waiting longest is closed first.

This is the one place that uses uvicorn's HTTP internals: ``cycle`` (the request being
answered: ``response_complete``, ``more_body``), ``on_response_complete``,
``handle_websocket_upgrade`` and httptools' ``on_headers_complete`` callback.
tests/integration/test_http_limits.py checks they are there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("taskhub.http")

DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_KEEPALIVE_TIMEOUT = 5.0
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 256


def guarded_http_protocol(
    *, request_timeout: float, keepalive_timeout: float, max_per_address: int | None
) -> type[HttpToolsProtocol]:
    """A protocol class for one server: its connection counts are that server's own."""

    class Guarded(GuardedHTTPProtocol):
        pass

    Guarded.request_timeout = request_timeout
    Guarded.keepalive_timeout = keepalive_timeout
    Guarded.max_per_address = max_per_address
    Guarded.open_per_address = {}
    Guarded.capped = set()
    Guarded.waiting = {}
    Guarded.max_waiting = max_waiting()
    return Guarded


def max_waiting() -> int:
    """Connections that may wait for a request head at once: half the file descriptors the
    process may open, so that the rest stays for connections that do send requests."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, soft // 2) if soft != resource.RLIM_INFINITY else 1 << 20


class GuardedHTTPProtocol(HttpToolsProtocol):
    request_timeout = DEFAULT_REQUEST_TIMEOUT
    keepalive_timeout = DEFAULT_KEEPALIVE_TIMEOUT
    max_per_address: int | None = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    open_per_address: dict[str, int] = {}  # HTTP connections open per client address
    capped: set[str] = set()  # addresses refused since they were last under the cap (logged once)
    # Connections waiting for a request head (new, or idle after an answer), oldest first.
    waiting: dict[GuardedHTTPProtocol, None] = {}
    max_waiting = 512

    _deadline: asyncio.TimerHandle | None = None
    _address: str | None = None  # counted in open_per_address

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else None
        if address is not None and self.max_per_address is not None:
            held = self.open_per_address.get(address, 0)
            if held >= self.max_per_address:
                self._refuse(transport, address, held)
                return
            self.open_per_address[address] = held + 1
            self._address = address
        self._arm(self.request_timeout)
        self._wait_for_head()

    def on_headers_complete(self) -> None:
        self.waiting.pop(self, None)
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # kept alive: the next request has this long
            self._arm(self.keepalive_timeout + self.request_timeout)
            if self.cycle is None or self.cycle.response_complete:  # not a pipelined one
                self._wait_for_head()

    def _wait_for_head(self) -> None:
        """Count this connection among those waiting for a head; past ``max_waiting`` the
        one that has waited longest is closed. Many connections from many addresses that
        send nothing (or half a head) then cost at most half the descriptors, and a client
        whose request arrives at once is never the oldest."""
        waiting = self.waiting
        waiting.pop(self, None)
        waiting[self] = None
        while len(waiting) > self.max_waiting:
            oldest = next(iter(waiting))
            del waiting[oldest]
            log.debug("closing the connection that waited longest for a request head")
            oldest.transport.close()

    def handle_websocket_upgrade(self) -> None:
        self._release()  # no longer an HTTP connection of this address
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = asyncio.get_running_loop().call_later(seconds, self._on_deadline)

    def _on_deadline(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return
        cycle: Any = self.cycle
        if cycle is None or cycle.response_complete or cycle.more_body:
            # No request being answered, or its body still arriving: too slow, close it.
            # A request being answered (a long poll) is left alone; its response re-arms.
            log.debug("closing a connection from %s: no whole request in time", self._address)
            transport.close()

    def _release(self) -> None:
        self.waiting.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        address, self._address = self._address, None
        if address is None:
            return
        held = self.open_per_address.get(address, 1) - 1
        if held <= 0:
            self.open_per_address.pop(address, None)
        else:
            self.open_per_address[address] = held
        if self.max_per_address is None or held < self.max_per_address:
            self.capped.discard(address)

    def _refuse(self, transport: asyncio.Transport, address: str, held: int) -> None:
        if address not in self.capped:
            self.capped.add(address)
            log.warning(
                "%s holds %d HTTP connections (max_connections_per_address); refusing more",
                address,
                held,
            )
        body = json.dumps(
            {
                "code": "too_many_connections",
                "message": f"{address} already holds {held} HTTP connections to this hub "
                f"(max_connections_per_address is {self.max_per_address})",
            }
        ).encode()
        transport.write(
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        transport.close()
