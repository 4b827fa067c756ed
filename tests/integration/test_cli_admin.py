"""`taskhub schedules` and `taskhub queues` (docs/cli.md, "Operating the hub") as real
subprocesses against a live hub: what they print, what they change, one-line errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskhub import Server, TaskFailed
from tests.conftest import ClientFactory
from tests.integration.test_cli import cli


async def test_schedules_add_ls_rm(server: Server) -> None:
    bad = await cli(
        "schedules", "add", "nightly", "0 3 * * *", "report:build", "{oops", "--url", server.url
    )
    assert "payload is not valid JSON" in bad.one_error_line()

    added = await cli(
        "schedules",
        "add",
        "nightly",
        "0 3 * * *",
        "report:build",
        '{"kind": "daily"}',
        "--timezone",
        "Europe/Oslo",
        "--timeout",
        "30",
        "--url",
        server.url,
    )
    assert added.code == 0, added.stderr
    assert added.stderr.startswith("schedule nightly saved; next slot ")
    listed = await cli("schedules", "ls", "--json", "--url", server.url)
    [row] = json.loads(listed.stdout)
    assert (row["name"], row["cron"], row["action"], row["timezone"]) == (
        "nightly",
        "0 3 * * *",
        "report:build",
        "Europe/Oslo",
    )
    assert row["next_at"] is not None
    table = await cli("schedules", "ls", "--url", server.url)
    assert table.code == 0 and "nightly" in table.stdout and "Europe/Oslo" in table.stdout

    removed = await cli("schedules", "rm", "nightly", "--url", server.url)
    assert removed.code == 0 and removed.stderr == "schedule nightly removed\n"
    assert json.loads((await cli("schedules", "ls", "--json", "--url", server.url)).stdout) == []
    again = await cli("schedules", "rm", "nightly", "--url", server.url)
    assert "no schedule named 'nightly'" in again.one_error_line()


async def test_queues_ls_show_purge(server: Server, make_client: ClientFactory) -> None:
    worker = await make_client("mailer")
    await worker.sub("email:send", lambda task: None, group="mailers", durable=True)
    await worker.close()  # the durable group stays, with nobody to work
    publisher = await make_client("web")
    for i in range(3):
        await publisher.pub("email:send", i).accepted()

    listed = await cli("queues", "ls", "--json", "--url", server.url)
    [row] = [q for q in json.loads(listed.stdout) if q["group"] == "mailers"]
    assert (row["action"], row["durable"], row["workers"], row["waiting"]) == (
        "email:send",
        True,
        0,
        3,
    )
    table = await cli("queues", "ls", "--url", server.url)
    assert table.code == 0 and "mailers" in table.stdout
    shown = await cli("queues", "show", "email:send", "mailers", "--url", server.url)
    assert json.loads(shown.stdout) == row
    missing = await cli("queues", "show", "email:send", "nobody", "--url", server.url)
    assert "no queue for group 'nobody' of 'email:send'" in missing.one_error_line()

    purged = await cli("queues", "purge", "email:send", "mailers", "--forget", "--url", server.url)
    assert purged.code == 0 and purged.stderr == "purged 3 deliveries, forgot the group\n"
    after = await cli("queues", "ls", "--json", "--url", server.url)
    assert [q for q in json.loads(after.stdout) if q["group"] == "mailers"] == []


async def test_dlq_show_prints_the_dead_letter_with_its_payload(
    server: Server, make_client: ClientFactory
) -> None:
    worker, publisher = await make_client("w"), await make_client("p")

    async def work(task: Any) -> Any:
        raise RuntimeError("dead on arrival")

    await worker.sub("job:run", work)
    handle = publisher.pub("job:run", {"order": 7}, retries=0)
    with pytest.raises(TaskFailed):
        await handle.get_result()
    shown = await cli("dlq", "show", handle.id, "--url", server.url)
    assert shown.code == 0, shown.stderr
    entry = json.loads(shown.stdout)
    assert (entry["id"], entry["action"], entry["payload"]) == (handle.id, "job:run", {"order": 7})
    assert "dead on arrival" in json.dumps(entry)
    missing = await cli("dlq", "show", "no-such-task", "--url", server.url)
    assert "no-such-task" in missing.one_error_line()


async def test_a_bad_log_level_is_one_error_line() -> None:
    run = await cli("serve", "--port", "0", TASKHUB_LOG="loud")
    assert "TASKHUB_LOG='loud': use one of debug, info" in run.one_error_line()
