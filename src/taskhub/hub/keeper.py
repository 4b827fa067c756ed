"""Keeps this hub's share of the partitions: the leases it should hold, and only those.

Every ``interval`` (a third of the lease by default) the keeper lists the live members,
computes the assignment (:mod:`taskhub.hub.assign`, the same in every hub), and then

- renews the leases it holds, and heartbeats its member record; a lease refused, or not
  renewed before it runs out by the keeper's own clock (counted from when the last successful
  renewal was *sent*), is lost: ``on_lost(p)`` at once, and the hub must stop leading p
  (its fenced store refuses writes by then anyway). Given ``open_renewal_leases``, the
  renewals and the heartbeat run apart from the rounds, in a thread of their own over leases
  of their own (:class:`~taskhub.hub.renewer.PartitionRenewer`), every ``lease / 3`` whatever
  the hub's event loop does; the rounds then do the rest;
- hands off a partition another live member should lead: ``on_release(p)`` first (the hub
  flushes and stops the partition), then the lease is released so the successor takes it
  at its next round, without waiting for expiry;
- takes the partitions it should lead whose lease is free: ``on_gained(p, token)`` with the
  new fencing token (the hub opens the partition's fenced store with it). A dead member's
  partitions are taken this way once its member record and its leases have expired;
- reads who holds each partition it does not lead: ``on_leader(p, url)`` when that changed
  (the leader's advertised URL, "" while nobody holds it), so the hub can name or reach it.

Between rounds :meth:`look_soon` reads one partition's lease every ``poll`` seconds, for at
most one lease: the hub asks it for a partition no hub holds that a message waits for
(hub/unled.py), or whose leader's link broke (until the lease names another leader), and the
keeper itself for one it should lead that another hub still holds (so it takes it as soon as
that hub hands it off, not a round later). A look that finds a lease free which another hub
should lead reads the members again: when that hub is the one that died, this hub may be the
one to take it, now rather than at its next round.

:meth:`stop` takes the member off the list and hands off every partition at once (SIGTERM:
graceful hand-off). Only the lease protocol is used (:class:`~taskhub.store.PartitionLeases`);
the clock is injected, so tests drive :meth:`tick` with a fake one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from taskhub.errors import StoreUnavailable
from taskhub.hub.assign import assign
from taskhub.hub.renewer import PartitionRenewer
from taskhub.store.lock import Member, PartitionLeases, Token

log = logging.getLogger("taskhub.keeper")

Gained = Callable[[int, str], Awaitable[None]]
Changed = Callable[[int], Awaitable[None]]
Leader = Callable[[int, str], None]


async def _nothing(partition: int, token: str = "") -> None:
    return None


def _ignore(partition: int, url: str) -> None:
    return None


class PartitionKeeper:
    """The leases of one hub process (``instance``, reachable at ``url``)."""

    def __init__(
        self,
        leases: PartitionLeases,
        *,
        instance: str,
        url: str,
        lease: float = 3.0,
        interval: float | None = None,
        poll: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        on_gained: Gained = _nothing,
        on_release: Changed = _nothing,
        on_lost: Changed = _nothing,
        on_leader: Leader = _ignore,
        open_renewal_leases: Callable[[], PartitionLeases] | None = None,
        stall: float | None = None,
    ) -> None:
        """``lease``: seconds a lease (and the member record) lasts without renewal.
        ``interval``: seconds between rounds (:meth:`start`), ``lease / 3`` by default; less
        than the lease, so a renewal can fail and be retried before it runs out. ``poll``:
        seconds between two reads of a lease :meth:`look_soon` watches (0: it does nothing,
        the rounds alone read the leases). ``clock``: monotonic seconds (a test's fake
        clock). ``open_renewal_leases``: new leases over the same store, for a renewal thread
        (``clock`` must be ``time.monotonic`` then); without it the rounds renew. ``stall``:
        seconds the hub's loop may not run before that thread lets every lease go (ten
        leases by default)."""
        if lease <= 0:
            raise ValueError(f"lease must be > 0 seconds, got {lease}")
        interval = lease / 3 if interval is None else interval
        if not 0 < interval < lease:
            raise ValueError(f"interval must be > 0 and < the lease ({lease}s), got {interval}")
        self.interval = interval
        if poll < 0:
            raise ValueError(f"poll must be >= 0 seconds, got {poll}")
        self.poll = poll
        self.leases = leases
        self.member = Member(instance, url.rstrip("/"))
        self.holder = f"{instance} {self.member.url}"
        self.lease = lease
        self.clock = clock
        self.on_gained = on_gained
        self.on_release = on_release
        self.on_lost = on_lost
        self.on_leader = on_leader
        self.leaders: dict[int, str] = {}  # partitions led elsewhere -> the leader's URL
        self.tokens: dict[int, str] = {}  # partition -> the token this hub holds it with
        self._until: dict[int, float] = {}  # partition -> clock time the lease surely lasts
        self.members: list[Member] = []  # the live members at the last round
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        # One round or lookup at a time: each applies what it read in the order it read it.
        self._turn = asyncio.Lock()
        self._asked: dict[int, float] = {}  # partitions look_soon watches -> until (clock)
        self._past: dict[int, str] = {}  # ... -> a leader's URL looked past (its link broke)
        self._looker: asyncio.Task[None] | None = None
        self.open_renewal_leases = open_renewal_leases
        self.stall = stall
        self.renewer: PartitionRenewer | None = None  # the renewal thread, when there is one
        self._losing: set[asyncio.Task[None]] = set()  # losses the renewer told

    @property
    def ttl_ms(self) -> int:
        return int(self.lease * 1000)

    def leads(self, partition: int) -> bool:
        """This hub holds the partition's lease and it has not run out by the keeper's clock."""
        return partition in self.tokens and self.clock() < self._until_of(partition)

    def _until_of(self, partition: int) -> float:
        if self.renewer is not None:
            return self.renewer.until(partition)
        return self._until[partition]

    def led(self) -> list[int]:
        """The partitions this hub leads now."""
        return sorted(p for p in self.tokens if self.leads(p))

    def wanted(self) -> set[int]:
        """The partitions this hub should lead, by the member list of the last round."""
        ids = {m.instance for m in self.members} | {self.member.instance}
        owners = assign(self.leases.partitions, ids)
        return {p for p, m in owners.items() if m == self.member.instance}

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Run :meth:`tick` every ``interval`` seconds in a task until :meth:`stop`."""
        self._task = asyncio.create_task(self._run(), name="taskhub-partition-keeper")

    async def _run(self) -> None:
        # Checked besides the cancellation: a store client may swallow a cancellation that
        # lands while it waits on the network (redis-py does), and the loop must end anyway.
        loop = asyncio.get_running_loop()
        while not self._stopped:
            began = loop.time()
            try:
                await self.tick()
            except StoreUnavailable as exc:  # the leases lapse by the clock meanwhile
                log.warning("cannot reach the partition leases: %s", exc)
            # A round's calls wait their turn on a busy hub's event loop (a second or more
            # under a saturating load): rounds start every interval, however long one took.
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - began)))

    async def stop(self) -> None:
        """Leave the member list and hand off every partition (on_release, then release)."""
        self._stopped = True
        for task in (self._task, self._looker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._looker = None
        renewer = self.renewer
        if renewer is not None:
            await renewer.leave()  # no heartbeat lands after the record is taken off
        with contextlib.suppress(StoreUnavailable):
            await self.leases.leave(self.member.instance)
        try:
            for p in sorted(self.tokens):
                await self._hand_off(p)  # the renewer keeps the leases while they flush
        finally:
            if renewer is not None:
                renewer.stop()

    def _renew_apart(self) -> None:
        """Start the renewal thread, or a new one after the last let the leases go."""
        if self.open_renewal_leases is None or self._stopped:
            return
        if self.renewer is not None and not self.renewer.stopped:
            return
        self.renewer = PartitionRenewer(
            self.open_renewal_leases,
            self.member,
            lease=self.lease,
            loop=asyncio.get_running_loop(),
            on_lost=self._told_lost,
            stall=self.stall,
        )
        for p, token in self.tokens.items():  # (a stalled thread's are lost already)
            self.renewer.hold(p, token, self._until[p])
        self.renewer.start()

    def _told_lost(self, partition: int, token: str, why: str) -> None:
        """The renewal thread lost ``partition``'s lease held with ``token``."""
        task = asyncio.ensure_future(self._lost_apart(partition, token, why))
        self._losing.add(task)
        task.add_done_callback(self._losing.discard)

    async def _lost_apart(self, p: int, token: str, why: str) -> None:
        if self.tokens.get(p) != token:
            return  # handed off, or lost, meanwhile
        try:
            # Released in case it is still ours in the store: taken again sooner.
            await self._lose(p, why, release=True)
        except Exception:
            log.exception("stopping partition %d failed", p)

    async def tick(self) -> None:
        """One round: drop what ran out, renew and heartbeat, hand off, take, look."""
        self._renew_apart()
        async with self._turn:
            await self._round()
        for p in sorted(self.wanted() - set(self.tokens)):
            self.look_soon(p)  # another hub holds it still: take it once it lets it go

    async def _round(self) -> None:
        for p in sorted(self.tokens):
            if p in self.tokens and self.clock() >= self._until_of(p):
                await self._lose(p, "the lease ran out before it was renewed", release=True)
        if self._stopped:
            return
        if self.renewer is None:
            # First, and together: the renewals must not come late.
            await asyncio.gather(self._renew_all(), self.leases.heartbeat(self.member, self.ttl_ms))
        self.members = await self.leases.members()
        wanted = self.wanted()
        for p in sorted(set(self.tokens) - wanted):
            # Another live member should lead it: it takes the lease once it is free.
            await self._hand_off(p)
        for p in sorted(wanted - set(self.tokens)):
            await self._take(p)
        await self._look()

    async def _look(self) -> None:
        """Who leads each partition this hub does not (``on_leader`` when it changed)."""
        for p in range(self.leases.partitions):
            if p in self.tokens:
                self.leaders.pop(p, None)
                continue
            await self._look_at(p)

    async def _look_at(self, p: int) -> str:
        """Read who leads ``p`` (``on_leader`` when it changed); its URL, "" for nobody."""
        token = await self.leases.holder(p)
        try:
            url = Token.parse(token).url if token else ""
        except ValueError:
            url = ""  # not a token this version writes: nobody it can name
        if self.leaders.get(p) != url:
            self.leaders[p] = url
            self.on_leader(p, url)
        return url

    def look_soon(self, partition: int, *, past: str = "") -> None:
        """Read ``partition``'s lease now and every :attr:`poll` seconds, for at most one
        lease, until a hub holds it (``on_leader``), taking it when it is free and this hub
        should lead it (until this hub holds it, then). ``past``: the URL of a leader this hub
        cannot reach (its link broke): a lease that still names it is looked past, until it
        runs out or another hub holds the partition."""
        if self._stopped or not self.poll or not 0 <= partition < self.leases.partitions:
            return
        self._asked[partition] = self.clock() + self.lease
        if past:
            self._past[partition] = past
        else:
            self._past.pop(partition, None)
        if self._looker is None or self._looker.done():
            self._looker = asyncio.create_task(self._watch(), name="taskhub-keeper-look")

    async def _watch(self) -> None:
        while self._asked and not self._stopped:
            try:
                async with self._turn:
                    for p in sorted(self._asked):
                        if self._stopped:
                            return
                        if self._settled(p) or await self._look_or_take(p):
                            self._asked.pop(p, None)
                            self._past.pop(p, None)
            except StoreUnavailable as exc:  # the next read, or the next round, retries
                log.warning("cannot read the partition leases: %s", exc)
            except Exception:  # a bug: said; the rounds go on reading the leases
                log.exception("looking for the partitions' leaders failed")
                self._asked.clear()
                self._past.clear()
            if self._asked:
                await asyncio.sleep(self.poll)

    def _settled(self, p: int) -> bool:
        return p in self.tokens or self.clock() >= self._asked[p]

    async def _look_or_take(self, p: int) -> bool:
        """One read of ``p``'s lease for :meth:`look_soon`: whether it is settled now."""
        wanted = p in self.wanted()
        url = await self._look_at(p)
        if not url and not wanted:
            # Free, and by the last round another hub should take it: if that hub died (its
            # member record ran out with its leases), this hub may be the one, now.
            self.members = await self.leases.members()
            wanted = p in self.wanted()
        if not url and wanted:
            await self._take(p)
        if wanted:
            return p in self.tokens
        return bool(url) and url != self._past.get(p)

    async def _renew_all(self) -> None:
        """Renew every lease held, all at once. On a busy hub each call waits its turn on
        the event loop: one after another, the last ones came after their lease ran out."""
        held = [(p, self.tokens[p]) for p in sorted(self.tokens)]
        sent = self.clock()
        answers = await asyncio.gather(
            *(self.leases.renew(p, token, self.ttl_ms) for p, token in held),
            return_exceptions=True,
        )
        failed: BaseException | None = None
        for (p, token), renewed in zip(held, answers, strict=True):
            if isinstance(renewed, BaseException):
                failed = failed or renewed
            elif self.tokens.get(p) != token:
                continue  # let go of meanwhile
            elif renewed:
                self._until[p] = sent + self.lease
            else:
                await self._lose(p, "another hub holds the lease now", release=False)
        if failed is not None:
            raise failed

    async def _take(self, p: int) -> None:
        sent = self.clock()
        token = await self.leases.take(p, self.holder, self.ttl_ms)
        if token is None:
            return  # its holder hands it off or its lease expires: a later round
        self.tokens[p] = token
        self._until[p] = sent + self.lease
        if self.renewer is not None:
            self.renewer.hold(p, token, sent + self.lease)
        log.info("leading partition %d (%s)", p, token)
        try:
            await self._while_alive(self.on_gained(p, token))
        except Exception:
            log.exception("could not take the lead of partition %d; letting it go", p)
            if p in self.tokens:
                await self._forget(p, release=True)
            return
        if p not in self.tokens:  # its lease was lost while the hub took it: undo
            await self.on_lost(p)

    async def _while_alive(self, work: Awaitable[None]) -> None:
        """Await ``work`` (a hub restoring a big partition may take longer than a lease),
        heartbeating and renewing every lease held, every ``interval``, until it is done."""
        if self.renewer is not None:  # it renews them whatever the loop does
            await work
            return
        task = asyncio.ensure_future(work)
        try:
            while not (await asyncio.wait({task}, timeout=self.interval))[0]:
                with contextlib.suppress(StoreUnavailable):  # the leases lapse by the clock
                    await self._renew_all()
                    await self.leases.heartbeat(self.member, self.ttl_ms)
        except asyncio.CancelledError:
            task.cancel()
            raise
        task.result()

    async def _hand_off(self, p: int) -> None:
        log.info("handing partition %d off", p)
        try:
            await self.on_release(p)
        finally:
            await self._forget(p, release=True)

    async def _lose(self, p: int, why: str, *, release: bool) -> None:
        if self._until.get(p) == 0.0 or p not in self.tokens:
            return  # being lost already (the renewal thread and a round may both find it)
        log.warning("lost partition %d (%s)", p, why)
        token = self.tokens[p]
        self._until[p] = 0.0  # leads() is False from now on, whatever the callback does
        if self.renewer is not None:
            self.renewer.drop(p)
        try:
            await self.on_lost(p)
        finally:
            self.tokens.pop(p, None)  # (a hand-off under way may have forgotten it)
            self._until.pop(p, None)
            if release:
                # Still ours in the store if nobody took it: let it go, so it can be taken
                # again (with a new token) rather than wait for its expiry.
                with contextlib.suppress(StoreUnavailable):
                    await self.leases.release(p, token)

    async def _forget(self, p: int, *, release: bool) -> None:
        token = self.tokens.pop(p, None)
        self._until.pop(p, None)
        if token is None:
            return  # lost meanwhile (the renewal thread told it during the hand-off)
        if self.renewer is not None:
            self.renewer.drop(p)
        if release:
            with contextlib.suppress(StoreUnavailable):
                await self.leases.release(p, token)
