"""``Server``: the public way to run a hub in process (``taskhub serve`` uses it too)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
import ssl
import time
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import msgspec
import uvicorn

from taskhub.errors import InvalidOption, StoreInUse
from taskhub.hub.app import create_app
from taskhub.hub.auth import Registry
from taskhub.hub.http.origin import allowed_origins as parse_origins
from taskhub.hub.http.protocol import (
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_REQUEST_TIMEOUT,
    guarded_http_protocol,
)
from taskhub.hub.hub import Hub, Limits
from taskhub.hub.link import HubLinks
from taskhub.hub.listener import Listener
from taskhub.hub.partitioning import check_partition_count
from taskhub.hub.retention import DEFAULT_RETENTION
from taskhub.hub.ws import HubWebSocketProtocol
from taskhub.lifecycle import ACTION_OPTIONS, Clock, Defaults
from taskhub.lifecycle.schedules import Schedule
from taskhub.logs import events_log, log_task_event
from taskhub.partitions import DEFAULT_PARTITIONS, check_partitions
from taskhub.protocol import WS_PATH
from taskhub.store import REDIS_SCHEMES, Store, open_store
from taskhub.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from taskhub.hub.cluster import Cluster
    from taskhub.hub.membership import Membership
    from taskhub.processes import SharedPort

log = logging.getLogger("taskhub.server")
DEFAULT_SHUTDOWN_GRACE = 10.0
CLOSE_RESTART = 1012  # WebSocket "service restart": the client reconnects, maybe elsewhere


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    """A hub listening for WebSocket and HTTP on one port.

    ``task_start_timeout`` (None: wait forever) and ``task_end_timeout`` are the defaults a
    task's own ``start_timeout`` and ``timeout`` override. Without credentials the hub only
    serves loopback, and says so at start.

    Scheduling options (docs/scheduling.md): ``retention`` seconds ended tasks are kept
    (None: forever), ``archive`` a JSON-lines file they go to first, ``idempotency_window``
    how long a ``key`` returns the same task, ``action_defaults`` per-action option
    defaults (``{"email:send": {"retries": 3}}``), ``schedules`` cron schedules
    (``{"name", "cron", "action", "payload"?, "timezone"?, "options"?}``).

    ``store`` is a URL (:func:`taskhub.store.open_store`) or a store object: any other
    engine that implements :class:`taskhub.store.Store` (docs/architecture.md), which
    then serves this hub alone.

    With a Redis store (``redis://``, ``rediss://``, ``redis+cluster://``,
    ``rediss+cluster://``) several hubs form a cluster (docs/deployment.md):
    ``advertise_url`` is the base URL other hubs reach this one at (default: the URL it
    listens on), ``lease`` the seconds a leader holds the lock between renewals.

    Operation (docs/operations.md): ``tls_cert`` and ``tls_key`` (PEM files) serve wss://
    and https://; ``shutdown_grace`` is how long a graceful stop (SIGTERM under
    :meth:`run`/``taskhub serve``) lets started tasks finish; ``max_send_buffer`` the
    bytes of frames a connection that reads too slowly may have waiting before it is
    closed (docs/operations.md, "Slow readers").

    Exposure (docs/operations.md, "Limits"): ``allowed_origins`` web pages (origins such
    as ``"http://localhost:3000"``, or ``"*"``) a hub without credentials answers besides
    its own; ``request_timeout`` seconds a connection gets to send a whole request head
    (and body), ``keepalive_timeout`` seconds an idle HTTP connection is kept,
    ``max_connections_per_address`` HTTP connections one client address may hold open
    (0 or None: no cap); ``trusted_proxies`` the addresses or networks (``"10.0.0.0/8"``,
    ``"*"``) whose ``X-Forwarded-For`` names the client (None: uvicorn's default, loopback
    or ``FORWARDED_ALLOW_IPS``): the address the wrong-key throttle counts by.

    ``partitions`` (docs/deployment.md, "Partitions"): how many partitions the work is
    split into, 1 to 1024. The first hub records it in the store; a hub started on that store
    with another count is refused (:class:`~taskhub.errors.PartitionsMismatch`). With
    several on a store hubs share (a sqlite file, Redis) the hub leads the partitions whose
    leases it holds (docs/deployment.md, "Partition leases"). ``processes``: how many hub
    processes ``taskhub serve`` runs on this machine (:mod:`taskhub.processes`); a Server
    object is always one.
    """

    hub: Hub | None = None  # the hub this process runs, unless clustered (see leading)
    cluster: Cluster | None = None
    membership: Membership | None = None  # with leased partitions (docs/deployment.md)
    port_share: SharedPort | None = None  # a process of `serve --processes`
    listener: Listener | None = None  # uvicorn, while listening
    _handle_signals = False  # set by serve_forever(): SIGTERM/SIGINT stop gracefully

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        store: str | Store = "sqlite:///taskhub.db",
        task_start_timeout: float | None = None,
        task_end_timeout: float | None = 60.0,
        *,
        max_frame: int = 1024 * 1024,
        max_send_buffer: int = 16 * 1024 * 1024,
        pickup_window: float = 10.0,
        retries: int = 0,
        max_attempts: int = 5,
        retry_backoff: float = 1.0,
        ping_interval: float = 5.0,
        ping_timeout: float = 5.0,
        clock: Clock = time.time,
        name: str = "hub",
        retry_backoff_max: float = 300.0,
        idempotency_window: float = 3600.0,
        retention: float | None = DEFAULT_RETENTION,
        archive: str | None = None,
        action_defaults: dict[str, dict[str, Any]] | None = None,
        schedules: list[dict[str, Any]] | None = None,
        advertise_url: str | None = None,
        lease: float = 3.0,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        allowed_origins: list[str] | tuple[str, ...] = (),
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
        max_connections_per_address: int | None = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        trusted_proxies: list[str] | tuple[str, ...] | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        processes: int = 1,
    ) -> None:
        """The options are described on the class."""
        _check(tls_cert, tls_key, shutdown_grace, idempotency_window, retention, partitions)
        self.host, self.port, self.tls_cert, self.tls_key = host, port, tls_cert, tls_key
        self.shutdown_grace, self.clock, self.name = float(shutdown_grace), clock, name
        # A store object (a custom engine) is used as it is; a URL is opened at start.
        self._store = None if isinstance(store, str) else store
        self.store_url = store if isinstance(store, str) else store.url
        timeouts = (task_start_timeout, task_end_timeout, pickup_window, idempotency_window)
        retry = (retries, max_attempts, retry_backoff, retry_backoff_max)
        self.defaults = _task_defaults(timeouts, retry, action_defaults or {})
        self.retention, self.archive, self.processes = retention, archive, _processes(processes)
        self.schedules = [_schedule(i, s) for i, s in enumerate(schedules or [])]
        self.limits = _limits(max_frame, max_send_buffer, ping_interval, ping_timeout)
        self.registry = _registry(allowed_origins)
        timing = _http_timeouts(request_timeout, keepalive_timeout)
        self.request_timeout, self.keepalive_timeout = timing
        self.max_connections_per_address = _per_address(max_connections_per_address)
        self.trusted_proxies = _trusted_proxies(trusted_proxies)
        self.advertise_url, self.lease, self.partitions = advertise_url, lease, partitions
        self._stopping: asyncio.Future[None] | None = None
        self._stopped = asyncio.Event()
        self._force = asyncio.Event()  # a second signal: skip the rest of the grace period
        self._loop: asyncio.AbstractEventLoop | None = None

    def add_credentials(
        self,
        name: str,
        key: str | None = None,
        *,
        key_hash: str | None = None,
        sub_permissions: list[str] | tuple[str, ...] = (),
        pub_permissions: list[str] | tuple[str, ...] = (),
        max_connections: int | None = None,
    ) -> None:
        """Accept connections as ``name``; the key is kept only as a scrypt hash."""
        self.registry.add(
            name,
            key=key,
            key_hash=key_hash,
            sub_permissions=sub_permissions,
            pub_permissions=pub_permissions,
            max_connections=max_connections,
        )

    def inherit(self, fd: int) -> None:
        """Serve the socket ``fd`` a ``taskhub serve --processes`` parent bound."""
        from taskhub.processes import SharedPort

        self.port_share = SharedPort(fd)
        self.port = self.port_share.port

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to (wss:// with TLS)."""
        scheme = "wss" if self.tls_cert else "ws"
        return f"{scheme}://{self._display_host()}:{self.port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{self._display_host()}:{self.port}"

    def _display_host(self) -> str:
        return (
            "127.0.0.1"
            if self.host in ("0.0.0.0", "")
            else (f"[{self.host}]" if ":" in self.host else self.host)
        )

    async def start(self) -> None:
        """Open the store, take back unfinished tasks, and start listening."""
        self._check_tls()
        self._loop = asyncio.get_running_loop()
        self._stopping = None
        self._stopped = asyncio.Event()
        self._force = asyncio.Event()
        if self.registry.open_access:
            if not is_loopback(self.host):
                raise InvalidOption(
                    f"refusing to listen on {self.host}: no credentials are configured, so the "
                    "hub may only serve loopback (add credentials to listen elsewhere)"
                )
            log.warning(
                "no credentials configured: serving loopback only, every connection "
                "gets every permission"
            )
        # Several partitions on a store hubs can share (a sqlite file, Redis): each hub leads
        # the partitions whose leases it holds (docs/deployment.md, "Partition leases").
        if self._store is None and self.partitions > 1 and shared_store(self.store_url):
            await self._start_leased()
            return
        # Hubs on one Redis (or Redis Cluster) form a cluster (taskhub.hub.cluster); any other
        # store is a hub's own, so it runs its lifecycle alone.
        if self._store is None and self.store_url.startswith(REDIS_SCHEMES):
            await self._start_clustered()
            return
        self.hub = self._make_hub(self._store or open_store(self.store_url))
        await self.hub.start()
        try:
            await self._listen(create_app(self.hub))
        except BaseException:
            await self.hub.stop()  # the store is closed (and a sqlite file unlocked) again
            self.hub = None
            raise

    def _check_tls(self) -> None:
        """Fail at start with the file names, not deep inside uvicorn."""
        if self.tls_cert is None or self.tls_key is None:
            return
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                self.tls_cert, self.tls_key
            )
        except (OSError, ssl.SSLError) as exc:
            raise InvalidOption(
                f"cannot load TLS certificate {self.tls_cert!r} with key {self.tls_key!r}: {exc}"
            ) from None

    def _make_hub(self, store: Store, *, leased: bool = False) -> Hub:
        hub = self._new_hub(store, leased=leased)
        # The hub-to-hub links (docs/deployment.md, "The hub-to-hub link"); a leased hub's
        # root is its own (memory): it reads their secret in the deployment's for a moment.
        root = partial(open_store, self.store_url) if leased else None
        keepalive = (self.limits.ping_interval, self.limits.ping_timeout)
        hub.links = HubLinks(hub, keepalive=keepalive, open_root=root)
        if events_log.isEnabledFor(logging.DEBUG):  # decided at start: a call per event
            # Debug lines per task event (logs.py), of every partition led here.
            hub.each_lifecycle(lambda lc: lc.listeners.append(log_task_event))
        return hub

    def _new_hub(self, store: Store, *, leased: bool = False) -> Hub:
        return Hub(
            store,
            registry=self.registry,
            defaults=self.defaults,
            limits=self.limits,
            clock=self.clock,
            name=self.name,
            retention=self.retention,
            archive=self.archive,
            schedules=[msgspec.convert(s, Schedule) for s in self.schedules],
            partitions=self.partitions,
            partition_stores=None
            if leased
            else _partition_stores(self.store_url, self._store, self.partitions),
            leased=leased,
        )

    async def _start_leased(self) -> None:
        """Lead the partitions whose leases this process holds: listen first (the leases name
        our URL), then take a first share before returning (docs/deployment.md)."""
        from taskhub.hub.membership import Membership
        from taskhub.store.memory import MemoryStore

        await check_shared_partitions(self.store_url, self.partitions)
        hub = self.hub = self._make_hub(MemoryStore(), leased=True)
        await hub.start()
        self.membership = Membership(hub, self.store_url, lease=self.lease)
        try:
            await self._listen(create_app(hub))
            base = self.advertise_url or self.http_url
            await self.membership.start(
                self.port_share.advertised(base) if self.port_share else base
            )
        except BaseException:
            await self.stop()
            raise

    async def _start_clustered(self) -> None:
        """Several hubs over one Redis or Redis Cluster: listen first (the lock advertises
        our URL), then lead or relay to the leader (docs/deployment.md)."""
        from taskhub.hub.cluster import Cluster

        await _clustered_partitions(self.store_url, self.partitions)
        self.cluster = Cluster(
            self.store_url,
            make_hub=self._make_hub,
            make_app=create_app,
            lease=self.lease,
            keepalive=(self.limits.ping_interval, self.limits.ping_timeout),
        )
        await self._listen(self.cluster)
        await self.cluster.start(self.advertise_url or self.http_url)

    @property
    def leading(self) -> Hub | None:
        """The hub's lifecycle, if this process runs it (always, unless clustered)."""
        return self.cluster.hub if self.cluster is not None else self.hub

    async def _listen(self, app: Any) -> None:
        on_signal = self._on_signal if self._handle_signals else None
        self.listener = Listener(_uvicorn_config(self, app), on_signal)
        sockets = self.port_share.sockets(self.host) if self.port_share is not None else None
        try:
            bound = await self.listener.start(sockets)
        except BaseException:
            self.listener = None  # a later stop() has nothing to stop
            raise
        if bound:
            self.port = bound[0][1]
        # The addresses really bound (0.0.0.0 stays 0.0.0.0), not self.url: that is where a
        # client on this machine dials, 127.0.0.1 for a hub on every address.
        scheme = "wss" if self.tls_cert else "ws"
        where = ", ".join(
            f"{scheme}://{f'[{addr[0]}]' if ':' in addr[0] else addr[0]}:{addr[1]}{WS_PATH}"
            for addr in bound
        )
        log.info("taskhub listening on %s (store %s)", where or self.url, self._store_where())

    def _store_where(self) -> str:
        """The store URL, and for a sqlite file the absolute path it opened: three slashes
        are relative to the working directory (docs/operations.md), which a log must not
        leave the reader to guess."""
        store = self.hub.root if self.hub is not None else None
        if isinstance(store, SqliteStore) and store.path != ":memory:":
            return f"{self.store_url}, file {os.path.abspath(store.path)}"
        return self.store_url

    async def stop(self, grace: float = 0.0) -> None:
        """Shut down gracefully: stop taking connections and offering work, give started
        tasks up to ``grace`` seconds to finish (their returns are accepted), then close the
        remaining connections (their deliveries go back to their groups), flush the store.

        A second call waits for the first. ``taskhub serve`` and :meth:`run` stop with
        ``shutdown_grace`` on SIGTERM/SIGINT; a second signal skips what is left of the grace.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> None:
        hub = self.leading
        if hub is not None and self.listener is not None:
            hub.drain()
            # New connections: refused at the socket (listeners closed) and, for a request
            # already in flight on a kept-alive connection, by the endpoints while draining.
            self.listener.close_sockets()
            await _wait_idle(hub, grace, self._force)
            await hub.flush()  # what finished work caused reaches its connections first
            await hub.close_connections(code=CLOSE_RESTART, reason="hub shutting down")
            hub.end_waits()  # long polls and event streams answer now, before uvicorn stops
        if self.cluster is not None:
            await self.cluster.stop()
            self.cluster = None
        if self.membership is not None:
            await self.membership.stop()  # every partition handed off at once
            self.membership = None
        if self.listener is not None:
            # uvicorn waits (up to 5 s) for the connection handlers, whose `finally` detaches
            # each peer: its held deliveries are taken back before the hub's last flush.
            await self.listener.stop()
        if self.hub is not None:
            await self.hub.stop()  # writes the last batch, closes the store
            self.hub = None
            log.info("hub stopped; the store is flushed and closed")
        self._stopped.set()

    def _on_signal(self, sig: int) -> None:
        """SIGTERM/SIGINT, from uvicorn's handler: hand over to the loop at once (a signal
        handler must not log or take locks; it interrupts whatever the thread was doing)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._signalled, signal.Signals(sig).name)

    def _signalled(self, name: str) -> None:
        """Start the graceful stop; a second signal cuts the grace period short."""
        if self._stopping is None:
            log.info("%s: shutting down (grace %.1fs)", name, self.shutdown_grace)
            self._stopping = asyncio.ensure_future(self._stop(self.shutdown_grace))
        else:
            log.warning("%s again: stopping without waiting for running tasks", name)
            self._force.set()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        """Serve until stopped: :meth:`stop`, or SIGTERM/SIGINT (graceful, ``shutdown_grace``);
        returns normally then, so ``taskhub serve`` exits 0."""
        self._handle_signals = True
        # The process is the hub's: move what is loaded by now (modules: FastAPI, pydantic,
        # uvicorn, ...) out of the cyclic garbage collector's way. They live as long as the
        # process, and every full collection would walk them again, which cost ~15 % of the
        # hub's CPU under load (docs/performance.md). Before start(), so that tasks it
        # restores can still be collected once they end.
        gc.freeze()
        # A young collection every 10,000 allocations instead of 700: a burst allocates a few
        # containers per message, and at 700 the collector ran every few tasks and promoted
        # tasks in flight into the older generations, which are slow to walk. Ended tasks
        # are freed by reference counting (the lifecycle keeps no cycles), so the collector
        # has little to find anyway (docs/performance.md).
        gc.set_threshold(10_000, 10, 10)
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.stop(self.shutdown_grace)

    def run(self) -> None:
        """Block, serving until interrupted (Ctrl-C or SIGTERM)."""
        from taskhub.runtime import run

        run(self.serve_forever())


