"""The origin's side of the hub-to-hub links: :class:`HubLinks` (one per hub process, one
link per leading hub, opened when first used) and :class:`RemotePartition`, the
:class:`~taskhub.hub.partition.Partition` of a partition another hub leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from taskhub import protocol as p
from taskhub.errors import ProtocolError, StoreUnavailable, from_wire
from taskhub.hub.connections import note_close
from taskhub.hub.dispatch import Msg
from taskhub.hub.link import wire
from taskhub.hub.link.outgoing import Outgoing
from taskhub.hub.partition import Linked, LocalPartition
from taskhub.ids import UlidFactory
from taskhub.lifecycle import Credentials, Peer
from taskhub.lifecycle.placement import StepPub
from taskhub.lifecycle.schedules import Slot
from taskhub.records import EventRecord, MetaRecord, TaskRecord, WriteBatch
from taskhub.store import Store

if TYPE_CHECKING:
    from taskhub.hub.hub import Hub

log = logging.getLogger("taskhub.link")

CLOSE_TRY_AGAIN = 1013  # the client backs off and reconnects (as the relay's)
_records = msgspec.json.Decoder(list[TaskRecord])
# Seconds to open a link; a leader that does not answer in time is given up (clients 1013).
OPEN_TIMEOUT = 5.0
FORWARDS_KEPT = 4096  # HubLinks.forwarded
# Seconds between two tries to open the link to a leader whose link broke (HubLinks.broke):
# the first, doubled at each failure up to the last.
PROBE_FIRST, PROBE_MAX = 0.1, 1.0
_record = msgspec.json.Decoder(TaskRecord | None)


class HubLinks:
    """This hub's links to the hubs that lead partitions it does not: one WebSocket per
    leading hub, whatever the number of connections and partitions it carries."""

    def __init__(
        self,
        hub: Hub,
        *,
        keepalive: tuple[float, float] = (5.0, 5.0),
        open_root: Callable[[], Store] | None = None,
    ) -> None:
        """``open_root``: opens the deployment's root store where the secret lives, when it
        is not the hub's own (a hub leading by leases: its root is its own, in memory)."""
        self.hub = hub
        self.keepalive = keepalive
        self.open_root = open_root
        # The deployment's link secret (wire.SECRET_META), set when the hub starts.
        self.secret = ""
        self.links: dict[str, Link] = {}  # by the leader's link URL
        # Connections whose link broke: being closed, nothing more of theirs is forwarded.
        self.cut: set[str] = set()
        self.ssl: Any = None  # an SSLContext for wss:// leaders (None: the default)
        # Chain work this hub sent on to a partition's leader as it does not lead it (a step's
        # end, a step to publish), by key: sent on once at most, so two hubs that each think
        # the other leads it do not send it back and forth (a bounded memory of the latest).
        self.forwarded: OrderedDict[str, None] = OrderedDict()
        # Leaders (advertised base URLs) whose link broke, each with the task that tries to
        # open it again: their partitions wait as leaderless meanwhile (a leased hub only).
        self.down: dict[str, asyncio.Task[None]] = {}
        self.closed = False

    def forward_once(self, key: str) -> bool:
        """Whether chain work ``key`` may be sent on: False if this hub sent it on before."""
        if key in self.forwarded:
            return False
        self.forwarded[key] = None
        if len(self.forwarded) > FORWARDS_KEPT:
            self.forwarded.popitem(last=False)
        return True

    async def load_secret(self) -> None:
        """Read the deployment's link secret from its root store, making it if no hub has yet
        (every hub reads the store at start: nothing to configure)."""
        await self._with_root(self._load)

    async def refresh_secret(self) -> None:
        """Read the secret again (another hub that started at the same moment may have
        replaced it: the last write wins)."""
        await self._with_root(self._read)

    async def _load(self, root: Store) -> None:
        await self._read(root)
        if self.secret:
            return
        kind, key = wire.SECRET_META
        made = secrets.token_urlsafe(32)
        await root.apply(WriteBatch(meta=[MetaRecord(kind, key, made)]))
        await self._read(root)  # two hubs starting at once: the last write counts

    async def _read(self, root: Store) -> None:
        kind, key = wire.SECRET_META
        stored = await root.get_meta(kind, key)
        if isinstance(stored, str) and stored:
            self.secret = stored

    async def _with_root(self, use: Callable[[Store], Awaitable[None]]) -> None:
        if self.open_root is None:
            await use(self.hub.root)
            return
        # A sqlite file is locked while a process has it open: hubs starting together wait
        # their turn (0.1 s apart, as the partition count's check).
        for attempt in range(50):
            root = self.open_root()
            try:
                await root.open()
            except StoreUnavailable as exc:
                if "in use by another hub" not in exc.message or attempt == 49:
                    raise
                await asyncio.sleep(0.1)
                continue
            try:
                await use(root)
            finally:
                await root.close()
            return

    def reaches(self, leader_url: str) -> bool:
        """False while the link to the hub at ``leader_url`` is known to be broken."""
        return leader_url.rstrip("/") not in self.down

    def broke(self, link: Link) -> None:
        """``link`` broke (this hub did not close it): on a hub that learns its leaders from
        the leases, the partitions led at its other end wait as leaderless
        (:meth:`Leading.unreachable <taskhub.hub.leading.Leading.unreachable>`) until the link
        opens again (tried every :data:`PROBE_FIRST` to :data:`PROBE_MAX` seconds) or the
        leases name their next leader. Without this, each reconnecting client dialled a dead
        leader again and was closed again (1013), until its lease ran out."""
        hub = self.hub
        if self.closed or not hub.leased:
            return
        leading = hub.leading
        for leader in {url for url in leading.leaders.values() if url}:
            if wire.link_url(leader) != link.url or leader in self.down:
                continue
            self.down[leader] = asyncio.create_task(
                self._probe(leader), name=f"taskhub-link-probe {leader}"
            )
            leading.unreachable(leader)

    async def _probe(self, leader: str) -> None:
        """Open the link to ``leader`` again, for as long as the leases name it a leader."""
        delay, opened = PROBE_FIRST, False
        try:
            while not opened and self.hub.leading.names(leader):
                await asyncio.sleep(delay)
                opened = await self.link(wire.link_url(leader)).opened()
                delay = min(2 * delay, PROBE_MAX)
        finally:
            self.down.pop(leader, None)
        if opened:
            log.info("the link to %s opened again", leader)
            self.hub.leading.reachable(leader)

    def remote(self, index: int, leader_url: str) -> RemotePartition:
        """The partition ``index`` led by the hub at ``leader_url`` (its advertised base URL)."""
        return RemotePartition(index, leader_url, self)

    def link(self, url: str) -> Link:
        """The link to ``url``, opened when it is first used (or again after it broke)."""
        link = self.links.get(url)
        if link is None:
            link = self.links[url] = Link(self, url)
        return link

    async def ask(
        self,
        leader_url: str,
        op: str,
        creds: Credentials,
        parts: list[int],
        args: dict[str, Any] | None = None,
    ) -> Any:
        """The operator's ``op`` (``Admin.ops``) run by the hub at ``leader_url`` (its
        advertised base URL) over the partitions ``parts`` it leads, for ``creds``: its
        result, or its error raised as the leader raised it. A leader that cannot run it
        (it no longer leads one of ``parts``, the link broke) is :class:`StoreUnavailable`:
        retry."""
        link = self.link(wire.link_url(leader_url))
        sub, pub = creds.sub_permissions, creds.pub_permissions
        answer = await link.request(
            lambda rid: wire.Ops(rid, op, parts, creds.name, sub, pub, args or {})
        )
        if answer.error is not None:
            raise StoreUnavailable(f"the hub at {leader_url.rstrip('/')}: {answer.error}; retry")
        return wire.read_op_result(answer.value)

    def hello(self, peer: Peer) -> None:
        """``peer`` said ``hello`` again: the leaders it reached already learn what it says
        (its ``batch`` and ``starts`` shape what they send it), after what it sent before."""
        for link in self.links.values():
            link.reopen(peer)

    def detach(self, peer: Peer) -> None:
        """The connection is gone: the leaders it reached let go of what it held."""
        for remote in self.hub.router.remotes():
            remote.detach(peer)
        self.cut.discard(peer.id)
        for link in self.links.values():
            link.detach(peer.id, lost=not peer.closed_by_hub)

    def forget(self, link: Link) -> None:
        if self.links.get(link.url) is link:
            del self.links[link.url]

    async def close(self) -> None:
        """This hub stops: every link is closed (the leaders detach its connections)."""
        self.closed = True
        for probe in list(self.down.values()):
            probe.cancel()
        for link in list(self.links.values()):
            await link.close()


