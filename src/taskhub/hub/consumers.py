"""Pull consumers (seed 002): services that fetch work over HTTP instead of holding a socket.

A consumer is a lifecycle :class:`Peer` like a WebSocket connection, with the same groups and
credit; the hub's messages for it go into a buffer that ``fetch`` reads instead of a socket.
Fetching an offer picks the delivery up and turns it into a *lease*. A lease not committed in
time goes back to its group and counts a try, as if a worker had died (at-least-once); a
consumer not heard from for ``idle_leases`` times its lease is stopped.

A consumer reaches the partitions of its actions wherever they are led: in process on this
hub's own, over the hub-to-hub link on another hub's, speaking the WebSocket protocol there as a
linked connection does (its steps wait for their ``ok``). When the link breaks, or a partition
it reached moves, the consumer is stopped: its next call answers 404 and the caller starts a new
one, as a WebSocket client reconnects.

A consumer lives on the hub that started it. With partition leases its id ends with that hub's
member id (``<id>.<member>``), so a call that reaches another hub of the deployment (behind a
load balancer) is run there over the link (:meth:`Consumers.call`, the ``consumer_call``
operation of ``Admin.ops``), with the caller's credentials; a hub that is gone answers 404.

Memory per consumer: the offers buffered for it (at most ``concurrency`` live ones, each with
its payload inline up to the hub's ``inline_payload_limit``) plus one small entry per lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec

from taskhub import protocol as p
from taskhub.errors import (
    AuthenticationFailed,
    InvalidOption,
    NotHolding,
    PermissionDenied,
    ProtocolError,
    StoreUnavailable,
    TaskHubError,
    from_wire,
)
from taskhub.hub.hub import Hub
from taskhub.hub.partition import Linked, LocalPartition, Partition, unavailable
from taskhub.hub.router import action_partition, task_partition
from taskhub.ids import new_id
from taskhub.lifecycle import Credentials, Message, Peer
from taskhub.protocol import plain

log = logging.getLogger("taskhub.consumers")

MAX_LEASE = 24 * 3600.0
_REMEMBERED = 1024  # lapsed leases whose late commit is still accepted (first return wins)


class ConsumerNotFound(TaskHubError, LookupError):
    code = "consumer_not_found"


@dataclass(eq=False)
class Lease:
    task_id: str
    attempt: int
    expires_at: float
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class Consumer:
    id: str
    token: str
    peer: Peer
    group: str
    actions: tuple[str, ...]
    concurrency: int
    lease: float  # seconds a fetched task is leased for
    last_seen: float
    offers: deque[Message] = field(default_factory=deque)
    leases: dict[str, Lease] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)  # task -> attempt last leased
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    fetching: int = 0
    stopped: bool = False
    idle_timer: asyncio.TimerHandle | None = None
    # Its requests to partitions other hubs lead, waiting for their answer, by ref.
    asked: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    refs: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def deliver(self, frame: bytes) -> None:
        """The hub's sender for this peer: called after the state behind ``frame`` is stored."""
        decoded = msgspec.json.decode(frame)
        for msg in decoded if isinstance(decoded, list) else [decoded]:
            op = msg.get("op")
            if (op == "ok" or op == "error") and msg.get("ref") in self.asked:
                answered(self.asked.pop(msg["ref"]), msg)
            elif op == "offer" and msg.get("attempt", 0) > 0:
                self.offers.append(msg)
                self.arrived.set()
            elif op == "revoke" or (op == "event" and msg.get("type") == "success"):
                # The lease is over (timed out, cancelled, or someone else returned first).
                lease = self.leases.get(msg["task"])
                if lease is not None and (op == "event" or lease.attempt == msg["attempt"]):
                    self.end_lease(lease)

    def end_lease(self, lease: Lease) -> None:
        """The lease is over: its timer stops and it is forgotten."""
        if lease.timer is not None:
            lease.timer.cancel()
        self.leases.pop(lease.task_id, None)

    async def ask(self, remote: Linked, make: Callable[[int], p.Inbound]) -> dict[str, Any]:
        """Send ``make(ref)`` to a partition another hub leads; its ``ok`` (or its error, raised
        as the leader raised it)."""
        ref = next(self.refs)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.asked[ref] = fut
        try:
            remote.handle(self.peer, make(ref))
            return await fut
        finally:
            self.asked.pop(ref, None)

    def cut(self, why: str) -> None:
        """What it waits for from other hubs will not come: the requests fail (retryable)."""
        for fut in self.asked.values():
            if not fut.done():
                fut.set_exception(StoreUnavailable(f"consumer {self.id}: {why}; retry"))
        self.asked.clear()


