"""Publish options, declared once: each option's name, types, default, meaning, the ``[server]``
config key of its hub-wide default and which surfaces take it. The Python clients build the
wire ``options`` from it (:func:`pub_options`, :func:`worker_options`); every other surface
(``protocol.PubOptions``, the HTTP model, the config, ``resolve_options``, the docs' table) is
checked against it by tests/unit/test_options_table.py.

Pure: it sits beside ``protocol.py`` so the client, the hub, the lifecycle and the config may
all import it (import-linter, pyproject.toml)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from taskhub.errors import InvalidOption
from taskhub.intervals import parse_interval

Duration = float | dt.timedelta | str  # seconds, a timedelta or an interval ("7 days")
Convert = Literal["interval", "epoch"]


@dataclass(frozen=True)
class PubOption:
    """One publish option. ``pub`` is the type the Python clients' ``pub`` takes (``None``: not
    a ``pub`` argument); ``worker`` the type a worker declares it with (``None``: a worker
    cannot default it). ``left_out`` are the values ``pub`` treats as not given (empty: any
    given value is sent, ``None`` included, which means "forever" for the timeouts)."""

    name: str
    wire: str  # its JSON type, as docs/protocol.md says it
    default: str  # what applies when it is left out
    meaning: str
    pub: Any = None
    worker: Any = None
    config: str | None = None  # the [server] key of the hub-wide default
    server: str | None = None  # the Server(...) argument (and Defaults field) of that default
    action: bool = False  # an [[actions]] entry may default it
    requeue: bool = False  # a re-queued dead letter or retried task keeps it
    convert: Convert | None = None  # how pub turns the Python value into the wire's
    left_out: tuple[Any, ...] = ()


PUB_OPTIONS: tuple[PubOption, ...] = (
    PubOption(
        "timeout",
        "number or `null`",
        "hub `timeout` (60)",
        "End timeout: seconds after the task starts. `null` means forever. Must be ≥ 0.",
        pub=float | None,
        worker=Duration | None,
        config="timeout",
        server="task_end_timeout",
        action=True,
        requeue=True,
    ),
    PubOption(
        "start_timeout",
        "number or `null`",
        "hub `start_timeout` (`null`)",
        "Seconds the task may wait for a worker to start it. The clock starts at publish time, "
        "or at `at`/`delay` for a scheduled task. `null` means forever. Must be ≥ 0.",
        pub=float | None,
        config="start_timeout",
        server="task_start_timeout",
        action=True,
        requeue=True,
    ),
    PubOption(
        "priority",
        "int",
        "`0`",
        "Higher values are offered first within a group's queue. Equal priorities are offered "
        "in publish order.",
        pub=int,
        action=True,
        requeue=True,
        left_out=(0,),
    ),
    PubOption(
        "key",
        "string or `null`",
        "`null`",
        "Idempotency key, scoped to the action. For one hour (`idempotency_window`), a `pub` "
        "with the same action and key returns the first task instead of creating a new one.",
        pub=str | None,
        left_out=(None,),
    ),
    PubOption(
        "retries",
        "int",
        "hub `retries` (0)",
        "How many times a delivery whose handler failed is offered again. Must be ≥ 0.",
        pub=int,
        worker=int,
        config="retries",
        server="retries",
        action=True,
        requeue=True,
    ),
    PubOption(
        "max_attempts",
        "int",
        "hub `max_attempts` (5)",
        "The most tries (started attempts that were lost, or failed) a delivery may use before "
        "it fails with reason `attempts`. Must be ≥ 1.",
        pub=int,
        worker=int,
        config="max_attempts",
        server="max_attempts",
        action=True,
        requeue=True,
    ),
    PubOption(
        "delay",
        "number",
        "`0`",
        "Seconds before the task is offered. Must be ≥ 0. The Python clients also take a "
        '`timedelta` or an interval (`"7 days"`, `"1h30m"`, `"PT1H30M"`), as does the HTTP '
        "API; the WebSocket `pub` takes seconds only.",
        pub=Duration | None,
        convert="interval",
        left_out=(None,),
    ),
    PubOption(
        "at",
        "number or `null`",
        "`null`",
        "Epoch seconds before which the task is not offered (the Python clients take a "
        "timezone-aware `datetime`). Takes precedence over `delay`. A time in the past means "
        '"now".',
        pub=dt.datetime | None,
        convert="epoch",
        left_out=(None,),
    ),
    PubOption(
        "once_every",
        "number or `null`",
        "`null`",
        "Debounce, in seconds (or an interval, as for `delay`): while a task of the same action "
        "and `key` still waits for a worker, this `pub` returns it instead of adding another; "
        "otherwise the new task is delivered after `once_every` (docs/scheduling.md).",
        pub=Duration | None,
        convert="interval",
        left_out=(None,),
    ),
    PubOption(
        "backoff",
        "number",
        "hub `backoff` (1)",
        "Seconds before the first retry, doubled per retry, with jitter.",
        pub=float,
        worker=Duration,
        config="backoff",
        server="retry_backoff",
        action=True,
        requeue=True,
    ),
    PubOption(
        "backoff_max",
        "number",
        "hub `backoff_max` (300)",
        "The longest retry delay, in seconds.",
        pub=float,
        worker=Duration,
        config="backoff_max",
        server="retry_backoff_max",
        action=True,
        requeue=True,
    ),
    PubOption(
        "partition_key",
        "string or `null`",
        "`null`",
        "Within each group, tasks with the same key are worked one at a time, in publish order "
        '(docs/http.md, "partition_key").',
        pub=str | None,
        requeue=True,
        left_out=(None,),
    ),
    PubOption(
        "trace",
        "object of strings or `null`",
        "`null`",
        "Trace context for the worker (docs/tracing.md): the W3C carrier, "
        '`{"traceparent": "00-…-…-01", "tracestate": "…"}` (and `baggage` if your propagators '
        "add it). At most 8 entries and 8192 characters in all (`invalid_option` names "
        "`trace`). The hub stores it with the task, sends it in every `offer`, and does not read "
        "it otherwise. The Python clients set it from the current span.",
        requeue=True,  # a re-queued copy continues the trace of the task it copies
    ),
)
OPTION: dict[str, PubOption] = {o.name: o for o in PUB_OPTIONS}
PUB_ARGS: tuple[str, ...] = tuple(o.name for o in PUB_OPTIONS if o.pub is not None)
WORKER_ARGS: tuple[str, ...] = tuple(o.name for o in PUB_OPTIONS if o.worker is not None)
ACTION_OPTIONS = frozenset(o.name for o in PUB_OPTIONS if o.action)
REQUEUE_OPTIONS: tuple[str, ...] = tuple(o.name for o in PUB_OPTIONS if o.requeue)
# [server] key of a hub-wide default -> its Server(...) argument.
CONFIG_KEYS: dict[str, str] = {o.config: o.server for o in PUB_OPTIONS if o.config and o.server}
# Keys the config took before #18 named them as the options are named: still read, with a
# warning (docs/decisions.md, "Config keys named as the options").
OLD_CONFIG_KEYS: dict[str, str] = {
    server: config for config, server in CONFIG_KEYS.items() if server != config
}


class PubArgs(TypedDict, total=False):
    """The keyword arguments of ``Client.pub`` (async and blocking) and ``schedule``; checked
    against :data:`PUB_OPTIONS` by a test. A misspelt one is a type-check error."""

    timeout: float | None
    start_timeout: float | None
    priority: int
    key: str | None
    retries: int
    max_attempts: int
    delay: float | dt.timedelta | str | None
    at: dt.datetime | None
    once_every: float | dt.timedelta | str | None
    backoff: float
    backoff_max: float
    partition_key: str | None


class WorkerArgs(TypedDict, total=False):
    """The defaults a worker declares (``Client.sub``, ``Worker.task``): they apply to what
    the publisher did not set (publisher > worker > hub config > hub default)."""

    timeout: float | dt.timedelta | str | None
    retries: int
    max_attempts: int
    backoff: float | dt.timedelta | str
    backoff_max: float | dt.timedelta | str


def _unknown(kind: str, given: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"unknown {kind} option(s) {unknown}; known: {', '.join(known)}")


def pub_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """The wire ``options`` of a ``pub`` from the Python clients' keyword arguments: intervals
    parsed to seconds, ``at`` to epoch seconds; options left out (or given their "left out"
    value, such as ``priority=0``) are absent, so the hub's or the action's defaults apply.
    Raises TypeError naming an unknown option, ValueError (InvalidOption) a bad value."""
    options: dict[str, Any] = {}
    if not given:
        return options  # the common case: all defaults
    _unknown("pub", given, PUB_ARGS)
    for name, value in given.items():
        opt = OPTION[name]
        if opt.left_out and value in opt.left_out:
            continue
        if opt.convert == "interval":
            value = parse_interval(value, option=name)
        elif opt.convert == "epoch":
            value = _epoch(value)
        options[name] = value
    return options


def _epoch(at: Any) -> float:
    if not isinstance(at, dt.datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(
            f"at= needs a timezone-aware datetime, got {at!r}; e.g. "
            "datetime.now(timezone.utc) + timedelta(hours=1)"
        )
    return at.timestamp()


def worker_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """The wire ``options`` of a ``sub``: a worker's declared defaults, only those given,
    durations in seconds. Raises TypeError naming an unknown option, ValueError
    (InvalidOption) a bad value."""
    _unknown("worker", given, WORKER_ARGS)
    options: dict[str, Any] = {}
    for name, value in given.items():
        if OPTION[name].worker is int:
            least = 1 if name == "max_attempts" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidOption(
                    f"{name} must be an integer >= {least}, got {value!r}", option=name
                )
            options[name] = value
        elif value is None and name == "timeout":
            options[name] = None  # no end timeout
        else:
            options[name] = parse_interval(value, option=name)
    return options


def interval_strings(options: Mapping[str, Any]) -> dict[str, Any]:
    """Wire-form options with the interval strings the HTTP API and the config accept
    (``"delay": "7 days"``) parsed to seconds; a copy."""
    out = dict(options)
    for opt in PUB_OPTIONS:
        if opt.convert == "interval" and isinstance(out.get(opt.name), str):
            out[opt.name] = parse_interval(out[opt.name], option=opt.name)
    return out
