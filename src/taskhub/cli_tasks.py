"""``taskhub tasks ls|show|cancel|retry``: tasks over the hub's HTTP API (retry over the
WebSocket client, which can read a task's payload)."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from taskhub.cli_common import (
    WS_DEFAULT,
    AsJson,
    CliError,
    Http,
    Key,
    Name,
    Url,
    duration,
    err,
    out,
    span,
    when,
    ws_call,
)
from taskhub.options_table import PUB_ARGS, REQUEUE_OPTIONS

tasks_app = typer.Typer(no_args_is_help=True, help="Tasks: ls, show, cancel, retry.")

STATE_STYLE = {"init": "", "start": "cyan", "success": "green", "fail": "red", "end": "yellow"}
# The options a retry copies (as dead-letter re-queue does); key, delay, at and once_every
# were spent on the first task, and schedule/slot/requeued_from describe where it came from.
# Only those `pub` takes: a trace context is the publisher's own (its current span, if any).
RETRY_OPTIONS = tuple(name for name in REQUEUE_OPTIONS if name in PUB_ARGS)
TaskId = Annotated[str, typer.Argument(help="Task id")]


def _without_traceback(error: Any) -> Any:
    """An error dict without its traceback (shown in full on its own lines)."""
    if isinstance(error, dict) and "traceback" in error:
        return {k: v for k, v in error.items() if k != "traceback"}
    return error


def _retry_error(ev: dict[str, Any]) -> bool:
    data = ev.get("data")
    return (
        ev.get("type") == "retry" and isinstance(data, dict) and isinstance(data.get("error"), dict)
    )


def _data(value: Any, width: int = 60) -> str:
    if value is None:
        return ""
    if isinstance(value, dict) and "error" in value:
        value = {**value, "error": _without_traceback(value["error"])}
    value = _without_traceback(value)
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


@tasks_app.command("ls")
def tasks_ls(
    action: Annotated[str | None, typer.Option(help="Only this action")] = None,
    state: Annotated[
        str | None,
        typer.Option(
            help="Only this state: init, start, success, fail, end (or the labels waiting, "
            "running, failed, ended)"
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many tasks")] = 50,
    after: Annotated[str | None, typer.Option(help="Tasks after this id (paging)")] = None,
    url: Url = WS_DEFAULT,
    name: Name = "cli",
    key: Key = "",
    as_json: AsJson = False,
) -> None:
    """List tasks, oldest first: id, action, state, publisher, created, duration."""
    tasks: list[dict[str, Any]] = []
    cursor = after
    more: str | None = None
    with Http(url, name, key) as http:
        while len(tasks) < limit:
            params: dict[str, Any] = {"limit": min(1000, limit - len(tasks))}
            for field, value in (("action", action), ("state", state), ("after", cursor)):
                if value is not None:
                    params[field] = value
            page = http.call("GET", "/tasks", params=params)
            tasks.extend(page["tasks"])
            cursor = more = page.get("next")
            if cursor is None:
                break
    tasks = tasks[:limit]
    if more is not None and tasks:
        more = tasks[-1]["id"]
    if as_json:
        sys.stdout.write(json.dumps({"tasks": tasks, "next": more}, indent=2) + "\n")
        return
    now = time.time()
    table = Table(box=None)
    for column in ("id", "action", "state", "publisher", "created", "duration"):
        table.add_column(column, no_wrap=column in ("id", "state", "created", "duration"))
    for task in tasks:
        st = str(task["state"])
        table.add_row(
            task["id"],
            task["action"],
            Text(st, STATE_STYLE.get(st, "")),
            task.get("publisher") or "-",
            when(task.get("created_at")),
            span(duration(task, now)),
        )
    out.print(table)
    if more is not None:
        err.print(f"more: taskhub tasks ls --after {more}", highlight=False)


@tasks_app.command("show")
def tasks_show(
    task_id: TaskId,
    url: Url = WS_DEFAULT,
    name: Name = "cli",
    key: Key = "",
    as_json: AsJson = False,
) -> None:
    """Show a task: every field, its deliveries and the timeline of its events."""
    with Http(url, name, key) as http:
        task = http.call("GET", f"/tasks/{task_id}")
        # The stream replays the stored events, then stays open while the task runs: stop
        # reading once it has been quiet for a moment.
        idle = 10.0 if task["state"] in ("success", "fail", "end") else 0.5
        events = list(http.sse(f"/tasks/{task_id}/events", idle=idle))
    if as_json:
        sys.stdout.write(json.dumps({"task": task, "events": events}, indent=2) + "\n")
        return
    _print_fields(task)
    _print_deliveries(task)
    _print_timeline(task, events)
    _print_errors(task, events)


def _print_fields(task: dict[str, Any]) -> None:
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    st = str(task["state"])
    rows: list[tuple[str, Any]] = [
        ("id", task["id"]),
        ("action", task["action"]),
        ("state", Text(st, STATE_STYLE.get(st, ""))),
        ("publisher", task.get("publisher") or "-"),
        ("created", when(task.get("created_at"))),
        ("started", when(task.get("started_at"))),
        ("ended", when(task.get("ended_at"))),
        ("duration", span(duration(task))),
        ("options", json.dumps(task.get("options") or {}, default=str)),
        ("updates", str(task.get("updates", 0))),
        ("last update", json.dumps(task.get("last_update"), default=str)),
        ("result", json.dumps(task.get("result"), default=str)),
        ("error", json.dumps(_without_traceback(task.get("error")), default=str)),
    ]
    for label, value in rows:
        fields.add_row(label, value)
    out.print(fields)


def _print_deliveries(task: dict[str, Any]) -> None:
    deliveries = Table("group", "state", "attempt", "tries", box=None, title_justify="left")
    for d in task.get("deliveries") or []:
        deliveries.add_row(str(d["group"]), str(d["state"]), str(d["attempt"]), str(d["tries"]))
    out.print(Text("\ndeliveries", style="bold"))
    out.print(deliveries if task.get("deliveries") else Text("  (none yet)"))


def _print_timeline(task: dict[str, Any], events: list[dict[str, Any]]) -> None:
    timeline = Table("seq", "at", "+", "event", "group", "service", "data", box=None)
    start = float(task.get("created_at") or 0)
    for ev in events:
        at = float(ev.get("at") or 0)
        kind = str(ev.get("type", ""))
        timeline.add_row(
            str(ev.get("seq", "")),
            when(at).rsplit(" ", 1)[0][11:],
            f"+{at - start:.3f}s",
            Text(kind, STATE_STYLE.get(kind, "")),
            ev.get("group") or "-",
            ev.get("service") or "-",
            _data(ev.get("data")),
        )
    out.print(Text("\ntimeline", style="bold"))
    out.print(timeline)


def _print_errors(task: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """Why each try failed: the retries' errors, then the final one, tracebacks in full."""
    tries = [ev["data"]["error"] for ev in events if _retry_error(ev)]
    final = task.get("error")
    for i, error in enumerate([*tries, *([final] if final else [])], 1):
        label = f"try {i}" if i <= len(tries) else "final error"
        head = f"{error.get('type', 'Error')}: {error.get('message', '')}"
        out.print(Text(f"\n{label}: ", style="bold") + Text(head))
        if error.get("traceback"):
            out.print(Text(str(error["traceback"]).rstrip()), soft_wrap=True)


