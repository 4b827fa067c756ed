"""The per-address throttle of key checks (hub/auth.py), on a fake clock."""

from __future__ import annotations

import pytest

from taskhub.hub.auth import AuthThrottled, Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fail(t: Throttle, address: str = "10.0.0.1") -> None:
    t.begin(address)
    t.end(address, ok=False)


def test_free_failures_then_a_doubling_wait_up_to_the_cap() -> None:
    clock = Clock()
    t = Throttle(free_failures=3, backoff=1.0, max_backoff=8.0, clock=clock)
    for _ in range(3):
        _fail(t)  # the third failure: wait 1 s before the next try
    waits = []
    for _ in range(6):
        with pytest.raises(AuthThrottled) as err:
            t.begin("10.0.0.1")
        waits.append(err.value.details["retry_after"])
        clock.now += waits[-1]
        _fail(t)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_wait_says_how_long_and_other_addresses_are_free() -> None:
    clock = Clock()
    t = Throttle(free_failures=1, backoff=5.0, clock=clock)
    _fail(t)
    clock.now += 2
    with pytest.raises(AuthThrottled, match=r"from 10.0.0.1; retry in 3.0 s"):
        t.begin("10.0.0.1")
    t.begin("10.0.0.2")  # another address: no wait


def test_failures_age_out_after_a_quiet_period_and_success_forgives_nothing() -> None:
    clock = Clock()
    t = Throttle(free_failures=2, backoff=1.0, max_backoff=10.0, clock=clock)
    _fail(t)
    t.begin("10.0.0.1")
    t.end("10.0.0.1", ok=True)  # a success in between does not reset the count ...
    _fail(t)
    with pytest.raises(AuthThrottled):
        t.begin("10.0.0.1")
    clock.now += 11  # ... but a quiet period longer than max_backoff does
    _fail(t)
    t.begin("10.0.0.1")


def test_concurrent_checks_per_address_are_capped() -> None:
    t = Throttle(max_checking=2, clock=Clock())
    t.begin("10.0.0.1")
    t.begin("10.0.0.1")
    with pytest.raises(AuthThrottled, match="at once"):
        t.begin("10.0.0.1")
    t.end("10.0.0.1", ok=True)
    t.begin("10.0.0.1")


def test_ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() -> None:
    assert Throttle.key("2001:db8:1:2:aaaa::1") == Throttle.key("2001:db8:1:2:bbbb::9")
    assert Throttle.key("2001:db8:1:3::1") != Throttle.key("2001:db8:1:2::1")
    assert Throttle.key("::ffff:10.0.0.1") == "10.0.0.1"


def test_the_table_of_addresses_is_bounded() -> None:
    t = Throttle(max_addresses=100, clock=Clock())
    for i in range(1000):
        _fail(t, f"10.0.{i // 256}.{i % 256}")
    assert len(t._addresses) == 100
