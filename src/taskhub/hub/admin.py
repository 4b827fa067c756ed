"""Operations on schedules, group queues and dead letters, shared by the WebSocket and HTTP.

Each call runs the pure core (lifecycle, scheduler), then answers once what it changed is
stored, like a ``pub``. Listings are filtered to what the credential may see: an action it may
publish or subscribe to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from taskhub import protocol as p
from taskhub.errors import InvalidOption, PermissionDenied, StoreUnavailable, TaskHubError
from taskhub.errors import TaskNotFound as NotFound
from taskhub.hub.partition import LocalPartition, unavailable
from taskhub.hub.router import action_partition, task_partition
from taskhub.lifecycle import DEAD_META, Credentials, Peer
from taskhub.lifecycle.schedules import Schedule, view
from taskhub.names import allowed
from taskhub.options_table import interval_strings

if TYPE_CHECKING:
    from taskhub.hub.hub import Hub

# An operation over some partitions this hub leads: (credential, partitions, arguments).
Op = Callable[[Credentials, list[LocalPartition], dict[str, Any]], Awaitable[Any]]

log = logging.getLogger("taskhub.admin")


def schedule_options(options: Any) -> dict[str, Any]:
    """A schedule's ``pub`` options, checked as a ``pub``'s, as a plain dict to store;
    ``delay`` and ``once_every`` may be interval strings (the HTTP API's form)."""
    if options is None:
        return {}
    if isinstance(options, p.PubOptions):
        return dict(msgspec.to_builtins(options))
    if not isinstance(options, dict):
        raise InvalidOption("options must be an object", option="options")
    try:
        checked = msgspec.convert(interval_strings(options), p.PubOptions)
    except msgspec.ValidationError as exc:
        raise InvalidOption(f"options: {exc}", option="options") from None
    return dict(msgspec.to_builtins(checked))


async def _within(asking: Awaitable[Any], timeout: float | None, url: str) -> Any:
    """``asking``'s answer, or :class:`StoreUnavailable` after ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(asking, timeout)
    except TimeoutError:
        raise StoreUnavailable(f"the hub at {url} did not answer within {timeout}s") from None


def _sees(creds: Credentials, action: str) -> bool:
    return allowed(creds.pub_permissions, action) or allowed(creds.sub_permissions, action)


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in ("payload", "deliveries")}


class Admin:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # Re-queueing reads the entry from the store, then deletes it in the next batch: one at
        # a time, so two calls for the same dead letter cannot both publish a copy.
        self._requeue = asyncio.Lock()
        # The operations other hubs run here over the link (``HubLinks.ask``), by name: each
        # takes the credential, the partitions it runs over (led here) and its arguments.
        self.ops: dict[str, Op] = {
            "queues": self._queues_here,
            "queue": self._queue_here,
            "purge": self._purge_here,
            "dead_letters": self._dead_here,
            "dead_letter": self._dead_letter_here,
            "requeue": self._requeue_here,
        }

    async def _commit(self) -> None:
        self.hub.kick()
        await self.hub.flush()

    # --- schedules ---------------------------------------------------------------------------
    async def put_schedule(
        self,
        creds: Credentials,
        name: str,
        cron: str,
        action: str,
        payload: Any = None,
        options: Any = None,
        timezone: str = "UTC",
    ) -> dict[str, Any]:
        spec = Schedule(
            name=name,
            cron=cron,
            action=action,
            payload=payload,
            options=schedule_options(options),
            timezone=timezone,
            owner=creds.name,
            source="api",
        )
        sched = self.hub.scheduler
        sched.put(creds, spec)
        await self._commit()
        return view(spec, sched.next_at.get(name))

    async def remove_schedule(self, creds: Credentials, name: str) -> dict[str, Any]:
        spec = self.hub.scheduler.remove(creds, name)
        await self._commit()
        return view(spec, None)

    def schedules(self, creds: Credentials) -> list[dict[str, Any]]:
        return [
            s
            for s in self.hub.scheduler.views()
            if s["owner"] == creds.name or _sees(creds, s["action"])
        ]

    def schedule(self, creds: Credentials, name: str) -> dict[str, Any]:
        for s in self.schedules(creds):
            if s["name"] == name:
                return s
        raise NotFound(f"no schedule named {name!r}", schedule=name)

    # --- operations across hubs ---------------------------------------------------------------
    async def everywhere(
        self,
        op: str,
        creds: Credentials,
        args: dict[str, Any] | None = None,
        *,
        partial: bool = False,
        timeout: float | None = None,
        every_hub: bool = False,
    ) -> tuple[list[Any], list[int]]:
        """Run ``op`` (:attr:`ops`) over every partition of the deployment: here over the
        partitions this hub leads, at each other leading hub (over the link, one request per
        hub) over the partitions it leads. Returns each hub's result (this hub's first) and
        the partitions left out: none unless ``partial``, which leaves out a partition no hub
        holds or whose hub did not answer (within ``timeout`` seconds, or before its link
        broke) instead of raising (the dashboard's numbers). ``every_hub``: the other live
        hubs that lead no partition run it too, over none (for what each hub holds itself,
        as its connections); one that does not answer is left out, as ``partial`` says."""
        hub, args = self.hub, args or {}
        here: list[LocalPartition] = []
        there: dict[str, list[int]] = {}
        missing: list[int] = []
        for slot in hub.router.slots:
            if slot.local is not None:
                here.append(slot.local)
            elif slot.linked is not None and hub.links is not None:
                there.setdefault(slot.leader, []).append(slot.index)
            elif partial:
                missing.append(slot.index)
            else:
                raise unavailable(slot.index, slot.leader)
        if every_hub and hub.links is not None:
            for url in hub.leading.members().values():
                there.setdefault(url.rstrip("/"), [])
        links = hub.links
        asks = [
            _within(links.ask(url, op, creds, parts, args), timeout, url)
            for url, parts in there.items()
            if links
        ]
        answers = await asyncio.gather(
            self.ops[op](creds, here, args), *asks, return_exceptions=partial
        )
        results: list[Any] = []
        for answer, parts in zip(answers, [[], *there.values()], strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, TaskHubError):
                    raise answer
                missing.extend(parts)
            else:
                results.append(answer)
        return results, sorted(missing)

    async def at(
        self, index: int, op: str, creds: Credentials, args: dict[str, Any] | None = None
    ) -> Any:
        """Run ``op`` over partition ``index``, here or at the hub that leads it."""
        hub, args = self.hub, args or {}
        slot = hub.router.slots[index]
        if slot.local is not None:
            return await self.ops[op](creds, [slot.local], args)
        if slot.linked is not None and hub.links is not None:
            return await hub.links.ask(slot.leader, op, creds, [index], args)
        raise unavailable(index, slot.leader)

    def _action_at(self, action: str) -> int:
        return action_partition(action, self.hub.partitions)

    # --- group queues ------------------------------------------------------------------------
    async def queues(self, creds: Credentials) -> list[dict[str, Any]]:
        """Every group queue of the deployment the credential may see."""
        results, _ = await self.everywhere("queues", creds)
        return [q for views in results for q in views]

    async def queue(self, creds: Credentials, action: str, group: str) -> dict[str, Any]:
        if not _sees(creds, action):
            raise PermissionDenied(f"{creds.name!r} may not see {action!r}", action=action)
        view: dict[str, Any] = await self.at(
            self._action_at(action), "queue", creds, {"action": action, "group": group}
        )
        return view

    async def purge(
        self, creds: Credentials, action: str, group: str, *, forget: bool = False
    ) -> int:
        args = {"action": action, "group": group, "forget": forget}
        return int(await self.at(self._action_at(action), "purge", creds, args))

    async def _queues_here(
        self, creds: Credentials, parts: list[LocalPartition], args: dict[str, Any]
    ) -> list[dict[str, Any]]:
        views = [q for part in parts for q in part.lc.queue_views()]
        return [q for q in views if _sees(creds, q["action"])]

    async def _queue_here(
        self, creds: Credentials, parts: list[LocalPartition], args: dict[str, Any]
    ) -> dict[str, Any]:
        lc = parts[0].lc
        return lc.queue_view(lc.find_queue(args["action"], args["group"]))

    async def _purge_here(
        self, creds: Credentials, parts: list[LocalPartition], args: dict[str, Any]
    ) -> int:
        action, group = args["action"], args["group"]
        n = parts[0].lc.purge(creds, action, group, forget=bool(args.get("forget")))
        await self._commit()
        return n

    # --- dead letters ------------------------------------------------------------------------
    async def _dead(self, parts: list[LocalPartition]) -> dict[str, Any]:
        """The dead letters of ``parts`` (each partition keeps those of its tasks), those
        not written yet included."""
        if parts:
            await self.hub.flush()
        entries: dict[str, Any] = {}
        for part in parts:
            try:
                stored = await part.store.list_meta(DEAD_META)
            except Exception as exc:
                log.exception("reading the dead-letter list failed")
                raise StoreUnavailable("could not read the dead-letter list; try again") from exc
            puts, deleted = part.lc.pending_meta(DEAD_META)
            stored.update(puts)
            for key in deleted:
                stored.pop(key, None)
            entries.update(stored)
        return entries

    async def dead_letters(
        self, creds: Credentials, action: str | None = None
    ) -> list[dict[str, Any]]:
        """Every dead letter of the deployment the credential may see, oldest first, without
        payloads."""
        results, _ = await self.everywhere("dead_letters", creds, {"action": action})
        return sorted((e for listed in results for e in listed), key=lambda e: str(e["id"]))

    async def dead_letter(self, creds: Credentials, task_id: str) -> dict[str, Any]:
        at = task_partition(task_id, self.hub.partitions)
        entry: dict[str, Any] = await self.at(at, "dead_letter", creds, {"task": task_id})
        return entry

    async def requeue(self, creds: Credentials, task_id: str) -> str:
        """Publish a fresh copy of the dead letter; returns the new task's id. It is
        published in the dead letter's partition, by the hub that leads it."""
        at = task_partition(task_id, self.hub.partitions)
        return str(await self.at(at, "requeue", creds, {"task": task_id}))

    async def _dead_here(
        self, creds: Credentials, parts: list[LocalPartition], args: dict[str, Any]
    ) -> list[dict[str, Any]]:
        action = args.get("action")
        return [
            _summary(e)
            for _, e in sorted((await self._dead(parts)).items())
            if _sees(creds, e["action"]) and (action is None or e["action"] == action)
        ]

    async def _dead_letter_here(
        self, creds: Credentials, parts: list[LocalPartition], args: dict[str, Any]
    ) -> dict[str, Any]:
        task_id = str(args["task"])
        entry = (await self._dead(parts)).get(task_id)
        if entry is None:
            raise NotFound(f"no dead letter {task_id}", task=task_id)
        if not _sees(creds, entry["action"]) and creds.name != entry.get("publisher"):
            raise PermissionDenied(
                f"{creds.name!r} may not read dead letter {task_id}", action=entry["action"]
            )
        result: dict[str, Any] = entry
        return result

    async def _requeue_here(
        self, creds: Credentials, parts: list[LocalPartition], args: dict[str, Any]
    ) -> str:
        async with self._requeue:
            entry = await self._dead_letter_here(creds, parts, args)
            task = parts[0].lc.requeue(creds, entry)
            await self._commit()
        return task.id

    # --- the WebSocket ops -------------------------------------------------------------------
    async def answer(self, peer: Peer, msg: p.Admin) -> None:
        creds = peer.creds
        ref = msg.ref
        hub = self.hub
        try:
            match msg:
                case p.Schedule():
                    out = await self.put_schedule(
                        creds,
                        msg.name,
                        msg.cron,
                        msg.action,
                        msg.payload,
                        msg.options,
                        msg.timezone,
                    )
                    hub.answer(peer, ref, schedule=out)
                case p.Unschedule():
                    hub.answer(peer, ref, schedule=await self.remove_schedule(creds, msg.name))
                case p.Schedules():
                    hub.answer(peer, ref, schedules=self.schedules(creds))
                case p.Queues():
                    hub.answer(peer, ref, queues=await self.queues(creds))
                case p.Purge():
                    n = await self.purge(creds, msg.action, msg.group, forget=msg.forget)
                    hub.answer(peer, ref, purged=n)
                case p.DeadLetters():
                    hub.answer(peer, ref, dead_letters=await self.dead_letters(creds, msg.action))
                case p.DeadLetter():
                    hub.answer(peer, ref, dead_letter=await self.dead_letter(creds, msg.task))
                case p.Requeue():
                    hub.answer(peer, ref, task=await self.requeue(creds, msg.task))
        except TaskHubError as exc:
            hub.lc.send(peer, p.error_msg(exc, ref))
        except Exception:
            log.exception("%s failed", type(msg).__name__)
            err = StoreUnavailable("the hub could not complete this operation; try again")
            hub.lc.send(peer, p.error_msg(err, ref))
        hub.kick()