@tasks_app.command("cancel")
def tasks_cancel(task_id: TaskId, url: Url = WS_DEFAULT, name: Name = "cli", key: Key = "") -> None:
    """Cancel a task: it fails with reason 'cancelled' and its workers are told to stop."""
    with Http(url, name, key) as http:
        task = http.call("DELETE", f"/tasks/{task_id}")
    err.print(f"task {task['id']} cancelled (state {task['state']})", highlight=False)


@tasks_app.command("retry")
def tasks_retry(
    task_id: TaskId,
    force: Annotated[
        bool, typer.Option("--force", help="Also retry a task that succeeded")
    ] = False,
    url: Url = WS_DEFAULT,
    name: Name = "cli",
    key: Key = "",
) -> None:
    """Publish a fresh copy of an ended task (same action, payload and options, no key);
    print the new task's id."""

    async def retry(client: Any) -> str:
        task = await client.get(task_id)
        state = task["state"]
        if state in ("init", "start"):
            raise CliError(f"task {task_id} is still running ({state}); cancel it first")
        if state == "success" and not force:
            raise CliError(f"task {task_id} succeeded; use --force to run it again")
        payload = await client.payload(task_id)
        options = task.get("options") or {}
        copied = {k: options[k] for k in RETRY_OPTIONS if k in options}
        if copied.get("priority") is None:
            copied.pop("priority", None)
        handle = client.pub(task["action"], payload, **copied)
        return str(await handle.accepted())

    new_id = ws_call(url, name, key, retry)
    print(new_id, flush=True)
    err.print(f"task {task_id} published again as {new_id}", highlight=False)
