"""Recurring schedules: cron expressions in a time zone, fired by the lifecycle's clock.

Pure like the lifecycle it drives: a schedule is a stored metadata entry (kind ``schedule``)
and one timer in the lifecycle's heap. Firing publishes the task and records the slot it
fired in the same write batch, so after a crash either both are stored or neither is. A task
whose action another partition holds is published there first (:class:`Fires`, the hub's
``Firing``), and the slot recorded once it is stored (docs/scheduling.md, "Schedules across
partitions and hubs").

Catch-up policy (docs/scheduling.md): a hub that was down while slots passed fires **one**
task for the latest missed slot when it starts, never one per missed slot, and then goes on
with the next slot in the future. Slots before a schedule was created are never fired.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from croniter import croniter

from taskhub.errors import InvalidOption, PermissionDenied, TaskHubError, TaskNotFound
from taskhub.lifecycle import Credentials, Lifecycle, StoredOptions, resolve_options
from taskhub.names import allowed, reserved_action, validate_action

log = logging.getLogger("taskhub.schedules")

SCHEDULE_META = "schedule"
TIMER = "schedule"
_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")
CONFIG_OWNER = "config"  # the publisher of tasks fired by schedules from the config file


class Schedule(msgspec.Struct, omit_defaults=True):
    """A stored schedule. ``options`` are ``pub`` options (``timeout``, ``priority``, ...)."""

    name: str
    cron: str
    action: str
    payload: Any = None
    options: dict[str, Any] = {}
    timezone: str = "UTC"
    owner: str = CONFIG_OWNER  # the credential that created it: its tasks' publisher
    source: str = "api"  # "api" or "config" (removed from the file -> removed from the hub)
    created_at: float = 0.0
    last_slot: float | None = None  # the slot last fired (epoch seconds); None: none yet


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
        raise InvalidOption(
            f"unknown time zone {name!r}; use an IANA name such as 'UTC' or 'Europe/Oslo'",
            option="timezone",
        ) from None


def check_cron(expr: str) -> None:
    if not isinstance(expr, str) or not croniter.is_valid(expr):
        raise InvalidOption(
            f"{expr!r} is not a cron expression such as '*/5 * * * *' (minute hour day month "
            "weekday)",
            option="cron",
        )


def next_slot(expr: str, tz: ZoneInfo, after: float) -> float:
    """The first slot strictly after ``after``, in wall-clock time of ``tz`` (DST aware)."""
    it = croniter(expr, dt.datetime.fromtimestamp(after, tz))
    return float(it.get_next(float))


def last_slot(expr: str, tz: ZoneInfo, at: float) -> float:
    """The latest slot at or before ``at``."""
    prev = float(croniter(expr, dt.datetime.fromtimestamp(at, tz)).get_prev(float))
    nxt = next_slot(expr, tz, prev)
    return nxt if nxt <= at else prev


def view(s: Schedule, next_at: float | None) -> dict[str, Any]:
    out = msgspec.structs.asdict(s)  # every field, defaults included
    out["next_at"] = next_at
    return out


class Slot(NamedTuple):
    """A schedule's slot to publish: its task's publisher (the schedule's ``owner``), action,
    payload and stored ``pub`` options; ``extra`` names the schedule and the slot."""

    owner: str
    action: str
    payload: Any
    options: dict[str, Any]
    extra: dict[str, Any]

    @property
    def schedule(self) -> str:
        return str(self.extra.get("schedule"))


class Fires(Protocol):
    """Where a slot's task is published. ``stored`` records the slot as fired: call it once
    the task is stored, or in the same turn as the publish when the task goes in ``home``
    (the schedules' own lifecycle), whose write batch then holds both."""

    def fire(self, home: Lifecycle, slot: Slot, stored: Callable[[], None]) -> None: ...


class InPlace:
    """The schedules' lifecycle holds their tasks too (one partition): the task and its slot
    go in one write batch."""

    def fire(self, home: Lifecycle, slot: Slot, stored: Callable[[], None]) -> None:
        stored()
        try:
            publish_slot(home, slot)
        except TaskHubError as exc:  # checked at put: only a changed hub default gets here
            log.error("schedule %r could not publish %s: %s", slot.schedule, slot.action, exc)


def publish_slot(lc: Lifecycle, slot: Slot, task_id: str | None = None) -> None:
    """Publish ``slot``'s task in ``lc`` (as ``task_id`` when given) with its schedule's
    credentials; ``TaskHubError`` if the lifecycle refuses it."""
    creds = Credentials(slot.owner, sub_permissions=(), pub_permissions=(slot.action,))
    options = StoredOptions(slot.options)
    lc.publish(creds, slot.action, slot.payload, options, extra=slot.extra, task_id=task_id)


class Scheduler:
    """Every schedule of the hub, each with a timer armed in the lifecycle for its next slot."""

    def __init__(self, lc: Lifecycle, fires: Fires | None = None) -> None:
        self.lc = lc  # the schedules' timers and records
        self.fires = fires or InPlace()  # where their tasks are published
        self.schedules: dict[str, Schedule] = {}
        self.next_at: dict[str, float] = {}
        lc.timer_handlers[TIMER] = self._fire

    # --- changes -----------------------------------------------------------------------------
    def put(self, creds: Credentials, spec: Schedule) -> Schedule:
        """Create or replace the schedule ``spec.name``; needs pub permission for its action.

        A replaced schedule keeps its last fired slot when its cron and time zone are the
        same; otherwise it starts afresh (no catch-up of slots before now).
        """
        self.check(creds, spec)
        old = self.schedules.get(spec.name)
        if old is not None and old.owner != creds.name:
            self._may_change(creds, old)
        now = self.lc.clock()
        spec.owner = creds.name  # its tasks' publisher
        spec.created_at = spec.created_at or now
        if old is not None and (old.cron, old.timezone) == (spec.cron, spec.timezone):
            spec.last_slot = old.last_slot
            spec.created_at = old.created_at
        else:
            spec.last_slot = None
        self._add(spec, now)
        self.lc.put_meta(SCHEDULE_META, spec.name, msgspec.to_builtins(spec))
        return spec

    def remove(self, creds: Credentials, name: str) -> Schedule:
        spec = self.schedules.get(name)
        if spec is None:
            raise TaskNotFound(f"no schedule named {name!r}", schedule=name)
        self._may_change(creds, spec)
        self._drop(name)
        return spec

    def check(self, creds: Credentials, spec: Schedule) -> None:
        """Every check :meth:`put` makes, so the config file is refused at start, not later."""
        if not isinstance(spec.name, str) or not _NAME.fullmatch(spec.name):
            raise InvalidOption(
                f"schedule name {spec.name!r} must be 1-200 of [A-Za-z0-9_.:/-]", option="name"
            )
        check_cron(spec.cron)
        zone(spec.timezone)
        validate_action(spec.action)
        if reserved_action(spec.action) or not allowed(creds.pub_permissions, spec.action):
            raise PermissionDenied(
                f"{creds.name!r} may not publish {spec.action!r}", action=spec.action
            )
        if "key" in spec.options or "at" in spec.options:
            raise InvalidOption(
                "a schedule's options may not set 'key' or 'at': every slot is a new task",
                option="key" if "key" in spec.options else "at",
            )
        # The pub checks, now rather than at the first slot.
        resolve_options(StoredOptions(spec.options), self.lc.defaults, 0.0, spec.action)

    def _may_change(self, creds: Credentials, spec: Schedule) -> None:
        if creds.name != spec.owner and not allowed(creds.pub_permissions, spec.action):
            raise PermissionDenied(
                f"{creds.name!r} may not change schedule {spec.name!r} ({spec.action})",
                action=spec.action,
            )

    def _add(self, spec: Schedule, now: float) -> None:
        self.schedules[spec.name] = spec
        tz = zone(spec.timezone)
        after = max(now, spec.last_slot or 0.0)
        at = next_slot(spec.cron, tz, after)
        self.next_at[spec.name] = at
        self.lc.arm(at, TIMER, spec.name)

    def _drop(self, name: str) -> None:
        self.schedules.pop(name, None)
        self.next_at.pop(name, None)  # its timer finds nothing to do
        self.lc.delete_meta(SCHEDULE_META, name)

    # --- start -------------------------------------------------------------------------------
    def restore(self, entries: Iterable[Any]) -> int:
        """Take back the stored schedules; fire at most one missed slot of each (the latest).

        Returns how many missed slots were fired.
        """
        now = self.lc.clock()
        fired = 0
        for entry in entries:
            try:
                spec = msgspec.convert(entry, Schedule)
                tz = zone(spec.timezone)
                check_cron(spec.cron)
            except (msgspec.ValidationError, TaskHubError) as exc:
                log.error("ignoring stored schedule %r: %s", entry, exc)
                continue
            since = spec.last_slot if spec.last_slot is not None else spec.created_at
            missed = last_slot(spec.cron, tz, now)
            self.schedules[spec.name] = spec
            if since < missed <= now:
                self._publish(spec, missed)
                fired += 1
            self._add(spec, now)
        return fired

    def configure(self, specs: Iterable[Schedule]) -> None:
        """Apply the config file's schedules: add or update them, and remove the ones that
        came from the file before but are no longer in it. Call after :meth:`restore`."""
        creds = Credentials(CONFIG_OWNER, pub_permissions=("*",))
        wanted = {}
        for spec in specs:
            spec.owner = CONFIG_OWNER
            spec.source = "config"
            self.check(creds, spec)
            wanted[spec.name] = spec
        for name, known in list(self.schedules.items()):
            if known.source == "config" and name not in wanted:
                self._drop(name)
        for spec in wanted.values():
            old = self.schedules.get(spec.name)
            same = old is not None and _settings(old) == _settings(spec)
            if not same:
                self.put(creds, spec)

    # --- firing ------------------------------------------------------------------------------
    def _fire(self, name: str, now: float) -> None:
        spec = self.schedules.get(name)
        slot = self.next_at.get(name)
        if spec is None or slot is None or slot > now:
            return  # removed, or replaced and re-armed: this timer is stale
        # One slot however late the timer fired (the event loop was blocked, the machine
        # slept): the latest one due, as after a restart.
        self._publish(spec, last_slot(spec.cron, zone(spec.timezone), now))
        self._add(spec, now)

    def _publish(self, spec: Schedule, slot: float) -> None:
        extra = {"schedule": spec.name, "slot": slot}
        fired = Slot(spec.owner, spec.action, spec.payload, dict(spec.options), extra)
        self.fires.fire(self.lc, fired, partial(self._stored, spec, slot))

    def _stored(self, spec: Schedule, slot: float) -> None:
        """``slot``'s task is stored (or goes in this write batch): the slot is recorded as
        fired, unless the schedule was removed or given another timing meanwhile, or a later
        slot is recorded already. Until then a restart fires it again if it is still the
        latest missed slot (the same task: docs/scheduling.md)."""
        now = self.schedules.get(spec.name)
        if now is None or (now.cron, now.timezone) != (spec.cron, spec.timezone):
            return
        if now.last_slot is not None and now.last_slot >= slot:
            return
        now.last_slot = slot
        self.lc.put_meta(SCHEDULE_META, now.name, msgspec.to_builtins(now))

    def views(self) -> list[dict[str, Any]]:
        return [view(s, self.next_at.get(n)) for n, s in sorted(self.schedules.items())]


def _settings(s: Schedule) -> tuple[Any, ...]:
    return (s.cron, s.action, s.payload, s.options, s.timezone)
