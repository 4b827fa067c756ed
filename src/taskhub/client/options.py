"""Publish options and a worker's declared defaults, as the client sends them: intervals
parsed to seconds, ``at`` to epoch seconds, options left out absent (the hub's, the
action's or the worker's apply). One place for both ``Client.pub`` and ``Client.sub``,
``Worker.task`` and the blocking client."""

from __future__ import annotations

import datetime as dt
import inspect
from typing import Any

from taskhub.errors import InvalidOption
from taskhub.intervals import parse_interval

UNSET: Any = object()  # "not given": the option is left to the publisher, the hub config or default
_UNSET = UNSET
Duration = float | dt.timedelta | str


def worker_options(
    *,
    timeout: Duration | None = _UNSET,
    retries: int = _UNSET,
    max_attempts: int = _UNSET,
    backoff: Duration = _UNSET,
    backoff_max: Duration = _UNSET,
) -> dict[str, Any]:
    """The wire ``options`` of a ``sub``: a worker's declared defaults, only those given,
    durations in seconds. Raises ValueError (InvalidOption) naming a bad one."""
    options: dict[str, Any] = {}
    if timeout is not _UNSET:
        options["timeout"] = None if timeout is None else parse_interval(timeout, option="timeout")
    for name, duration in (("backoff", backoff), ("backoff_max", backoff_max)):
        if duration is not _UNSET:
            options[name] = parse_interval(duration, option=name)
    for name, count, least in (("retries", retries, 0), ("max_attempts", max_attempts, 1)):
        if count is not _UNSET:
            if isinstance(count, bool) or not isinstance(count, int) or count < least:
                raise InvalidOption(
                    f"{name} must be an integer >= {least}, got {count!r}", option=name
                )
            options[name] = count
    return options


def pub_options(
    *,
    timeout: float | None = _UNSET,
    start_timeout: float | None = _UNSET,
    delay: float | dt.timedelta | str | None = None,
    at: dt.datetime | None = None,
    priority: int = 0,
    key: str | None = None,
    retries: int = _UNSET,
    max_attempts: int = _UNSET,
    backoff: float = _UNSET,
    backoff_max: float = _UNSET,
    once_every: float | dt.timedelta | str | None = None,
    partition_key: str | None = None,
) -> dict[str, Any]:
    """The wire ``options`` of a ``pub``: intervals parsed to seconds, ``at`` to epoch
    seconds; options left out are absent (the hub's or the action's defaults apply)."""
    options: dict[str, Any] = {}
    if (
        timeout is _UNSET
        and start_timeout is _UNSET
        and retries is _UNSET
        and max_attempts is _UNSET
        and backoff is _UNSET
        and backoff_max is _UNSET
        and not priority
        and key is None
        and partition_key is None
        and delay is None
        and once_every is None
        and at is None
    ):
        return options  # the common case: all defaults
    for name, value in (
        ("timeout", timeout),
        ("start_timeout", start_timeout),
        ("retries", retries),
        ("max_attempts", max_attempts),
        ("backoff", backoff),
        ("backoff_max", backoff_max),
    ):
        if value is not _UNSET:
            options[name] = value
    if priority:
        options["priority"] = priority
    if key is not None:
        options["key"] = key
    if partition_key is not None:
        options["partition_key"] = partition_key
    if delay is not None:
        options["delay"] = parse_interval(delay, option="delay")
    if once_every is not None:
        options["once_every"] = parse_interval(once_every, option="once_every")
    if at is not None:
        if not isinstance(at, dt.datetime) or at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(
                f"at= needs a timezone-aware datetime, got {at!r}; e.g. "
                "datetime.now(timezone.utc) + timedelta(hours=1)"
            )
        options["at"] = at.timestamp()
    return options


def pub_options_from(kwargs: dict[str, Any]) -> dict[str, Any]:
    known = set(inspect.signature(pub_options).parameters)
    unknown = set(kwargs) - known
    if unknown:
        raise TypeError(f"unknown pub option(s) {sorted(unknown)}; known: {sorted(known)}")
    return pub_options(**kwargs)
