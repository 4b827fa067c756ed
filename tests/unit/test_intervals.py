"""The interval parser: every accepted form, clear errors that quote the bad text."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskhub.errors import InvalidOption
from taskhub.intervals import InvalidInterval, format_interval, parse_interval


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        (dt.timedelta(minutes=2), 120.0),
        ("90 seconds", 90.0),
        ("7 days", 604800.0),
        ("1h30m", 5400.0),
        ("2 weeks", 1209600.0),
        ("1 hour and 30 minutes", 5400.0),
        ("2 weeks, 3 days", 1468800.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("  5 MIN ", 300.0),
        ("PT1H30M", 5400.0),
        ("P7D", 604800.0),
        ("P1W", 604800.0),
        ("P1DT12H", 129600.0),
        ("PT0.5S", 0.5),
        ("pt10m", 600.0),
    ],
)
def test_accepted_forms(text: object, seconds: float) -> None:
    assert parse_interval(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("soon", "'soon'"),
        ("1 fortnight", "'fortnight'"),
        ("3 months", "no fixed length"),
        ("P1M", "years and months"),
        ("P1Y", "years and months"),
        ("P", "ISO-8601"),
        ("PT", "ISO-8601"),
        ("-5", "'-5'"),
        (-5, "negative"),
        ("1h 2x", "'x'"),
        (True, "not a duration"),
        ([1], "list"),
        ("9999999999 weeks", "limit"),
    ],
)
def test_errors_name_the_bad_text(text: object, fragment: str) -> None:
    with pytest.raises(InvalidInterval, match="delay") as info:
        parse_interval(text, option="delay")
    assert fragment in str(info.value)
    assert isinstance(info.value, InvalidOption)  # callers catch one class
    assert isinstance(info.value, ValueError)


_UNIT = st.sampled_from(["s", "sec", "seconds", "m", "minutes", "h", "hours", "d", "days", "w"])
_SECONDS = {"s": 1, "sec": 1, "seconds": 1, "m": 60, "minutes": 60, "h": 3600, "hours": 3600}
_SECONDS |= {"d": 86400, "days": 86400, "w": 604800}


@given(st.lists(st.tuples(st.integers(0, 10_000), _UNIT), min_size=1, max_size=5))
def test_human_parts_add_up(parts: list[tuple[int, str]]) -> None:
    text = " ".join(f"{n} {unit}" for n, unit in parts)
    assert parse_interval(text) == sum(n * _SECONDS[u] for n, u in parts)
    assert parse_interval(text.replace(" ", "")) == parse_interval(text)


@given(st.integers(0, 10**9))
def test_format_round_trips(ms: int) -> None:
    seconds = ms / 1000
    assert parse_interval(format_interval(seconds)) == pytest.approx(seconds, abs=1e-6)


@given(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99), st.integers(0, 99))
def test_iso_components(d: int, h: int, m: int, s: int) -> None:
    text = f"P{d}DT{h}H{m}M{s}S"
    assert parse_interval(text) == d * 86400 + h * 3600 + m * 60 + s


@given(st.text(max_size=30))
def test_any_text_parses_or_raises_invalid_interval(text: str) -> None:
    try:
        value = parse_interval(text)
    except InvalidInterval as exc:
        assert repr(text.strip())[1:-1][:5] in str(exc) or "empty" in str(exc) or text.strip()
    else:
        assert value >= 0
