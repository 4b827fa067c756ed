"""Publish options: what a task may set, how its own, its action's and the hub's defaults
combine, and the checks every task's options pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from taskhub import options_table
from taskhub.errors import InvalidOption
from taskhub.intervals import parse_interval
from taskhub.lifecycle.state import GIVEN, Defaults
from taskhub.protocol import WORKER_OPTIONS

# Options an [[actions]] entry may default (per action, between the task's and the hub's), and
# those a re-queued dead letter keeps: not `key` (its window would hand back the dead task), nor
# delay/once_every (they were spent). Both are columns of the options table.
ACTION_OPTIONS = options_table.ACTION_OPTIONS
REQUEUE_OPTIONS = options_table.REQUEUE_OPTIONS  # `taskhub tasks retry` copies the same


# A task's trace context is stored in its record and sent with every offer: bounded. 8 KiB is
# W3C baggage's own limit; traceparent takes 55 characters, tracestate at most 512.
MAX_TRACE_FIELDS = 8
MAX_TRACE_CHARS = 8192


def check_trace(trace: Any) -> dict[str, str] | None:
    """A ``trace`` option as stored: a copy, ``None`` when empty. The hub does not read it
    (propagators ignore what they cannot parse); it only bounds it."""
    if trace is None:
        return None
    if not isinstance(trace, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in trace.items()
    ):
        raise InvalidOption(
            "option 'trace' must be an object of strings (a W3C trace context such as "
            '{"traceparent": "00-...-...-01"})',
            option="trace",
        )
    if len(trace) > MAX_TRACE_FIELDS:
        raise InvalidOption(
            f"option 'trace' has {len(trace)} fields; at most {MAX_TRACE_FIELDS}", option="trace"
        )
    size = sum(len(k) + len(v) for k, v in trace.items())
    if size > MAX_TRACE_CHARS:
        raise InvalidOption(
            f"option 'trace' has {size} characters; at most {MAX_TRACE_CHARS}", option="trace"
        )
    return dict(trace) or None


def _trace_option(options: Any) -> dict[str, Any]:
    """``{"trace": ...}`` when the task carries a trace context, else nothing."""
    trace = check_trace(getattr(options, "trace", None))
    return {} if trace is None else {"trace": trace}


def _opt(value: Any, default: Any) -> Any:
    return default if value is msgspec.UNSET else value


def worker_options(options: Any) -> dict[str, Any]:
    """A subscription's declared defaults (``sub.options``), checked like a task's; only
    the options it sets."""
    if options is None:
        return {}
    out = {
        n: getattr(options, n)
        for n in WORKER_OPTIONS
        if getattr(options, n, msgspec.UNSET) is not msgspec.UNSET
    }
    for name in ("timeout", "backoff", "backoff_max"):
        if out.get(name) is not None and out[name] < 0:
            raise InvalidOption(f"worker option {name!r} must be >= 0 seconds", option=name)
    if out.get("retries", 0) < 0:
        raise InvalidOption("worker option 'retries' must be >= 0", option="retries")
    if out.get("max_attempts", 1) < 1:
        raise InvalidOption("worker option 'max_attempts' must be >= 1", option="max_attempts")
    return out


def _check_options(opts: dict[str, Any]) -> None:
    """The checks every task's timeouts, retries and attempts pass (``Lifecycle._options``)."""
    for name in ("timeout", "start_timeout"):
        if opts[name] is not None and opts[name] < 0:
            raise InvalidOption(f"option {name!r} must be >= 0 seconds or null", option=name)
    if opts["retries"] < 0:
        raise InvalidOption("option 'retries' must be >= 0", option="retries")
    if opts["max_attempts"] < 1:
        raise InvalidOption("option 'max_attempts' must be >= 1", option="max_attempts")


class StoredOptions:
    """Stored options read back like a PubOptions (the lifecycle reads options by name)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def resolve_options(
    options: Any, d: Defaults, now: float, action: str | None = None
) -> dict[str, Any]:
    """A task's stored options: its own, then its action's ([[actions]]), then the hub's.
    Raises InvalidOption naming the option that is wrong."""
    per_action = d.actions.get(action, {}) if action is not None else {}
    if options is None and not per_action:
        # The common case (a pub without options, an action without defaults): the
        # hub-wide defaults, with the same checks as below and nothing else to read.
        opts: dict[str, Any] = {
            "timeout": d.task_end_timeout,
            "start_timeout": d.task_start_timeout,
            "retries": d.retries,
            "max_attempts": d.max_attempts,
            "priority": 0,
        }
        _check_options(opts)
        return opts

    def get(name: str, default: Any) -> Any:
        return _opt(getattr(options, name, msgspec.UNSET), per_action.get(name, default))

    opts = {
        "timeout": get("timeout", d.task_end_timeout),
        "start_timeout": get("start_timeout", d.task_start_timeout),
        "retries": get("retries", d.retries),
        "max_attempts": get("max_attempts", d.max_attempts),
        "priority": get("priority", 0),
    }
    # Backoff is stored only when the task or its action sets it: most tasks use the
    # hub's, and every stored option costs bytes in every task record.
    for name in ("backoff", "backoff_max"):
        value = get(name, None)
        if value is not None:
            if value < 0:
                raise InvalidOption(f"option {name!r} must be >= 0 seconds", option=name)
            opts[name] = float(value)
    _check_options(opts)
    # Which of the options a worker may default the publisher set itself: those keep the
    # publisher's value, the others take the holding worker's when it declares one.
    given = [n for n in WORKER_OPTIONS if getattr(options, n, msgspec.UNSET) is not msgspec.UNSET]
    if given:
        opts[GIVEN] = given
    key = get("key", None)
    if key is not None:
        opts["key"] = key
    partition_key = get("partition_key", None)
    if partition_key is not None:
        opts["partition_key"] = str(partition_key)
    opts.update(_trace_option(options))
    not_before = _not_before(get, now, opts)
    if not_before:
        opts["not_before"] = not_before
    return opts


def _not_before(get: Callable[[str, Any], Any], now: float, opts: dict[str, Any]) -> float:
    """When the task is due (0: at once): ``at``, else now + ``delay``, and with ``once_every``
    (stored in ``opts``) no earlier than now + ``once_every``."""
    delay = get("delay", 0.0) or 0.0
    if isinstance(delay, str):  # "7 days", "PT1H": the HTTP API passes them through
        delay = parse_interval(delay, option="delay")
    at = get("at", None)
    if delay < 0:
        raise InvalidOption("option 'delay' must be >= 0 seconds", option="delay")
    not_before: float = at if at is not None else (now + delay if delay else 0.0)
    once_every = get("once_every", None)
    if once_every is not None:
        if isinstance(once_every, str):
            once_every = parse_interval(once_every, option="once_every")
        if once_every < 0:
            raise InvalidOption("option 'once_every' must be >= 0 seconds", option="once_every")
        opts["once_every"] = float(once_every)
        not_before = max(not_before, now + once_every)
    return not_before
