"""Operations on schedules, group queues and dead letters, shared by the WebSocket and HTTP.

Each call runs the pure core (lifecycle, scheduler), then answers once what it changed is
stored, like a ``pub``. Listings are filtered to what the credential may see: an action it may
publish or subscribe to.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from taskhub import protocol as p
from taskhub.errors import InvalidOption, PermissionDenied, StoreUnavailable, TaskHubError
from taskhub.errors import TaskNotFound as NotFound
from taskhub.lifecycle import DEAD_META, Credentials, Peer
from taskhub.lifecycle.schedules import Schedule, view
from taskhub.names import allowed
from taskhub.options_table import interval_strings

if TYPE_CHECKING:
    from taskhub.hub.hub import Hub

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

    # --- group queues ------------------------------------------------------------------------
    def queues(self, creds: Credentials) -> list[dict[str, Any]]:
        views = [q for lc in self.hub.lifecycles for q in lc.queue_views()]
        return [q for q in views if _sees(creds, q["action"])]

    def queue(self, creds: Credentials, action: str, group: str) -> dict[str, Any]:
        if not _sees(creds, action):
            raise PermissionDenied(f"{creds.name!r} may not see {action!r}", action=action)
        lc = self.hub.lc_for(action)
        return lc.queue_view(lc.find_queue(action, group))

    async def purge(
        self, creds: Credentials, action: str, group: str, *, forget: bool = False
    ) -> int:
        n = self.hub.lc_for(action).purge(creds, action, group, forget=forget)
        await self._commit()
        return n

    # --- dead letters ------------------------------------------------------------------------
    async def _dead(self) -> dict[str, Any]:
        await self.hub.flush()
        entries: dict[str, Any] = {}
        hub = self.hub
        # Each partition keeps the dead letters of its tasks: the list needs every one.
        for part in [hub.router.local(i) for i in range(hub.partitions)]:
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
        """Every dead letter the credential may see, oldest first, without payloads."""
        return [
            _summary(e)
            for _, e in sorted((await self._dead()).items())
            if _sees(creds, e["action"]) and (action is None or e["action"] == action)
        ]

    async def dead_letter(self, creds: Credentials, task_id: str) -> dict[str, Any]:
        entry = (await self._dead()).get(task_id)
        if entry is None:
            raise NotFound(f"no dead letter {task_id}", task=task_id)
        if not _sees(creds, entry["action"]) and creds.name != entry.get("publisher"):
            raise PermissionDenied(
                f"{creds.name!r} may not read dead letter {task_id}", action=entry["action"]
            )
        result: dict[str, Any] = entry
        return result

    async def requeue(self, creds: Credentials, task_id: str) -> str:
        """Publish a fresh copy of the dead letter; returns the new task's id."""
        async with self._requeue:
            entry = await self.dead_letter(creds, task_id)
            task = self.hub.lc_for(entry["action"]).requeue(creds, entry)
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
                    hub.answer(peer, ref, queues=self.queues(creds))
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
