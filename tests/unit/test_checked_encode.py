"""The client's shortcuts around ``encode``'s plain-JSON check (client/connection.py): a
``pub`` (``encode_pub``) and a ``return`` (``encode_return``) give the very bytes ``encode``
gives for the whole message, and refuse exactly what it refuses, with the same words
(docs/decisions.md, "Payloads are plain JSON"; "The clients' per-task Python, fourth pass")."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from taskhub.client.connection import encode, encode_pub, encode_return


class Color(enum.StrEnum):
    RED = "red"


class Size(enum.Enum):
    BIG = 1


# Values JSON carries, values it cannot, and values it carries changed (tuples, enums).
_ODD: list[Any] = [
    float("nan"),
    float("inf"),
    -float("inf"),
    dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
    dt.date(2026, 1, 2),
    uuid.UUID(int=7),
    decimal.Decimal("1.10"),
    {"a", "b"},
    frozenset({1}),
    b"raw",
    bytearray(b"x"),
    (1, "two"),
    Color.RED,
    Size.BIG,
    2**64,
    -(2**63) - 1,
    2**64 - 1,
    object(),
]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.sampled_from(_ODD),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
        st.dictionaries(st.one_of(st.integers(), st.text(max_size=3)), inner, max_size=3),
    ),
    max_leaves=12,
)


def _outcome(fn: Callable[[], bytes]) -> tuple[str, Any]:
    try:
        return ("sent", fn())
    except Exception as exc:
        return (type(exc).__name__, str(exc))


@settings(max_examples=400, deadline=None)
@given(_values, st.sampled_from(["job:run", "a/b.c:d-e_f", "x:y"]))
def test_encode_pub_is_encode_of_the_whole_pub(payload: Any, action: str) -> None:
    whole = {"op": "pub", "action": action, "payload": payload}
    assert _outcome(lambda: encode_pub(action, payload)) == _outcome(lambda: encode(whole))


def test_the_odd_values_are_refused_or_sent_as_encode_does() -> None:
    for value in [*_ODD, {"k": _ODD}, [_ODD], {1: "one"}, {"a": (1, 2)}]:
        whole = {"op": "pub", "action": "job:run", "payload": value}
        assert _outcome(lambda v=value: encode_pub("job:run", v)) == _outcome(
            lambda w=whole: encode(w)
        ), value
    assert _outcome(lambda: encode_pub("job:run", float("nan")))[0] == "ValueError"
    assert _outcome(lambda: encode_pub("job:run", {"at": dt.date(2026, 1, 2)}))[0] == "TypeError"
    assert encode_pub("job:run", (1, 2)) == b'{"op":"pub","action":"job:run","payload":[1,2]}'


@settings(max_examples=400, deadline=None)
@given(
    _values,
    st.sampled_from(["01M99G17KS002ESVXRDT908QKT", 'a "quoted" \\ id', "é"]),
    st.one_of(st.integers(min_value=0, max_value=2**40), st.sampled_from([True, 1.0, 2**64])),
)
def test_encode_return_is_encode_of_the_whole_return(
    result: Any, task_id: str, attempt: Any
) -> None:
    whole = {"op": "return", "task": task_id, "attempt": attempt, "result": result}
    assert _outcome(lambda: encode_return(task_id, attempt, result)) == _outcome(
        lambda: encode(whole)
    )