class Link:
    """One WebSocket to one leading hub, carrying every connection of this hub that reaches
    a partition it leads. It breaks as a whole: every connection that used it is closed with
    1013 (its client reconnects and resubscribes; what was accepted is stored)."""

    def __init__(self, links: HubLinks, url: str) -> None:
        self.links = links
        self.url = url
        self.fronts: dict[str, Peer] = {}  # connections opened on the leader, by id
        self.out = Outgoing(self._send, self._too_slow)
        self.requests: dict[int, asyncio.Future[Any]] = {}  # Answer, or Reply
        self.ids = itertools.count(1)
        self.ws: ClientConnection | None = None
        self.broken = False
        self.closing = False  # this hub closes it (close())
        # True once the link is open, False if it broke before: what a probe waits for.
        self.up: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._run(), name=f"taskhub-link {url}")

    # --- sending -------------------------------------------------------------------------
    def open_for(self, peer: Peer) -> None:
        """Tell the leader who ``peer`` is, the first time it reaches it over this link."""
        if peer.id in self.fronts:
            return
        self.fronts[peer.id] = peer
        self._open(peer)

    def reopen(self, peer: Peer) -> None:
        """Tell the leader again who ``peer`` is, if it reached it (its ``hello`` changed)."""
        if peer.id in self.fronts:
            self._open(peer)

    def _open(self, peer: Peer) -> None:
        creds = peer.creds
        self.out.add(
            wire.encode_entry(
                wire.Open(
                    peer.id,
                    creds.name,
                    creds.sub_permissions,
                    creds.pub_permissions,
                    peer.hello,
                    peer.batch,
                    peer.remote,
                    peer.starts,
                )
            )
        )

    def add(self, entry: bytes) -> None:
        self.out.add(entry)

    async def opened(self) -> bool:
        """Whether the link opens (True, at once if it is open) or breaks first (False)."""
        return await asyncio.shield(self.up)

    def detach(self, conn: str, *, lost: bool = True) -> None:
        """``lost``: the connection was lost, not closed by this hub (a started delivery it
        held counts a try on the leader)."""
        if self.fronts.pop(conn, None) is not None:
            self.out.add(wire.encode_entry(wire.Detach(conn, lost)))

    async def request(self, make: Any) -> wire.Answer:
        """Send the request ``make(id)`` and wait for its answer."""
        answer: wire.Answer = await self._ask(make)
        return answer

    async def call(self, make: Any) -> wire.Reply:
        """Send the request ``make(id)`` of the HTTP API's kinds and wait for its reply."""
        reply: wire.Reply = await self._ask(make)
        return reply

    async def _ask(self, make: Any) -> Any:
        return await self.ask(make)

    def ask(self, make: Any) -> asyncio.Future[Any]:
        """Send the request ``make(id)`` now (in order with what is added after it); its
        answer's future (failed with :class:`StoreUnavailable` if the link is down)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.broken:
            fut.set_exception(StoreUnavailable(f"the link to {self.url} is down; retry"))
            return fut
        rid = next(self.ids)
        self.requests[rid] = fut
        self.out.add(wire.encode_entry(make(rid)))
        return fut

    async def _send(self, frame: bytes) -> None:
        assert self.ws is not None
        await self.ws.send(frame)

    def _too_slow(self, waiting: int) -> None:
        self._break(f"{waiting} bytes wait for a leader that does not take them")

    # --- running -------------------------------------------------------------------------
    async def _run(self) -> None:
        why = "closed"
        try:
            self.ws = await self._dial()
            if not self.up.done():
                self.up.set_result(True)
            self.out.start()
            why = await self._read(self.ws)
        except asyncio.CancelledError:
            why = "this hub closed it"
            raise
        except (OSError, TimeoutError, InvalidStatus, InvalidURI) as exc:
            why = f"could not open it: {exc}"
        except ProtocolError as exc:
            log.error("the link to %s sent a %s; closing it", self.url, exc.message)
            why = "the leader sent a malformed frame"
        finally:
            self._break(why)
            await self.out.stop()
            if self.ws is not None:
                with contextlib.suppress(Exception):
                    await self.ws.close()

    async def _dial(self) -> ClientConnection:
        links = self.links
        interval, timeout = links.keepalive
        return await connect(
            self.url,
            additional_headers={
                wire.SECRET_HEADER: links.secret,
                wire.FROM_HEADER: links.hub.name,
            },
            max_size=None,  # the leader cuts its frames (wire.FRAME_BYTES)
            compression=None,
            ping_interval=interval,
            ping_timeout=timeout,
            close_timeout=1.0,
            open_timeout=OPEN_TIMEOUT,
            ssl=links.ssl if self.url.startswith("wss") else None,
        )

    async def _read(self, ws: ClientConnection) -> str:
        """Apply the leader's frames until the link closes; why it closed."""
        connections = self.links.hub.connections
        fronts, requests = self.fronts, self.requests
        try:
            async for data in ws:
                # A connection's frames of one link frame (the leader's partitions each send
                # theirs) go to its client as one frame: a write and a frame less each.
                outs: dict[str, list[bytes]] = {}
                for entry in wire.decode_to_origin(data):
                    if type(entry) is wire.Out:
                        if entry.conn in fronts:
                            outs.setdefault(entry.conn, []).append(bytes(entry.frame))
                    elif type(entry) is wire.Answer or type(entry) is wire.Reply:
                        fut = requests.pop(entry.id, None)
                        if fut is not None and not fut.done():
                            fut.set_result(entry)  # its waiter runs after the frames below
                    elif type(entry) is wire.Close:
                        front = fronts.pop(entry.conn, None)
                        if front is not None:
                            held = outs.pop(entry.conn, None)
                            if held:  # what the leader sent it before it closed it
                                connections.send_frame(front, wire.joined(held))
                            _close(self.links.hub, front, entry.code, entry.reason)
                    elif type(entry) is wire.StepEnded:
                        step_ended(self.links.hub, entry)
                for conn, frames in outs.items():
                    front = fronts.get(conn)
                    if front is not None:
                        connections.send_frame(front, wire.joined(frames))
        except ConnectionClosed:
            pass
        code, reason = ws.close_code, ws.close_reason
        if code == wire.CLOSE_REFUSED:
            log.error("the hub at %s refused the link: %s", self.url, reason)
        return f"closed ({code} {reason})".strip()

    def _break(self, why: str) -> None:
        """The link is over: its connections are closed with 1013, its requests fail."""
        if self.broken:
            return
        self.broken = True
        if not self.up.done():
            self.up.set_result(False)
        self.links.forget(self)
        if self.fronts:
            log.warning(
                "link to %s %s: closing its %d connection(s) with 1013",
                self.url,
                why,
                len(self.fronts),
            )
        else:
            log.info("link to %s %s", self.url, why)
        hub = self.links.hub
        for front in self.fronts.values():
            self.links.cut.add(front.id)
            _close(hub, front, CLOSE_TRY_AGAIN, "the link to the partition's hub broke; reconnect")
        self.fronts.clear()
        for fut in self.requests.values():
            if not fut.done():
                fut.set_exception(StoreUnavailable(f"the link to {self.url} broke; retry"))
        self.requests.clear()
        if not self.closing:
            self.links.broke(self)

    async def close(self) -> None:
        self.closing = True
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def step_ended(hub: Hub, entry: wire.StepEnded) -> None:
    """A step of a chain this hub holds ended on another hub: move the chain on. A chain
    whose partition another hub leads now (or none, for a moment) goes on to it, or waits
    for it (hub/unled.py)."""
    slots = hub.router.partitions
    part = slots[entry.part] if 0 <= entry.part < len(slots) else None
    if not isinstance(part, LocalPartition):
        if forward_once(hub, f"end {entry.chain} {entry.index}"):
            hub.chains.move_on(entry.chain, entry.index, entry.rec)
            hub.kick()
        else:  # sent on before, and back: the hub that takes the chain finds it (orphans)
            log.warning(
                "step %d of chain %s ended; no hub leads the chain", entry.index, entry.chain
            )
        return
    parent = part.lc.tasks.get(entry.chain)
    if parent is None:  # ended (failed, cancelled) already
        log.info("step %d of chain %s ended; the chain has ended", entry.index, entry.chain)
        return
    hub.chains.step_ended(parent, entry.index, entry.rec)
    hub.kick()


