"""A chain or group that cannot run is refused when it starts, naming what is wrong; nothing is
stored then (chains.py on the pure lifecycle, as test_chains.py drives it)."""

from __future__ import annotations

from typing import Any

import pytest

from taskhub.errors import InvalidOption
from taskhub.lifecycle.chains import MAX_STEPS
from tests.unit.test_chains import Rig, steps


@pytest.mark.parametrize(
    ("plan", "kw", "says", "option"),
    [
        (steps(("a:x", 1)), {"mode": "pipeline"}, "mode must be 'chain' or 'group'", "mode"),
        ([], {}, "a chain needs at least one step", "steps"),
        ([], {"mode": "group"}, "a group needs at least one step", "steps"),
        (
            steps(*[("a:x", i) for i in range(MAX_STEPS + 1)]),
            {},
            f"a chain has at most {MAX_STEPS} steps",
            "steps",
        ),
        (
            steps(("a:x", 1), ("a:y", 2)),
            {"mode": "group", "merge_input": True},
            "merge_input applies to chains only",
            "merge_input",
        ),
    ],
)
def test_a_chain_that_cannot_run_is_refused_naming_the_option(
    plan: Any, kw: dict[str, Any], says: str, option: str
) -> None:
    h = Rig()
    pub = h.peer("web")
    with pytest.raises(InvalidOption, match=says) as err:
        h.chains.start(pub.creds, plan, peer=pub, **kw)
    assert err.value.details == {"option": option}
    assert h.lc.take_writes().tasks == []  # nothing stored
    assert h.msgs(pub) == []
