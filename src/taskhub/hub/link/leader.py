"""The leader's side of the hub-to-hub links: the endpoint (``/v1/link``) other hubs of the
deployment open, where each of their connections becomes a :class:`Peer` of this hub whose
output goes back over the link."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from taskhub import protocol as p
from taskhub.errors import ProtocolError, StoreUnavailable, TaskHubError
from taskhub.hub.dispatch import Msg
from taskhub.hub.link import across, wire
from taskhub.hub.link.origin import HubLinks, forward_once, step_ended
from taskhub.hub.link.outgoing import Outgoing
from taskhub.hub.partition import LocalPartition
from taskhub.hub.router import task_partition
from taskhub.hub.ws.transport import EXTENSION
from taskhub.lifecycle import Credentials, Peer
from taskhub.lifecycle.placement import StepPub
from taskhub.records import TaskRecord, TaskState

if TYPE_CHECKING:
    from taskhub.hub.hub import Hub

log = logging.getLogger("taskhub.link")

CLOSE_TRY_AGAIN = 1013
_encode = msgspec.json.Encoder().encode


async def serve_link(ws: WebSocket, hub: Hub) -> None:
    """Serve one link from another hub of the deployment until it closes."""
    where = f"{ws.headers.get(wire.FROM_HEADER, '?')} at {ws.client.host if ws.client else '?'}"
    if hub.draining:
        await ws.close(code=1012)
        return
    if not await _admitted(ws, hub):
        log.error(
            "refused a hub-to-hub link from %s: wrong link secret (hubs of one deployment read "
            "it from their shared store)",
            where,
        )
        await ws.accept()
        await ws.close(code=wire.CLOSE_REFUSED, reason="wrong link secret")
        return
    await ws.accept()
    served = LinkServer(ws, hub, where)
    try:
        await served.run()
    finally:
        await served.end()


async def _admitted(ws: WebSocket, hub: Hub) -> bool:
    given = ws.headers.get(wire.SECRET_HEADER, "")
    links = hub.links
    if not isinstance(links, HubLinks):
        return False
    if links.secret and hmac.compare_digest(given, links.secret):
        return True
    # The secret may have been replaced by a hub that started at the same moment as this
    # one (the last write wins): read it again before refusing.
    await links.refresh_secret()
    return bool(links.secret) and hmac.compare_digest(given, links.secret)


# Answers a request's items once applied (LinkServer._reply): the partition, the entry,
# the items' answers (``pubs``; None for the others).
Reply = Callable[[LocalPartition, wire.Items, "list[Any] | None"], None]


class _Remote:
    """One of the origin's connections, as this hub serves it: its messages are applied in
    order, the next one waiting while one reads the store. The items of its batches that
    span hubs (``wire.Items``) take their place in that order too, whether or not the
    origin waits for their answer (``reply``, once applied)."""

    def __init__(self, peer: Peer, reply: Reply) -> None:
        self.peer = peer
        self.reply = reply
        # A message, or the items of a batch with their entry (their places in it).
        self.backlog: deque[tuple[LocalPartition, Msg, wire.Items | None]] = deque()
        self.resuming: asyncio.Task[None] | None = None

    def apply(self, part: LocalPartition, msg: Msg, items: wire.Items | None = None) -> None:
        if self.resuming is not None:
            self.backlog.append((part, msg, items))
            return
        if items is not None:
            self._items(part, msg, items)
            return
        pending = part.handle(self.peer, msg)
        if pending is not None:
            self.resuming = asyncio.create_task(self._resume(pending))

    def _items(self, part: LocalPartition, msg: Msg, entry: wire.Items) -> None:
        """Items of a client's batch (their places ``entry.at`` in it), applied as the
        origin's router applies a batch that spans its partitions; answered (``reply``)
        when the origin asked (a batch with ``ref``)."""
        own, dispatcher = part.peer(self.peer), part.dispatcher
        items: list[Any] = getattr(msg, "items", [])
        answers: list[Any] | None = None
        if type(msg) is p.Pubs:
            ref = entry.ref
            answers = [
                dispatcher.pub_item(own, item, i, ref)
                for i, item in zip(entry.at, items, strict=True)
            ]
        else:
            for i, item in zip(entry.at, items, strict=True):
                dispatcher.step_item(own, item, i)
        if entry.id != wire.NO_ANSWER:
            self.reply(part, entry, answers)

    async def _resume(self, pending: Awaitable[None]) -> None:
        try:
            await pending
            while self.backlog:
                part, msg, items = self.backlog.popleft()
                if items is not None:
                    self._items(part, msg, items)
                    part.kick()
                    continue
                more = part.handle(self.peer, msg)
                part.kick()
                if more is not None:
                    await more
        except Exception:  # a bug: said, and the rest of this connection's messages go on
            log.exception("applying a linked message of %s failed", self.peer.service)
        finally:
            self.resuming = None


class LinkServer:
    """One link from one origin hub."""

    def __init__(self, ws: WebSocket, hub: Hub, where: str) -> None:
        self.ws = ws
        self.hub = hub
        self.where = where
        self.remotes: dict[str, _Remote] = {}
        self.out = Outgoing(ws.send_bytes, self._too_slow)
        self.requests: set[asyncio.Task[None]] = set()
        self.closing = False  # a malformed frame came: nothing more is applied
        # Entries from one for a partition this hub is still restoring on: applied, in order,
        # once it serves it (Leading.restoring), not refused as led elsewhere.
        self.held: deque[wire.ToLeader] | None = None

    async def run(self) -> None:
        log.info("hub-to-hub link from %s opened", self.where)
        self.out.start()
        ws = self.ws
        # Under taskhub's own uvicorn protocol each frame is handed over as it is parsed, as
        # for client connections (hub/ws/transport.py); applying one never waits, so there is
        # nothing to hold the socket for. The disconnect (and any frame from before the
        # switch) still comes through receive().
        direct = ws.scope.get("extensions", {}).get(EXTENSION)
        if direct is not None:
            direct.receiver = self.take
        try:
            while not self.closing:
                try:
                    message = await ws.receive()
                except (WebSocketDisconnect, RuntimeError):
                    return
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes") or message.get("text")
                if data:
                    self.take(data)
        finally:
            if direct is not None:
                direct.receiver = None

    def take(self, data: str | bytes) -> None:
        """One frame from the origin, applied now."""
        if self.closing:
            return
        try:
            entries = wire.decode_to_leader(data)
        except ProtocolError as exc:
            log.error("the link from %s sent a %s; closing it", self.where, exc.message)
            self.closing = True
            closing = asyncio.ensure_future(
                self.ws.close(code=wire.CLOSE_MALFORMED, reason="malformed link frame")
            )
            closing.add_done_callback(lambda f: f.cancelled() or f.exception())
            return
        self._apply(entries)

    def _apply(self, entries: list[wire.ToLeader]) -> None:
        if self.held is not None:
            self.held.extend(entries)
            return
        restoring = self.hub.leading.restoring
        if restoring:
            for i in range(len(entries)):
                if self._hold(entries, i, restoring):
                    entries = entries[:i]
                    break
        self._apply_now(entries)

    def _apply_now(self, entries: list[wire.ToLeader]) -> None:
        touched: set[LocalPartition] = set()
        remotes = self.remotes
        for entry in entries:
            kind = type(entry)
            if kind is wire.In:
                assert isinstance(entry, wire.In)
                remote = remotes.get(entry.conn)
                part = self._led(entry.conn, entry.part)
                if remote is None or part is None:
                    continue
                try:
                    msg = wire.decode_msg(entry.msg)
                except ProtocolError as exc:
                    log.error("the link from %s sent a %s", self.where, exc.message)
                    continue
                remote.apply(part, msg)
                touched.add(part)
            elif kind is wire.Open:
                assert isinstance(entry, wire.Open)
                self._open(entry)
            elif kind is wire.WatchIn:
                assert isinstance(entry, wire.WatchIn)
                self._watch(entry, touched)
            elif kind is wire.Detach:
                assert isinstance(entry, wire.Detach)
                self._drop(entry.conn, lost=entry.lost)
            elif kind is wire.Step:
                assert isinstance(entry, wire.Step)
                self._step(entry, touched)
            elif kind is wire.StepEnded:
                assert isinstance(entry, wire.StepEnded)
                step_ended(self.hub, entry)
            elif kind is wire.CancelStep:
                assert isinstance(entry, wire.CancelStep)
                part = self._led("", entry.part)
                step = part.lc.tasks.get(entry.task) if part is not None else None
                if part is not None and step is not None:
                    part.lc.finish(step, TaskState.FAIL, error=entry.error)
                    touched.add(part)
            elif kind is wire.Ops:
                assert isinstance(entry, wire.Ops)
                self._spawn(self._operate(entry))
            elif isinstance(entry, wire.ACROSS):
                across.apply(self, entry, touched)
            else:
                assert isinstance(entry, wire.Find | wire.ListTasks | wire.Flush | wire.Items)
                self._request(entry, touched)
        for part in touched:
            part.kick()

    def _linked_items(self, entry: wire.Items, touched: set[LocalPartition]) -> None:
        """Items of a client's batch for partition ``entry.part``: applied in order with the
        connection's messages (``RemotePartition.send_items``, nothing answered; or
        ``RemotePartition.ask_items``, answered once stored)."""
        asked = entry.id != wire.NO_ANSWER
        remote = self.remotes.get(entry.conn)
        part = self._led(entry.conn, entry.part)
        if remote is None or part is None:
            if asked:
                why = (
                    f"no connection {entry.conn} on this link"
                    if remote is None
                    else f"this hub does not lead partition {entry.part}"
                )
                self.out.add(wire.encode_entry(wire.Answer(entry.id, error=why)))
            return
        try:
            msg = wire.decode_msg(entry.msg)
            items = getattr(msg, "items", None)
            if not isinstance(items, list) or len(items) != len(entry.at):
                raise ProtocolError("a linked batch whose items do not match their places")
        except ProtocolError as exc:
            log.error("the link from %s sent a %s", self.where, exc.message)
            if asked:
                self.out.add(wire.encode_entry(wire.Answer(entry.id, error=exc.message)))
            return
        remote.apply(part, msg, entry)
        touched.add(part)

    def _reply(self, part: LocalPartition, entry: wire.Items, answers: list[Any] | None) -> None:
        """Items the origin asked about were applied: answered once ``part`` stored them."""
        self._spawn(self._answer_items(part, entry.id, answers))

    async def _answer_items(
        self, part: LocalPartition, rid: int, answers: list[Any] | None
    ) -> None:
        try:
            part.kick()
            await part.stored()
            answer = wire.Answer(rid, msgspec.Raw(_encode(answers)))
        except Exception as exc:
            if not isinstance(exc, TaskHubError):
                log.exception("answering linked items failed")
            answer = wire.Answer(rid, error=str(exc))
        self.out.add(wire.encode_entry(answer))

    def _hold(
        self, entries: list[wire.ToLeader], i: int, restoring: dict[int, asyncio.Event]
    ) -> bool:
        """Whether ``entries[i]`` is for a partition being restored here: then it and what
        follows it are held until that partition is served, and applied then."""
        restored = restoring.get(getattr(entries[i], "part", -1))
        if restored is None:
            return False
        self.held = deque(entries[i:])
        self._spawn(self._resume(restored))
        return True

    async def _resume(self, restored: asyncio.Event) -> None:
        await restored.wait()
        held, self.held = self.held, None
        if held and not self.closing:
            self._apply(list(held))

    def _led(self, conn: str, index: int) -> LocalPartition | None:
        """This hub's partition ``index``; None, with the connection ended, if another hub
        leads it now (the origin's client reconnects and finds it there)."""
        slots = self.hub.router.partitions
        part = slots[index] if 0 <= index < len(slots) else None
        if isinstance(part, LocalPartition):
            return part
        if conn in self.remotes:
            reason = f"this hub does not lead partition {index} (any more); reconnect"
            self.out.add(wire.encode_entry(wire.Close(conn, CLOSE_TRY_AGAIN, reason)))
            self._drop(conn, lost=False)
        return None

    def _open(self, entry: wire.Open) -> None:
        known = self.remotes.get(entry.conn)
        if known is not None:  # its hello changed (HubLinks.hello): what it says from now on
            peer = known.peer
            peer.hello, peer.batch, peer.starts = entry.hello, entry.batch, entry.starts
            self.hub.hello_again(peer)
            return
        peer = Peer(entry.conn, wire.credentials(entry))
        peer.hello, peer.batch, peer.remote = entry.hello, entry.batch, entry.remote
        peer.starts = entry.starts
        self.remotes[entry.conn] = _Remote(peer, self._reply)
        conn, out = entry.conn, self.out
        prefix = wire.out_prefix(conn)

        def send(frame: bytes) -> None:
            out.add(prefix + frame + b"]")

        async def close(code: int, reason: str) -> None:  # Connections.close marked the peer
            out.add(wire.encode_entry(wire.Close(conn, code, reason)))
            self._drop(conn)

        self.hub.attach(peer, send, close)
        self.hub.connections.linked.add(peer)

    def _watch(self, entry: wire.WatchIn, touched: set[LocalPartition]) -> None:
        remote = self.remotes.get(entry.conn)
        part = self._led(entry.conn, entry.part)
        if remote is None or part is None:
            return
        # Partition 0 answers the watch (and says why it is refused): here it only streams.
        with contextlib.suppress(TaskHubError):
            if entry.on:
                part.watch(remote.peer, entry.pattern)
            else:
                part.unwatch(remote.peer, entry.pattern)
        touched.add(part)

    def _step(self, entry: wire.Step, touched: set[LocalPartition]) -> None:
        """Publish a chain's step the origin holds the chain of; one that cannot be published
        here goes back as a failed step (the chain fails, naming it)."""
        part = self._led("", entry.part)
        if part is None and forward_once(self.hub, f"step {entry.id}"):
            # Led elsewhere now (or by no hub, for a moment): on to its leader.
            step = StepPub(entry.publisher, entry.action, entry.payload, entry.options, entry.extra)
            self.hub.chains.place_step(step, entry.id)
            self.hub.kick()
            return
        creds = Credentials(entry.publisher, pub_permissions=("*",))
        try:
            if part is None:  # sent on before, and back: nobody leads it as far as we know
                raise StoreUnavailable(f"this hub does not lead partition {entry.part} any more")
            lc = part.lc
            lc.publish(
                creds,
                entry.action,
                entry.payload,
                entry.options,
                extra=entry.extra,
                task_id=entry.id,
            )
            touched.add(part)
        except TaskHubError as exc:
            chain, index = entry.extra.get("chain_task"), entry.extra.get("chain_step")
            if not isinstance(chain, str) or not isinstance(index, int):
                log.error("the link from %s sent a chain step without its chain", self.where)
                return
            failed = TaskRecord(
                entry.id,
                entry.action,
                entry.publisher,
                time.time(),
                state=TaskState.FAIL,
                error={"reason": "error", "type": type(exc).__name__, "message": exc.message},
            )
            at = task_partition(chain, len(self.hub.router.partitions))
            self.out.add(wire.encode_entry(wire.StepEnded(at, chain, index, failed)))

    def _request(
        self,
        entry: wire.Find | wire.ListTasks | wire.Flush | wire.Items,
        touched: set[LocalPartition],
    ) -> None:
        if isinstance(entry, wire.Items):  # in order with the connection's messages
            self._linked_items(entry, touched)
            return
        task = asyncio.create_task(self._answer(entry))
        self.requests.add(task)
        task.add_done_callback(self.requests.discard)

    async def _answer(self, entry: wire.Find | wire.ListTasks | wire.Flush) -> None:
        try:
            part = self._led("", entry.part)
            if part is None:
                raise TaskHubError(f"this hub does not lead partition {entry.part}")
            if isinstance(entry, wire.Find):
                rec = await part.find(entry.task)
                answer = wire.Answer(entry.id, msgspec.Raw(_encode(rec)))
            elif isinstance(entry, wire.ListTasks):
                page = await part.store.list_tasks(
                    action=entry.action, state=entry.state, after=entry.after, limit=entry.limit
                )
                answer = wire.Answer(entry.id, msgspec.Raw(_encode(page)))
            else:
                busy = [r.resuming for r in self.remotes.values() if r.resuming is not None]
                if busy:  # what came before the flush is applied first
                    await asyncio.wait(busy)
                part.kick()
                await part.flush()
                answer = wire.Answer(entry.id)
        except Exception as exc:
            if not isinstance(exc, TaskHubError):
                log.exception("answering a linked %s failed", type(entry).__name__.lower())
            answer = wire.Answer(entry.id, error=str(exc))
        self.out.add(wire.encode_entry(answer))

    def _spawn(self, answering: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(answering)
        self.requests.add(task)
        task.add_done_callback(self.requests.discard)

    async def _operate(self, entry: wire.Ops) -> None:
        """An operation across hubs (``Admin.ops``) over partitions this hub leads: its
        result or its error in the answer's value; the answer's error when it cannot run."""
        parts: list[LocalPartition] = []
        try:
            op = self.hub.admin.ops.get(entry.op)
            if op is None:
                raise TaskHubError(f"this hub has no operation {entry.op!r} (another version?)")
            for index in entry.parts:
                part = self._led("", index)
                if part is None:
                    raise TaskHubError(f"this hub does not lead partition {index}")
                parts.append(part)
        except TaskHubError as exc:
            self.out.add(wire.encode_entry(wire.Answer(entry.id, error=exc.message)))
            return
        creds = Credentials(entry.name, entry.sub, entry.pub)
        try:
            value = wire.op_result(await op(creds, parts, entry.args))
        except TaskHubError as exc:
            value = wire.op_result(error=exc)
        except Exception:
            log.exception("answering a linked %r operation failed", entry.op)
            value = wire.op_result(error=StoreUnavailable("the leader could not complete it"))
        self.out.add(wire.encode_entry(wire.Answer(entry.id, msgspec.Raw(value))))

    def _drop(self, conn: str, *, lost: bool = True) -> None:
        """The connection is gone: what it held here goes back to its groups. Not ``lost``:
        a hub closed it (the origin, or this one), so a started delivery counts no try."""
        remote = self.remotes.pop(conn, None)
        if remote is None:
            return
        if not lost:
            remote.peer.closed_by_hub = True
        if remote.resuming is not None:
            remote.resuming.cancel()
        hub, peer = self.hub, remote.peer
        hub.connections.remove(peer)
        hub.topics.forget(peer)
        for part in hub.parts:
            part.detach(peer)
        if hub.leased:  # the hub's own lifecycle, apart from the partitions it leads
            hub.front.detach(peer)
        hub.kick()

    def _too_slow(self, waiting: int) -> None:
        log.warning(
            "the link from %s reads too slowly (%d bytes waiting); closing it", self.where, waiting
        )
        closing = asyncio.ensure_future(self.ws.close(code=CLOSE_TRY_AGAIN, reason="too slow"))
        closing.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def end(self) -> None:
        """The link is over: every connection it carried is detached here. Not lost: the
        origin hub stopped or the link broke, and the origin closes its clients (1013); a
        worker that died would have been a connection lost there, and said so."""
        for conn in list(self.remotes):
            self._drop(conn, lost=False)
        for task in list(self.requests):
            task.cancel()
        await self.out.stop()
        log.info("hub-to-hub link from %s closed", self.where)