def forward_once(hub: Hub, key: str) -> bool:
    """Whether this hub may send chain work ``key`` on (:meth:`HubLinks.forward_once`)."""
    links = hub.links
    return not isinstance(links, HubLinks) or links.forward_once(key)


def _close(hub: Hub, front: Peer, code: int, reason: str) -> None:
    """Close ``front``'s connection: a link that broke, a partition's slot that changed, a
    leader that ends it. The hub's decision, not a worker lost: at 1012 or 1013 what the
    connection held is given back without a try counted, here and on every leader it reached
    (:meth:`HubLinks.detach`)."""
    closer = hub.connections.closers.get(front)
    if closer is not None:
        note_close(front, code)
        closed = asyncio.ensure_future(closer(code, reason))
        closed.add_done_callback(lambda f: f.cancelled() or f.exception())


class RemotePartition:
    """A partition another hub leads, reached over the link to it. Its methods are those
    of :class:`~taskhub.hub.partition.Partition`; what they change is applied there, and
    what it sends a connection comes back over the link to the connection's own sender."""

    local: LocalPartition | None = None  # led by another hub

    def __init__(self, index: int, leader: str, links: HubLinks) -> None:
        self.index = index
        self.leader = leader.rstrip("/")  # the leading hub's advertised base URL
        self.url = wire.link_url(leader)  # its link
        self.links = links
        self.linked: Linked | None = self
        self.users: dict[str, Peer] = {}  # connections that reached it, by id
        self.prefixes: dict[str, bytes] = {}  # their In entries' start (wire.in_prefix)
        self.new_id = UlidFactory(partition=index)  # the ids of chain steps published there

    def _link(self, peer: Peer) -> Link | None:
        """The link for ``peer``'s traffic, ``peer`` opened on it; None for a connection
        whose link broke (it is being closed)."""
        links = self.links
        if peer.id in links.cut:
            return None
        link = links.link(self.url)
        link.open_for(peer)
        self.users[peer.id] = peer
        return link

    def handle(self, peer: Peer, msg: Msg) -> Awaitable[None] | None:
        if type(msg) is p.Hello:
            # The connection's own sender encodes what local partitions send it.
            said = {"client": msg.client, "version": msg.version, "host": msg.host, "pid": msg.pid}
            peer.hello = {k: v for k, v in said.items() if v is not None}
            peer.batch = msg.batch
            peer.starts = msg.starts
        link = self._link(peer)
        if link is not None:
            prefix = self.prefixes.get(peer.id)
            if prefix is None:
                prefix = self.prefixes[peer.id] = wire.in_prefix(peer.id, self.index)
            link.add(prefix + wire.encode_msg(msg) + b"]")
        return None

    def pub_item(self, peer: Peer, item: Any, i: int, ref: int | None) -> dict[str, Any]:
        """Never called: the router hands the items of a batch that reaches another hub to
        :meth:`ask_items` or :meth:`send_items` (one entry per partition)."""
        raise AssertionError("a pubs item for another hub goes through ask_items")

    def step_item(self, peer: Peer, item: Any, i: int) -> None:
        """Item ``i`` of an ``acks``, ``pickups`` or ``returns`` whose items span hubs, sent as
        its single message: the leader answers its own ``ref`` (a ``pubs`` item needs its
        answer back, which :meth:`ask_items` gets)."""
        self.handle(peer, item)

    def watch(self, peer: Peer, pattern: str) -> None:
        link = self._link(peer)
        if link is not None:
            link.add(wire.encode_entry(wire.WatchIn(peer.id, self.index, pattern, True)))

    def unwatch(self, peer: Peer, pattern: str) -> None:
        if peer.id in self.users:
            link = self._link(peer)
            if link is not None:
                link.add(wire.encode_entry(wire.WatchIn(peer.id, self.index, pattern, False)))

    def detach(self, peer: Peer) -> None:
        """Forget ``peer`` here; :meth:`HubLinks.detach` tells the leader, once per link."""
        self.users.pop(peer.id, None)
        self.prefixes.pop(peer.id, None)

    async def find(self, task_id: str) -> TaskRecord | None:
        link = self.links.link(self.url)
        answer = await link.request(lambda rid: wire.Find(rid, self.index, task_id))
        if answer.error is not None:
            raise StoreUnavailable(f"partition {self.index} at {self.url}: {answer.error}")
        return _record.decode(answer.value)

    async def apply_items(self, peer: Peer, msg: Any, items: list[tuple[int, Any]]) -> Any:
        """Apply ``items`` (index in ``msg``, item) of the batched message ``msg`` here; their
        answers (``pubs``) once the leader has stored them."""
        return await self.ask_items(peer, msg, items)

    def ask_items(self, peer: Peer, msg: Any, items: list[tuple[int, Any]]) -> Awaitable[Any]:
        """Send ``items`` (index in ``msg``, item) of the batched message ``msg``, which has a
        ``ref``, to the leader now, applied there in order with ``peer``'s other messages;
        their answers (``pubs``; None for the others) once it has stored them."""
        link = self._link(peer)
        if link is None:
            return _failed(StoreUnavailable(f"the link to {self.url} broke; retry"))
        part = type(msg)(items=[item for _, item in items], ref=None)
        raw = msgspec.Raw(wire.encode_msg(part))
        at = [i for i, _ in items]
        asked = link.ask(lambda rid: wire.Items(rid, peer.id, self.index, raw, at, msg.ref))
        return self._answered(asked)

    async def _answered(self, asked: asyncio.Future[wire.Answer]) -> Any:
        answer = await asked
        if answer.error is not None:
            raise StoreUnavailable(f"partition {self.index} at {self.url}: {answer.error}")
        return msgspec.json.decode(answer.value)

    def send_items(self, peer: Peer, msg: Any, items: list[tuple[int, Any]]) -> None:
        """Send ``items`` of ``msg``, a batched message without ``ref``, to the leader as one
        entry (:class:`~taskhub.hub.link.wire.Items` with id 0: no answer), applied there in
        order with ``peer``'s other messages; nothing waits for it."""
        link = self._link(peer)
        if link is None:  # its link broke: the connection is being closed (as handle)
            return
        part = msgspec.Raw(wire.encode_msg(type(msg)(items=[item for _, item in items])))
        at = [i for i, _ in items]
        link.add(wire.encode_entry(wire.Items(wire.NO_ANSWER, peer.id, self.index, part, at)))

    async def list_tasks(
        self, *, action: str | None, state: str | None, after: str | None, limit: int
    ) -> list[TaskRecord]:
        """A page of the partition's stored tasks by id, read by its leader."""
        link = self.links.link(self.url)
        answer = await link.request(
            lambda rid: wire.ListTasks(rid, self.index, action, state, after, limit)
        )
        if answer.error is not None:
            raise StoreUnavailable(f"partition {self.index} at {self.url}: {answer.error}")
        return _records.decode(answer.value)

    def unwritten(self) -> dict[str, TaskRecord]:
        """What the leader has not written yet stays there: listings here see the store's."""
        return {}

    def kick(self) -> None:
        """Nothing to do here: the leader writes and sends what it was given."""

    async def flush(self) -> None:
        """Wait until the leader has written and sent what it was given so far."""
        answer = await self.links.link(self.url).request(lambda rid: wire.Flush(rid, self.index))
        if answer.error is not None:
            raise StoreUnavailable(f"partition {self.index} at {self.url}: {answer.error}")

    # --- chains (Elsewhere) -----------------------------------------------------------------
    def publish_step(self, step: StepPub, *, task_id: str | None = None) -> str:
        task_id = task_id or self.new_id()
        self.links.link(self.url).add(wire.encode_entry(wire.Step(self.index, task_id, *step)))
        return task_id

    def step_ended(self, chain_id: str, index: int, rec: TaskRecord) -> None:
        entry = wire.StepEnded(self.index, chain_id, index, rec)
        self.links.link(self.url).add(wire.encode_entry(entry))

    def cancel_step(self, task_id: str, error: dict[str, Any]) -> None:
        entry = wire.CancelStep(self.index, task_id, error)
        self.links.link(self.url).add(wire.encode_entry(entry))

    def retire(self) -> None:
        """Another hub (or this one) leads the partition now: the connections that reached it
        here are closed with 1013, and reconnect to find it where it is."""
        hub, cut = self.links.hub, self.links.cut
        for peer in self.users.values():
            if peer.id in cut:
                continue  # being closed already: its link broke
            cut.add(peer.id)
            _close(hub, peer, CLOSE_TRY_AGAIN, "the partition's leading hub changed; reconnect")
        link = self.links.links.get(self.url)
        if link is not None:
            for conn in self.users:
                link.detach(conn, lost=False)
        self.users.clear()
        self.prefixes.clear()

    # --- the HTTP API, schedules and pull consumers (wire.AcrossToLeader) ---------------------
    async def publish(
        self, creds: Credentials, items: Sequence[Item], *, extra: dict[str, Any] | None = None
    ) -> list[Published]:
        """Publish ``items`` (all of this partition) for ``creds`` there; per item its record,
        whether it is new, and whether it is an earlier task read from the store."""
        caller = wire.caller_of(creds)
        sent = [wire.PubItem(action, payload, options, extra) for action, payload, options in items]
        reply = await self.links.link(self.url).call(
            lambda rid: wire.Publish(rid, self.index, caller, sent)
        )
        return _published.decode(_value(reply))

    async def cancel(self, creds: Credentials, task_id: str) -> TaskRecord:
        """``creds`` cancels ``task_id`` there: its record once stored; ``TaskNotFound`` when
        it is not live there (ended, or never was)."""
        caller = wire.caller_of(creds)
        reply = await self.links.link(self.url).call(
            lambda rid: wire.CancelTask(rid, self.index, caller, task_id)
        )
        rec = _record.decode(_value(reply))
        assert rec is not None  # the leader answers a record or an error
        return rec

    async def start_chain(
        self,
        creds: Credentials,
        steps: list[dict[str, Any]],
        *,
        merge_input: bool,
        trace: dict[str, str] | None,
    ) -> str:
        """Start a chain whose first step is of this partition there (it holds the chain);
        its id once stored."""
        caller = wire.caller_of(creds)
        reply = await self.links.link(self.url).call(
            lambda rid: wire.StartChain(rid, self.index, caller, steps, merge_input, trace)
        )
        chain_id: str = msgspec.json.decode(_value(reply), type=str)
        return chain_id

    async def task_events(
        self, task_id: str, after: int, wait: float
    ) -> tuple[list[EventRecord], bool]:
        """The task's stored events after seq ``after`` there (waiting up to ``wait`` seconds
        for one while it is live), and whether it is still live."""
        reply = await self.links.link(self.url).call(
            lambda rid: wire.TaskEvents(rid, self.index, task_id, after, wait)
        )
        return _events.decode(_value(reply))

    async def emit(self, creds: Credentials, topic: str, data: Any) -> int:
        """Broadcast on ``topic`` from the hub that holds the topics (partition 0's, this
        one); how many connections it was queued for."""
        caller = wire.caller_of(creds)
        reply = await self.links.link(self.url).call(
            lambda rid: wire.Emit(rid, caller, topic, data)
        )
        return msgspec.json.decode(_value(reply), type=int)

    async def wait(self, task_id: str, seconds: float) -> TaskRecord | None:
        """The task's record once it ended there (stored), or after ``seconds``."""
        reply = await self.links.link(self.url).call(
            lambda rid: wire.WaitTask(rid, self.index, task_id, seconds)
        )
        return _record.decode(_value(reply))

    async def fire(self, slot: Slot, task_id: str) -> None:
        """Publish a schedule's slot there as ``task_id`` (once, however many copies come);
        return once it is stored. The leader's error raised: ``StoreUnavailable`` when it no
        longer leads the partition or the link broke (send it again: hub/firing.py)."""
        reply = await self.links.link(self.url).call(
            lambda rid: wire.Fire(self.index, *slot, rid, task_id)
        )
        _value(reply)

    def take_back(
        self, peer: Peer, task_id: str, attempt: int, reason: str, *, count_try: bool
    ) -> None:
        """``peer`` (a pull consumer) gives its delivery back to its group there."""
        link = self._link(peer)
        if link is not None:
            entry = wire.TakeBack(peer.id, self.index, task_id, attempt, reason, count_try)
            link.add(wire.encode_entry(entry))


Published = tuple[TaskRecord, bool, bool]
Item = tuple[str, Any, dict[str, Any] | None]  # a task to publish: action, payload, options
_events = msgspec.json.Decoder(tuple[list[EventRecord], bool])
_published = msgspec.json.Decoder(list[Published])


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    return fut


def _value(reply: wire.Reply) -> msgspec.Raw:
    """The reply's value; its error raised as the leader raised it (same code, same status)."""
    if reply.error is not None:
        if reply.error.get("code") == wire.INTERNAL:  # a bug there: a 500 here too
            raise RuntimeError(str(reply.error.get("message")))
        raise from_wire(reply.error)
    return reply.value