def _uvicorn_config(self: Server, app: Any) -> uvicorn.Config:
    """uvicorn serving ``app`` with ``self``'s limits, timeouts and TLS files."""
    return uvicorn.Config(
        app,
        host=self.host,
        port=self.port,
        log_level="warning",
        access_log=False,
        ws_max_size=self.limits.max_frame * 4 + 1024,
        ws_ping_interval=self.limits.ping_interval,
        ws_ping_timeout=self.limits.ping_timeout,
        lifespan="off",
        ws=HubWebSocketProtocol,
        http=guarded_http_protocol(
            request_timeout=self.request_timeout,
            keepalive_timeout=self.keepalive_timeout,
            max_per_address=self.max_connections_per_address,
        ),
        # uvicorn annotates an int but only hands it to loop.call_later
        timeout_keep_alive=cast(int, self.keepalive_timeout),
        forwarded_allow_ips=self.trusted_proxies,
        timeout_graceful_shutdown=5,
        ssl_certfile=self.tls_cert,
        ssl_keyfile=self.tls_key,
        log_config=None,  # logging is the process's business (logs.setup in `serve`)
    )


async def _wait_idle(hub: Hub, grace: float, force: asyncio.Event) -> None:
    """Wait up to ``grace`` seconds (or until ``force`` is set) for held deliveries to end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    if hub.busy():
        log.info("draining: %d delivery(ies) held; waiting up to %.1fs", hub.busy(), grace)
    while hub.busy() and not force.is_set():
        left = deadline - loop.time()
        if left <= 0:
            break
        # Polling: the lifecycle has no "a delivery was released" signal, and 50 ms is
        # nothing next to a grace period of seconds.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(force.wait(), min(left, 0.05))
    if hub.busy():
        log.warning(
            "shutdown grace over: handing %d running delivery(ies) back to their groups",
            hub.busy(),
        )


def _check(
    tls_cert: str | None,
    tls_key: str | None,
    shutdown_grace: float,
    idempotency_window: float,
    retention: float | None,
    partitions: int,
) -> None:
    try:
        check_partitions(partitions)
    except ValueError as exc:
        raise InvalidOption(str(exc)) from None
    if (tls_cert is None) != (tls_key is None):
        raise InvalidOption("tls_cert and tls_key go together: give both or neither")
    if shutdown_grace < 0:
        raise InvalidOption("shutdown_grace must be >= 0 seconds")
    if idempotency_window <= 0:
        raise InvalidOption("idempotency_window must be > 0 seconds")
    if retention is not None and retention < 0:
        raise InvalidOption("retention must be >= 0 seconds (or None: keep forever)")


def _task_defaults(
    timeouts: tuple[float | None, float | None, float, float],
    retry: tuple[int, int, float, float],
    actions: dict[str, dict[str, Any]],
) -> Defaults:
    """The lifecycle's defaults from Server's options: ``timeouts`` are (task_start_timeout,
    task_end_timeout, pickup_window, idempotency_window), ``retry`` (retries, max_attempts,
    retry_backoff, retry_backoff_max), ``actions`` the action_defaults."""
    start_timeout, end_timeout, pickup_window, idempotency_window = timeouts
    retries, max_attempts, backoff, backoff_max = retry
    return Defaults(
        task_start_timeout=start_timeout,
        task_end_timeout=end_timeout,
        retries=retries,
        max_attempts=max_attempts,
        retry_backoff=backoff,
        retry_backoff_max=backoff_max,
        pickup_window=pickup_window,
        idempotency_window=idempotency_window,
        actions=_action_defaults(actions),
    )


def _limits(
    max_frame: int, max_send_buffer: int, ping_interval: float, ping_timeout: float
) -> Limits:
    if max_send_buffer < 64 * 1024:
        raise InvalidOption("max_send_buffer must be at least 65536 bytes")
    return Limits(
        max_frame=max_frame,
        max_send_buffer=max_send_buffer,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
    )


def _partition_stores(url: str, store: Store | None, partitions: int) -> list[Store] | None:
    """Each partition's part of the store at ``url`` (None with one partition: the store is
    the partition's)."""
    if partitions == 1:
        return None
    if store is not None:
        raise InvalidOption(
            f"partitions = {partitions} needs a store URL (each partition opens its own part "
            "of the store); a store object serves one partition"
        )
    return [open_store(url, partition=i, partitions=partitions) for i in range(partitions)]


