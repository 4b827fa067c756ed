"""The public shape of a task, as the protocol, the HTTP API, the dashboard and the CLI show it,
and of a task event, as the HTTP event stream and the dashboard show it."""

from __future__ import annotations

from typing import Any

from taskhub import protocol as p
from taskhub.records import EventRecord, TaskRecord


def task_view(rec: TaskRecord, *, payload: bool = False) -> dict[str, Any]:
    """The public shape of a task (protocol, HTTP and CLI)."""
    out: dict[str, Any] = {
        "id": rec.id,
        "action": rec.action,
        "state": rec.state,
        "publisher": rec.publisher,
        "created_at": rec.created_at,
        "started_at": rec.started_at,
        "ended_at": rec.ended_at,
        "options": p.plain({k: v for k, v in rec.options.items() if k != "previous_result"}),
        "updates": rec.updates,
        "last_update": rec.last_update,
        "result": p.plain(rec.result),
        "error": rec.error,
        "deliveries": [
            {"group": d.group, "state": d.state, "attempt": d.attempt, "tries": d.tries}
            for d in rec.deliveries
        ],
    }
    if payload:
        out["payload"] = p.plain(rec.payload)
    return out


def event_view(ev: EventRecord) -> dict[str, Any]:
    """The public shape of a task event (the HTTP event stream and the dashboard's)."""
    return {
        "task": ev.task_id,
        "seq": ev.seq,
        "type": ev.type,
        "at": ev.at,
        "group": ev.group,
        "service": ev.service,
        "data": ev.data,
    }
