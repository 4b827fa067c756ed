"""The live parts of the CLI: ``pub --wait``'s status line and ``watch``'s table."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections import OrderedDict
from typing import Any

from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from taskhub.cli_common import err, out, span
from taskhub.errors import NoResult, TaskFailed

STATE_STYLE = {"init": "", "start": "cyan", "success": "green", "fail": "red", "end": "yellow"}
EVENT_STYLE = {"success": "green", "fail": "red", "end": "yellow", "retry": "yellow"}


def short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def progress_of(update: Any) -> tuple[float, float] | None:
    """``{"done": n, "total": m}`` or ``{"progress": 0..1}`` -> (completed, total)."""
    if not isinstance(update, dict):
        return None
    done, total = _number(update.get("done")), _number(update.get("total"))
    if done is not None and total is not None and total > 0:
        return min(max(done, 0.0), total), total
    fraction = _number(update.get("progress"))
    if fraction is not None and 0 <= fraction <= 1:
        return fraction, 1.0
    return None


# --- pub --wait ---------------------------------------------------------------------------------
class Status:
    """One line: spinner, elapsed time, state, a progress bar or the last update."""

    def __init__(self, handle: Any, task_id: str) -> None:
        self.handle = handle
        self.task_id = task_id
        self.started = time.monotonic()
        self.spinner = Spinner("dots", style="cyan")

    def __rich__(self) -> RenderableType:
        state = str(self.handle.state)
        update = self.handle.last_update
        waiting = state == "init" and self.handle.pooled  # no worker subscribes (yet)
        grid = Table.grid(padding=(0, 1))
        row: list[RenderableType] = [
            self.spinner,
            Text(self.task_id, "dim"),
            Text(span(time.monotonic() - self.started).rjust(7)),
            Text(
                "no worker" if waiting else f"{state:<7}",
                "yellow" if waiting else STATE_STYLE.get(state, ""),
            ),
        ]
        # What the line has left after the fixed cells (and a column of padding each). The
        # count comes first, then the bar, then the update: at 80 columns the count must not
        # be cut off by a long update.
        room = err.size.width - sum(cell_len(c) for c in row) - len(row) - 1
        progress = progress_of(update)
        if progress is not None:
            done, total = progress
            count = Text(f"{done:g}/{total:g}" if total != 1.0 else f"{done * 100:.0f}%", "bold")
            room -= count.cell_len + 1
            bar = min(30, room - 1)
            if bar >= 5:
                row.append(ProgressBar(total=total, completed=done, width=bar))
                room -= bar + 1
            row.append(count)
        if update is not None and room >= 10:
            row.append(Text(short(update, min(50, room)), "dim"))
        for _ in row:
            grid.add_column(no_wrap=True)
        grid.add_row(*row)
        return grid


def cell_len(cell: RenderableType) -> int:
    return cell.cell_len if isinstance(cell, Text) else 1  # the spinner: one cell


async def wait_for_result(handle: Any, *, live: bool) -> int:
    """Show the task until it ends; print its result as JSON on stdout.

    Exit status: 0 success, 2 failed (or timed out, or cancelled), 3 ended without a result.
    """
    started = time.monotonic()
    if not live:  # listening before the hub's answer: the first update can come with it
        handle.on(
            "update",
            lambda h: err.print(f"update: {short(h.last_update, 200)}", highlight=False),
        )
    task_id = await handle.accepted()
    if not live:
        err.print(f"task {task_id} published", highlight=False)
    say_if_pooled(handle)
    if live:
        status = Status(handle, task_id)
        with Live(
            status,
            console=err,
            refresh_per_second=10,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        ):
            outcome = await _outcome(handle)
    else:
        outcome = await _outcome(handle)
    took = span(time.monotonic() - started)
    code, result, problem = outcome
    if code == 0:
        err.print(Text.assemble(("success", "green"), f" {task_id} in {took}"), highlight=False)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    else:
        label = "no result" if code == 3 else str(handle.state)
        err.print(
            Text.assemble((f"{label}:", "red"), f" {problem} (after {took})"),
            highlight=False,
            soft_wrap=True,
        )
    return code


def say_if_pooled(handle: Any) -> None:
    """The hub pooled the task: no worker subscribes to its action (a typo?)."""
    if handle.pooled:
        err.print(
            Text.assemble(
                ("waiting:", "yellow"),
                f" no worker subscribes to {handle.action!r}; the task waits until one does"
                " (is the action spelled right?)",
            ),
            highlight=False,
            soft_wrap=True,
        )


async def _outcome(handle: Any) -> tuple[int, Any, str]:
    try:
        return 0, await handle.get_result(), ""
    except NoResult as exc:
        return 3, None, str(exc)
    except TaskFailed as exc:
        return 2, None, str(exc)


# --- watch ----------------------------------------------------------------------------------
class WatchTable:
    """The most recent tasks seen by a watch, one row each, newest first."""

    def __init__(self, pattern: str, rows: int) -> None:
        self.pattern = pattern
        self.rows = rows
        self.tasks: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.events = 0

    def add(self, event: dict[str, Any]) -> None:
        self.events += 1
        task_id = str(event.get("task", ""))
        row = self.tasks.pop(task_id, None) or {"first": float(event.get("at") or time.time())}
        row.update(
            action=event.get("action", row.get("action", "")),
            state=event.get("state", row.get("state", "")),
            event=str(event.get("type", "")),
            data=event.get("data"),
            at=float(event.get("at") or time.time()),
        )
        if event.get("service"):
            row["service"] = event["service"]
        self.tasks[task_id] = row
        while len(self.tasks) > self.rows:
            self.tasks.popitem(last=False)

    def __rich__(self) -> RenderableType:
        now = time.time()
        table = Table(
            "id", "action", "state", "last event", "service", "age", box=None, pad_edge=False
        )
        for task_id, row in reversed(self.tasks.items()):
            state, kind = str(row["state"]), str(row["event"])
            last = Text(kind, EVENT_STYLE.get(kind, ""))
            if row.get("data") is not None:
                last.append(" " + short(row["data"], 40), "dim")
            table.add_row(
                task_id,
                Text(str(row["action"]), "cyan"),
                Text(state, STATE_STYLE.get(state, "")),
                last,
                Text(str(row.get("service") or "-"), "magenta"),
                span(now - row["first"]),
            )
        clock = dt.datetime.now().strftime("%H:%M:%S")
        title = Text(
            f"watching {self.pattern} · {len(self.tasks)} task(s) · {self.events} event(s) · "
            f"{clock} (Ctrl-C to stop)",
            "dim",
        )
        return Group(title, table)


async def watch_table(events: Any, pattern: str, rows: int) -> None:
    view = WatchTable(pattern, rows)
    with Live(view, console=out, refresh_per_second=4, transient=False):
        async for event in events:
            view.add(event)
