"""Durations as people write them: seconds, ``timedelta``, ``"7 days"``, ``"1h30m"``, ``"PT1H30M"``.

Pure and small: the client parses ``delay``/``once_every`` before sending seconds, and the HTTP
API and the config file accept the same strings. Grammar (docs/scheduling.md):

- a number of seconds: ``90``, ``1.5``, ``"90"``;
- one or more ``<number> <unit>`` parts, spaces, commas and ``and`` optional between them:
  ``"90 seconds"``, ``"1h30m"``, ``"2 weeks, 3 days"``, ``"1 hour and 30 minutes"``;
  units ``ms``, ``s``/``sec``/``second``, ``m``/``min``/``minute``, ``h``/``hr``/``hour``,
  ``d``/``day``, ``w``/``wk``/``week`` (plurals too), case-insensitive;
- an ISO-8601 duration with weeks, days, hours, minutes, seconds: ``"P7D"``, ``"PT1H30M"``,
  ``"P1W"``, ``"P1DT12H"``, ``"PT0.5S"``.

Months and years are refused: they have no fixed length (use days, or a cron schedule).
"""

from __future__ import annotations

import datetime as dt
import math
import re

from taskhub.errors import InvalidOption

__all__ = ["InvalidInterval", "format_interval", "parse_interval"]

_UNITS: dict[str, float] = {}
for _names, _seconds in (
    (("ms", "msec", "msecs", "millisecond", "milliseconds"), 0.001),
    (("s", "sec", "secs", "second", "seconds"), 1.0),
    (("m", "min", "mins", "minute", "minutes"), 60.0),
    (("h", "hr", "hrs", "hour", "hours"), 3600.0),
    (("d", "day", "days"), 86400.0),
    (("w", "wk", "wks", "week", "weeks"), 604800.0),
):
    for _name in _names:
        _UNITS[_name] = _seconds
_CALENDAR = {"mo", "month", "months", "y", "yr", "yrs", "year", "years"}

_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_PART = re.compile(rf"\s*({_NUMBER})\s*([a-zA-Z]+)\s*(?:,|\band\b)?", re.ASCII)
_ISO = re.compile(
    rf"P(?:(?P<w>{_NUMBER})W)?(?:(?P<d>{_NUMBER})D)?"
    rf"(?:T(?:(?P<h>{_NUMBER})H)?(?:(?P<m>{_NUMBER})M)?(?:(?P<s>{_NUMBER})S)?)?",
    re.ASCII | re.IGNORECASE,
)
_ISO_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
# Far beyond any sensible delay (about 31 700 years), and small enough that `now + delay` stays
# an exact float: a typo such as "9999999 weeks" is refused instead of scheduling for never.
MAX_SECONDS = 1e12


class InvalidInterval(InvalidOption):
    """A duration that cannot be read; the message quotes the text and says what is wrong."""


def parse_interval(value: object, *, option: str = "interval") -> float:
    """Seconds (a float >= 0) from a number, a ``timedelta`` or a string (see the module doc).

    ``option`` names the setting in error messages (``delay``, ``once_every``, ...).
    Raises :class:`InvalidInterval` (an :class:`InvalidOption`, so a ``ValueError``).
    """
    if isinstance(value, bool):  # a bool is an int to Python, never a duration to a user
        raise InvalidInterval(f"{option}: {value!r} is not a duration", option=option)
    if isinstance(value, dt.timedelta):
        return _checked(value.total_seconds(), value, option)
    if isinstance(value, int | float):
        return _checked(float(value), value, option)
    if not isinstance(value, str):
        raise InvalidInterval(
            f"{option}: expected seconds, a timedelta or a string, got {type(value).__name__}",
            option=option,
        )
    text = value.strip()
    if not text:
        raise InvalidInterval(f"{option}: empty duration {value!r}", option=option)
    if re.fullmatch(_NUMBER, text, re.ASCII):
        return _checked(float(text), value, option)
    if text[:1] in "Pp":  # no unit starts with a P
        return _checked(_iso(text, value, option), value, option)
    return _checked(_human(text, value, option), value, option)


def _iso(text: str, original: str, option: str) -> float:
    m = _ISO.fullmatch(text)
    if m is None or not any(m.groupdict().values()) or text.upper().endswith("T"):
        hint = ""
        if re.search(r"\d(?:Y|M)(?!.*T)", text.upper().split("T")[0]):
            hint = " (years and months have no fixed length: use days or a cron schedule)"
        raise InvalidInterval(
            f"{option}: {original!r} is not an ISO-8601 duration such as 'PT1H30M' or 'P7D'" + hint,
            option=option,
        )
    return sum(float(v) * _ISO_SECONDS[k] for k, v in m.groupdict().items() if v)


def _human(text: str, original: str, option: str) -> float:
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            rest = text[pos:].strip()
            raise InvalidInterval(
                f"{option}: cannot read {rest!r} in {original!r}; write e.g. '90 seconds', "
                "'1h30m', '7 days' or 'PT1H30M'",
                option=option,
            )
        number, unit = m.group(1), m.group(2).lower()
        if unit in _CALENDAR:
            raise InvalidInterval(
                f"{option}: {original!r} uses {m.group(2)!r}, which has no fixed length; "
                "use days or weeks, or a cron schedule",
                option=option,
            )
        seconds = _UNITS.get(unit)
        if seconds is None:
            raise InvalidInterval(
                f"{option}: unknown unit {m.group(2)!r} in {original!r}; known units: "
                "ms, s, m, h, d, w (and their long forms)",
                option=option,
            )
        total += float(number) * seconds
        pos = m.end()
    return total


def _checked(seconds: float, original: object, option: str) -> float:
    if math.isnan(seconds) or seconds < 0:
        raise InvalidInterval(f"{option}: {original!r} is negative or not a number", option=option)
    if seconds > MAX_SECONDS:
        raise InvalidInterval(
            f"{option}: {original!r} is longer than the limit of {MAX_SECONDS:g} seconds",
            option=option,
        )
    return seconds


def format_interval(seconds: float) -> str:
    """A short human form, ``"1h30m"``, that :func:`parse_interval` reads back exactly for
    whole milliseconds."""
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"cannot format {seconds!r} as a duration")
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    parts = []
    for unit, size in (("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        n, ms = divmod(ms, size)
        if n:
            parts.append(f"{n}{unit}")
    s, ms = divmod(ms, 1000)
    if s:
        parts.append(f"{s}s")
    if ms:
        parts.append(f"{ms}ms")
    return "".join(parts)
