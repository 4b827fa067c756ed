"""Structured logs: one line per event, ``key=value`` text or JSON (``TASKHUB_LOG_FORMAT``).

``TASKHUB_LOG`` sets the level: ``debug``, ``info`` (default), ``warning``, ``error``. Seed 003's
``DEBUG=wrkr:*`` habit works too: ``DEBUG=taskhub:*`` (or ``taskhub*``) means debug.

At debug level the hub logs every task event (:func:`log_task_event`, a lifecycle listener the
server installs only if ``taskhub.events`` is at debug when the hub starts) with its task id,
action, type, state, group and service. Never payloads, results, update data or keys: logs
are shipped and kept where task data must not go. Extra fields passed with ``extra={...}``
become keys of the line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import IO, Any

from taskhub.lifecycle import Task
from taskhub.records import EventRecord

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("text", "json")

# Attributes every LogRecord has: whatever else is on a record came in through `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's coloured copy of the message
    "taskName",
}
_BARE = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")  # text values that need no quoting
_REASON = re.compile(r"^[a-z_]{1,40}$")  # hub-made failure reasons (not worker text)

events_log = logging.getLogger("taskhub.events")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_") and value is not None:
            out[key] = value
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a traceback is one string field (``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``ts=... level=info logger=taskhub.hub msg="..." task=01J...``: one line per event;
    values with spaces, quotes or newlines are JSON-quoted, so a line never breaks."""

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record).items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            if not _BARE.match(text):
                text = json.dumps(text, ensure_ascii=False)
            parts.append(f"{key}={text}")
        return " ".join(parts)


def level_from_env(env: Mapping[str, str]) -> int:
    value = env.get("TASKHUB_LOG", "").strip().lower()
    if value:
        if value not in LEVELS:
            raise ValueError(f"TASKHUB_LOG={value!r}: use one of {', '.join(LEVELS)}")
        return LEVELS[value]
    debug = env.get("DEBUG", "")
    if any(p.strip().startswith("taskhub") or p.strip() == "*" for p in debug.split(",")):
        return logging.DEBUG
    return logging.INFO


class TaskhubHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`setup` installs: a later call replaces it, and only it."""


def setup(
    level: int | str | None = None,
    fmt: str | None = None,
    *,
    stream: IO[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Configure the root logger for a hub process (``taskhub serve``); returns the handler.

    ``level`` and ``fmt`` default to ``TASKHUB_LOG`` and ``TASKHUB_LOG_FORMAT`` (``text`` or
    ``json``). Replaces earlier handlers this function installed, leaves others alone.
    """
    source = os.environ if env is None else env
    if level is None:
        level = level_from_env(source)
    elif isinstance(level, str):
        if level.lower() not in LEVELS:
            raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
        level = LEVELS[level.lower()]
    fmt = (fmt or source.get("TASKHUB_LOG_FORMAT") or "text").strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"TASKHUB_LOG_FORMAT={fmt!r}: use text or json")
    handler = TaskhubHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, TaskhubHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries whose debug lines carry frame contents (payloads, the Authorization header):
    # never below info, whatever TASKHUB_LOG says.
    for name in ("websockets", "uvicorn.protocols", "httpcore", "hpack", "asyncio"):
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    return handler


def log_task_event(task: Task, ev: EventRecord) -> None:
    """Lifecycle listener: one debug line per task event, ids and names only."""
    if not events_log.isEnabledFor(logging.DEBUG):
        return  # the hot path: a disabled level costs one check
    extra: dict[str, Any] = {
        "event": f"task.{ev.type}",
        "task": ev.task_id,
        "action": task.rec.action,
        "state": task.rec.state,
        "group": ev.group,
        "service": ev.service,
    }
    data = ev.data
    if isinstance(data, dict):
        # Only hub-made bookkeeping: the attempt number and a failure reason; worker-supplied
        # error messages and all task data stay out of logs.
        attempt = data.get("attempt")
        if isinstance(attempt, int):
            extra["attempt"] = attempt
        reason = data.get("reason")
        if isinstance(reason, str) and _REASON.match(reason):
            extra["reason"] = reason
    events_log.debug("task %s", ev.type, extra=extra)
