"""Schedules (lifecycle/schedules.py) on the pure lifecycle with a fake clock: a replaced
schedule keeps its last slot only while its timing is the same, another credential may take it
over only with pub permission for its action, and a stored schedule that no longer reads is
skipped at restore, loudly, without losing the others."""

from __future__ import annotations

import logging

import pytest

from taskhub.errors import PermissionDenied
from taskhub.lifecycle import Credentials
from taskhub.lifecycle.schedules import SCHEDULE_META
from tests.unit.test_scheduling import T0, meta, published, scheduler, spec


def test_a_replaced_schedule_keeps_its_last_slot_while_its_timing_is_the_same() -> None:
    h, s = scheduler(T0)
    s.put(Credentials("ops"), spec(payload=1))
    h.tick(300)
    h.lc.take_writes()
    s.put(Credentials("ops"), spec(payload=2))
    kept = meta(h.lc.take_writes(), SCHEDULE_META)["every5"]
    assert (kept["last_slot"], kept["created_at"]) == (T0 + 300, T0)
    s.put(Credentials("ops"), spec(payload=3, cron="*/10 * * * *"))
    fresh = meta(h.lc.take_writes(), SCHEDULE_META)["every5"]
    assert "last_slot" not in fresh  # new timing: starts afresh, no catch-up
    h.tick(300)  # T0 + 600: a slot of both crons, fired once
    assert [t.rec.payload for t in published(h)] == [1, 3]


def test_another_credential_takes_a_schedule_over_only_with_pub_permission() -> None:
    h, s = scheduler(T0)
    s.put(Credentials("ops"), spec())
    outsider = Credentials("intern", pub_permissions=("sms",))
    with pytest.raises(PermissionDenied, match="'intern' may not change schedule 'every5'"):
        s.remove(outsider, "every5")
    s.put(Credentials("ops2"), spec(payload="mine"))
    h.tick(300)
    [task] = published(h)
    assert (task.rec.publisher, task.rec.payload) == ("ops2", "mine")  # the new owner


def test_a_stored_schedule_that_no_longer_reads_is_skipped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h, s = scheduler(T0)
    good = {"name": "ok", "cron": "*/5 * * * *", "action": "email:send", "created_at": T0}
    bad_cron = {"name": "bad", "cron": "61 * * * *", "action": "email:send"}
    bad_zone = {"name": "tz", "cron": "* * * * *", "action": "email:send", "timezone": "Mars/X"}
    with caplog.at_level(logging.ERROR, logger="taskhub"):
        s.restore([bad_cron, good, bad_zone, {"name": "no cron"}])
    assert sorted(s.schedules) == ["ok"]
    ignored = [
        r.getMessage() for r in caplog.records if "ignoring stored schedule" in r.getMessage()
    ]
    assert len(ignored) == 3
    assert any("'bad'" in m for m in ignored) and any("Mars/X" in m for m in ignored)
    h.tick(300)
    assert len(published(h)) == 1