def answered(fut: asyncio.Future[dict[str, Any]], msg: dict[str, Any]) -> None:
    if fut.done():
        return
    if msg["op"] == "ok":
        fut.set_result(msg)
    else:
        fut.set_exception(from_wire(msg))


class Consumers:
    """Every pull consumer of one hub, with their lease and idle timers."""

    def __init__(self, hub: Hub, *, idle_leases: float = 3.0) -> None:
        self.hub = hub
        self.idle_leases = idle_leases
        self.by_id: dict[str, Consumer] = {}
        hub.admin.ops["consumer_call"] = self._call_here

    # --- one call, on the hub that started the consumer -------------------------------------
    async def call(
        self,
        consumer_id: str,
        token: str | None,
        creds: Credentials,
        step: str,
        args: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Run ``step`` (``fetch``, ``commit``, ``update``, ``extend``, ``fail``, ``drop``,
        ``stop``; the HTTP API's calls, their body as ``args``) of the consumer
        ``consumer_id``: its answer (None: nothing to lease in time). A consumer another live
        hub of the deployment started is run there, over the link."""
        home = None if consumer_id in self.by_id else self._home(consumer_id)
        if home is not None and self.hub.links is not None:
            call = {"consumer": consumer_id, "token": token, "step": step, "args": args}
            answer: dict[str, Any] | None = await self.hub.links.ask(
                home, "consumer_call", creds, [], call
            )
            return answer
        return await self._run(self.get(consumer_id, token, creds), step, args)

    def _home(self, consumer_id: str) -> str | None:
        """The URL of the other live hub whose member id ``consumer_id`` ends with."""
        _, dot, member = consumer_id.rpartition(".")
        leading = self.hub.leading
        if not dot or not member or member == leading.instance:
            return None
        return leading.members().get(member)

    async def _call_here(
        self, creds: Credentials, parts: list[LocalPartition], call: dict[str, Any]
    ) -> dict[str, Any] | None:
        # Asked by another hub (never sent on: a consumer lives on the hub that started it).
        c = self.get(str(call["consumer"]), call.get("token"), creds)
        return await self._run(c, str(call["step"]), dict(call["args"]))

    async def _run(self, c: Consumer, step: str, args: dict[str, Any]) -> dict[str, Any] | None:
        if step == "fetch":
            got = await self.fetch(c, min(float(args["wait"]), self.hub.limits.max_wait))
            return None if got is None else got[1]
        if step == "stop":
            handed_back = self.stop(c)
            await self.hub.flush()
            return {"consumer_id": c.id, "handed_back": handed_back}
        task_id = str(args["task_id"])
        if step == "commit":
            await self.commit(c, task_id, args.get("result"))
        elif step == "update":
            await self.update(c, task_id, args.get("data"))
        elif step == "extend":
            await self.extend(c, task_id, float(args["seconds"]))
        elif step == "fail":
            error = msgspec.convert(args.get("error") or {}, p.ErrorInfo)
            await self.fail(c, task_id, error, retry=bool(args.get("retry", True)))
        elif step == "drop":
            await self.drop(c, task_id)
        else:
            raise ProtocolError(f"no pull consumer call {step!r}")
        await self.hub.flush()  # the step is stored before it is confirmed
        rec = await self.hub.find(task_id)
        return {"task_id": task_id, "state": rec.state if rec else "end"}

    # --- where its partitions are ------------------------------------------------------------
    def _slot(self, index: int) -> LocalPartition | Linked:
        slot: Partition = self.hub.router.partitions[index]
        if slot.local is not None:
            return slot.local
        if slot.linked is not None:
            return slot.linked
        raise unavailable(slot.index, slot.leader)

    def _of_action(self, action: str) -> LocalPartition | Linked:
        return self._slot(action_partition(action, len(self.hub.router.partitions)))

    def _of_task(self, task_id: str) -> LocalPartition | Linked:
        return self._slot(task_partition(task_id, len(self.hub.router.partitions)))

    # --- start and stop ----------------------------------------------------------------------
    async def start(
        self,
        creds: Credentials,
        actions: list[str],
        *,
        group: str | None = None,
        concurrency: int = 1,
        lease: float = 30.0,
        durable: bool = False,
        remote: str | None = None,
        client: str | None = None,
    ) -> Consumer:
        """Start a consumer of ``actions``; ``remote`` and ``client``: where it calls from and
        its HTTP client, as the dashboard's workers view shows them."""
        if not 0 < lease <= MAX_LEASE:
            raise InvalidOption(f"lease must be > 0 and <= {MAX_LEASE:g} seconds", option="lease")
        hub = self.hub
        if hub.draining:  # shutting down: new work must go to another hub
            raise StoreUnavailable("this hub is shutting down; start the consumer elsewhere")
        member = hub.leading.instance  # the hub that serves it, for the others (_home)
        peer = Peer(f"{new_id()}.{member}" if member else new_id(), creds)
        peer.remote = remote
        if client:
            peer.hello = {"client": client}
        await hub.registry.claim_connection(creds)  # a consumer counts as a connection
        c = Consumer(
            id=peer.id,
            token=secrets.token_urlsafe(32),
            peer=peer,
            group=group or creds.name,
            actions=tuple(dict.fromkeys(actions)),
            concurrency=concurrency,
            lease=lease,
            last_seen=hub.clock(),
        )

        async def closed(code: int, reason: str) -> None:
            # A link it used broke, the hub it reached there stops, or a partition it reached
            # moved: its subscriptions there are gone, so it is stopped (its caller starts a
            # new one, as a client reconnects). This hub shutting down answers its long polls
            # instead (Hub.end_waits).
            if hub.draining:
                return
            c.cut(reason or "closed")
            if not c.stopped:
                log.info("pull consumer %s stopped: %s (%d)", c.id, reason, code)
                self.stop(c)

        hub.attach(peer, c.deliver, closed)
        try:
            await self._subscribe(c, durable)
        except BaseException:
            c.stopped = True
            hub.detach(peer)  # unsubscribes what succeeded, releases the connection
            raise
        self.by_id[c.id] = c
        self._arm_idle(c, self._idle_after(c))
        hub.kick()
        log.info("pull consumer %s started for %s (group %s)", c.id, creds.name, c.group)
        return c

    async def _subscribe(self, c: Consumer, durable: bool) -> None:
        """Subscribe ``c`` to each of its actions: here at once, elsewhere over the link."""
        elsewhere: list[Any] = []
        for action in c.actions:
            part = self._of_action(action)
            if not isinstance(part, LocalPartition):
                sub = p.Sub(action, c.group, c.concurrency, durable=durable)
                elsewhere.append(c.ask(part, partial(_with_ref, sub)))
                continue
            own = part.peer(c.peer)
            part.lc.subscribe(
                own, action, group=c.group, concurrency=c.concurrency, durable=durable
            )
        if elsewhere:
            self.hub.kick()
            await asyncio.gather(*elsewhere)

    def stop(self, c: Consumer) -> int:
        """Stop ``c``: its leases and buffered offers go back to the group, uncounted."""
        c.stopped = True
        self.by_id.pop(c.id, None)
        if c.idle_timer is not None:
            c.idle_timer.cancel()
        for action in c.actions:  # first, so what it hands back is not offered to it again
            with contextlib.suppress(TaskHubError):  # no hub leads it now: nothing there
                part = self._of_action(action)
                if not isinstance(part, LocalPartition):
                    part.handle(c.peer, p.Unsub(action, c.group))
                else:
                    part.lc.unsubscribe(part.peer(c.peer), action)
        handed_back = 0
        for lease in list(c.leases.values()):
            c.end_lease(lease)
            with contextlib.suppress(TaskHubError):  # ended or re-offered meanwhile
                self._take_back(c, lease, "consumer_stopped", count_try=False)
                handed_back += 1
        self.hub.detach(c.peer)  # unsubscribes; offers not yet fetched go back too
        c.cut("it was stopped")
        c.arrived.set()  # wake its long polls: they answer 404
        return handed_back

    def _take_back(self, c: Consumer, lease: Lease, reason: str, *, count_try: bool) -> None:
        part = self._of_task(lease.task_id)
        if not isinstance(part, LocalPartition):
            part.take_back(c.peer, lease.task_id, lease.attempt, reason, count_try=count_try)
            return
        own = part.peer(c.peer)
        part.lc.take_back(own, lease.task_id, lease.attempt, reason, count_try=count_try)

    def get(self, consumer_id: str, token: str | None, creds: Credentials) -> Consumer:
        """The consumer, if ``token`` is its token and ``creds`` the service that started it."""
        c = self.by_id.get(consumer_id)
        if c is None:
            raise ConsumerNotFound(
                f"no consumer {consumer_id} on this hub (a pull consumer is served by the hub "
                "that started it, until it is stopped)",
                consumer=consumer_id,
            )
        if not token or not hmac.compare_digest(token.encode(), c.token.encode()):
            raise AuthenticationFailed(
                f"missing or wrong X-Consumer-Token for consumer {consumer_id}"
            )
        if creds.name != c.peer.service:
            raise PermissionDenied(
                f"consumer {consumer_id} belongs to {c.peer.service!r}, not {creds.name!r}"
            )
        c.last_seen = self.hub.clock()
        return c

    # --- fetch -------------------------------------------------------------------------------
    async def fetch(self, c: Consumer, wait: float) -> tuple[Lease, dict[str, Any]] | None:
        """Lease the next offered task, waiting up to ``wait`` seconds for one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        c.fetching += 1
        try:
            while True:
                if c.stopped:
                    raise ConsumerNotFound(f"consumer {c.id} was stopped", consumer=c.id)
                got = await self._lease_next(c)
                if got is not None:
                    return got
                c.arrived.clear()  # the buffer is empty now: wait for the next offer
                remaining = deadline - loop.time()
                if remaining <= 0 or self.hub.waits_ended:  # or shutting down: answer now
                    return None
                with (
                    self.hub.long_wait(c.arrived.set),
                    contextlib.suppress(TimeoutError),
                ):
                    await asyncio.wait_for(c.arrived.wait(), remaining)
        finally:
            c.fetching -= 1
            c.last_seen = self.hub.clock()

    async def _lease_next(self, c: Consumer) -> tuple[Lease, dict[str, Any]] | None:
        while c.offers:
            msg = c.offers.popleft()
            task_id, attempt = msg["task"], msg["attempt"]
            payload = await self._pick_up(c, task_id, attempt, msg)
            if payload is _GONE:
                continue  # revoked (pickup window) or ended since it was offered
            self.hub.kick()
            lease = Lease(task_id, attempt, self.hub.clock() + c.lease)
            c.leases[task_id] = lease
            c.attempts.pop(task_id, None)
            c.attempts[task_id] = attempt
            if len(c.attempts) > _REMEMBERED:
                del c.attempts[next(iter(c.attempts))]
            self._arm_lease(c, lease, c.lease)
            view = {
                "task_id": task_id,
                "attempt": attempt,
                "action": msg["action"],
                "group": msg["group"],
                "publisher": msg["publisher"],
                "created_at": msg["created_at"],
                "payload": payload,
                "lease_expires_at": lease.expires_at,
            }
            if "previous_result" in msg:
                view["previous_result"] = plain(msg["previous_result"])
            if "trace" in msg:  # the consumer's span continues the publisher's trace
                view["trace"] = msg["trace"]
            return lease, view
        return None

    async def _pick_up(self, c: Consumer, task_id: str, attempt: int, offer: Message) -> Any:
        """Start the offered delivery; its payload (also when too large to ride in the offer),
        or ``_GONE`` when the offer is over (revoked, ended, no hub leads its partition)."""
        try:
            part = self._of_task(task_id)
        except TaskHubError:
            return _GONE
        if isinstance(part, LocalPartition):
            own = part.peer(c.peer)
            d = own.holding.get(task_id)
            if d is None or d.rec.attempt != attempt or d.rec.state != "offered":
                return _GONE
            part.lc.pickup(own, task_id, attempt)
            return plain(d.task.rec.payload)
        try:
            await c.ask(part, lambda ref: p.Pickup(task_id, attempt, ref))
            if "payload" in offer:
                return offer["payload"]
            got = await c.ask(part, lambda ref: p.GetPayload(task_id, ref))
            return got.get("payload")
        except TaskHubError:
            return _GONE

    # --- steps on a lease --------------------------------------------------------------------
    def _attempt(self, c: Consumer, task_id: str) -> int:
        lease = c.leases.get(task_id)
        if lease is not None:
            return lease.attempt
        attempt = c.attempts.get(task_id)
        if attempt is None:
            raise NotHolding(f"consumer {c.id} never leased task {task_id}", task=task_id)
        return attempt  # a lapsed lease: the lifecycle decides (a late commit still wins)

    async def _step(self, c: Consumer, step: p.Inbound) -> None:
        """Apply a step on one of ``c``'s deliveries where its partition is led: here at once,
        elsewhere once that hub answers ``ok`` (its error raised here)."""
        task_id = getattr(step, "task", "")
        part = self._of_task(task_id)
        if not isinstance(part, LocalPartition):
            await c.ask(part, lambda ref: _with_ref(step, ref))
            return
        err = part.dispatcher.ops[type(step)](part.peer(c.peer), step)
        assert err is None  # a step never waits for the store

    def _done(self, c: Consumer, task_id: str) -> None:
        lease = c.leases.get(task_id)
        if lease is not None:
            c.end_lease(lease)
        c.attempts.pop(task_id, None)
        self.hub.kick()

    async def commit(self, c: Consumer, task_id: str, result: Any) -> None:
        raw = msgspec.Raw(msgspec.json.encode(result))
        await self._step(c, p.Return(task_id, self._attempt(c, task_id), result=raw))
        self._done(c, task_id)

    async def update(self, c: Consumer, task_id: str, data: Any) -> None:
        await self._step(c, p.Update(task_id, self._attempt(c, task_id), data=data))
        lease = c.leases.get(task_id)
        if lease is not None:  # progress is a heartbeat: the lease starts over
            lease.expires_at = self.hub.clock() + c.lease
        self.hub.kick()

    async def extend(self, c: Consumer, task_id: str, seconds: float) -> None:
        """Push the task's end timeout to at least ``seconds`` from now, and the lease with
        it (a lease never ends before the time the consumer asked for)."""
        await self._step(c, p.Extend(task_id, self._attempt(c, task_id), seconds=seconds))
        lease = c.leases.get(task_id)
        if lease is not None:
            lease.expires_at = max(lease.expires_at, self.hub.clock() + seconds)
        self.hub.kick()

    async def fail(self, c: Consumer, task_id: str, error: p.ErrorInfo, *, retry: bool) -> None:
        await self._step(c, p.Fail(task_id, self._attempt(c, task_id), error=error, retry=retry))
        self._done(c, task_id)

    async def drop(self, c: Consumer, task_id: str) -> None:
        await self._step(c, p.Drop(task_id, self._attempt(c, task_id)))
        self._done(c, task_id)

    # --- timers (the event loop's, measured with the hub's clock) -----------------------------
    def _arm_lease(self, c: Consumer, lease: Lease, delay: float) -> None:
        loop = asyncio.get_running_loop()
        lease.timer = loop.call_later(max(0.0, delay), self._lease_due, c, lease)

    def _lease_due(self, c: Consumer, lease: Lease) -> None:
        if c.stopped or c.leases.get(lease.task_id) is not lease:
            return
        left = lease.expires_at - self.hub.clock()
        if left > 0:  # renewed by an update
            self._arm_lease(c, lease, left)
            return
        c.end_lease(lease)
        with contextlib.suppress(TaskHubError):  # ended or re-offered meanwhile
            self._take_back(c, lease, "lease_expired", count_try=True)
            log.info("lease of task %s by consumer %s expired", lease.task_id, c.id)
        self.hub.kick()

    def _idle_after(self, c: Consumer) -> float:
        return self.idle_leases * c.lease

    def _arm_idle(self, c: Consumer, delay: float) -> None:
        loop = asyncio.get_running_loop()
        c.idle_timer = loop.call_later(max(0.0, delay), self._idle_due, c)

    def _idle_due(self, c: Consumer) -> None:
        if c.stopped:
            return
        quiet = self.hub.clock() - c.last_seen
        if c.fetching or quiet < self._idle_after(c):
            self._arm_idle(c, self._idle_after(c) - (0 if c.fetching else quiet))
            return
        log.info("pull consumer %s not heard from for %.1fs; stopping it", c.id, quiet)
        self.stop(c)


_GONE: Any = object()  # an offer that is over before it was picked up


def _with_ref(msg: Any, ref: int) -> Any:
    """``msg`` asking for an answer to ``ref``."""
    return msgspec.structs.replace(msg, ref=ref)