def shared_store(url: str) -> bool:
    """Whether several hub processes can share the store at ``url``: Redis, or a sqlite file
    (not ``sqlite://:memory:``, nor ``memory://``)."""
    if url.startswith(REDIS_SCHEMES):
        return True
    return url.startswith("sqlite:") and SqliteStore.from_url(url).path != ":memory:"


async def _clustered_partitions(url: str, partitions: int) -> None:
    """Every hub of a cluster checks the partition count at start, not only the one that comes
    to lead: a follower with another count would otherwise wait for its turn."""
    probe = open_store(url)
    await probe.open()
    try:
        await check_partition_count(probe, partitions)
    finally:
        await probe.close()


async def check_shared_partitions(url: str, partitions: int, tries: int = 50) -> None:
    """The partition count, checked (or recorded) in the deployment's own records before a
    leased hub starts. A sqlite file is locked while it is read: hub processes starting
    together wait their turn (0.1 s apart)."""
    for _ in range(tries - 1):
        try:
            await _clustered_partitions(url, partitions)
            return
        except StoreInUse:
            await asyncio.sleep(0.1)
    await _clustered_partitions(url, partitions)


def _processes(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidOption(f"processes must be an integer >= 1, got {n!r}")
    return n


def _registry(allowed_origins: list[str] | tuple[str, ...]) -> Registry:
    registry = Registry()
    registry.allowed_origins = parse_origins(allowed_origins)
    return registry


def _http_timeouts(request_timeout: float, keepalive_timeout: float) -> tuple[float, float]:
    if request_timeout <= 0 or keepalive_timeout <= 0:
        raise InvalidOption("request_timeout and keepalive_timeout must be > 0 seconds")
    return float(request_timeout), float(keepalive_timeout)


def _per_address(cap: int | None) -> int | None:
    if cap is not None and cap < 0:
        raise InvalidOption("max_connections_per_address must be >= 0 (0 or None: no cap)")
    return cap or None


def _action_defaults(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Check ``action_defaults``: known option names of valid actions, intervals as seconds."""
    from taskhub.intervals import parse_interval
    from taskhub.names import validate_action

    out: dict[str, dict[str, Any]] = {}
    for action, options in entries.items():
        validate_action(action)
        unknown = set(options) - ACTION_OPTIONS
        if unknown:
            raise InvalidOption(
                f"action defaults of {action!r}: unknown option(s) {sorted(unknown)}; known: "
                f"{', '.join(sorted(ACTION_OPTIONS))}"
            )
        checked = dict(options)
        for name in ("timeout", "start_timeout", "backoff", "backoff_max"):
            if checked.get(name) is not None:
                checked[name] = parse_interval(checked[name], option=f"{action} {name}")
        for name in ("retries", "max_attempts", "priority"):
            value = checked.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise InvalidOption(f"action defaults of {action!r}: {name} must be an integer")
        out[action] = checked
    return out


def _trusted_proxies(entries: list[str] | tuple[str, ...] | None) -> list[str] | None:
    """Check ``trusted_proxies``: ``*``, addresses or networks."""
    if entries is None:
        return None
    for entry in entries:
        if entry != "*":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise InvalidOption(
                    f"trusted_proxies: {entry!r} is not an address or network "
                    "(such as 10.0.0.5 or 10.0.0.0/8), nor '*'"
                ) from None
    return list(entries)


_SCHEDULE_KEYS = {"name", "cron", "action", "payload", "timezone", "options"}


def _schedule(index: int, entry: dict[str, Any]) -> dict[str, Any]:
    unknown = set(entry) - _SCHEDULE_KEYS
    missing = {"name", "cron", "action"} - set(entry)
    if unknown or missing:
        what = f"unknown key(s) {sorted(unknown)}" if unknown else f"missing {sorted(missing)}"
        raise InvalidOption(f"schedule #{index + 1}: {what}; keys: {sorted(_SCHEDULE_KEYS)}")
    from taskhub.hub.admin import schedule_options

    out = dict(entry)
    out["options"] = schedule_options(entry.get("options"))
    return out
