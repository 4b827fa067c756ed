"""The dashboard of one hub shows the whole deployment (docs/dashboard.md, "Several hubs"): two
real hubs that split the partitions by their leases over one SQLite file, the page served by
one of them in Debian's chromium (Playwright), a worker on one hub working a partition the
other leads, and a dead letter kept by the other hub re-queued from the page."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskhub import Client, Server
from taskhub.partitions import partition_of
from tests.conftest import until
from tests.e2e.browser import ARTIFACTS, login

P = 4
CREDS: list[dict[str, Any]] = [
    {"name": "ops", "key": "ops-key", "pub_permissions": ["admin"]},
    {"name": "svc", "key": "svc-key", "sub_permissions": ["job"], "pub_permissions": ["job"]},
]
ADMIN = {"Authorization": "Bearer ops:ops-key"}


def action_in(partition: int) -> str:
    i = 0
    while partition_of(f"job:n{i}", "", P) != partition:
        i += 1
    return f"job:n{i}"


@pytest.fixture
async def two_hubs(tmp_path: Path) -> AsyncIterator[tuple[Server, Server]]:
    made: list[Server] = []
    for name in ("hub-a", "hub-b"):
        server = Server(
            store=f"sqlite:///{tmp_path / 'hub.db'}",
            port=0,
            partitions=P,
            lease=4.0,
            name=name,
            pickup_window=1.0,
        )
        for c in CREDS:
            server.add_credentials(**c)
        await server.start()
        made.append(server)
    try:
        yield made[0], made[1]
    finally:
        for server in reversed(made):
            await server.stop()


async def _shared(a: Server, b: Server) -> tuple[list[int], list[int]] | None:
    """The partitions each leads once they split them and each names the other's leader."""
    async with httpx.AsyncClient() as http:
        ha = (await http.get(f"{a.http_url}/healthz")).json()
        hb = (await http.get(f"{b.http_url}/healthz")).json()
    split = sorted(ha["partitions"] + hb["partitions"]) == list(range(P))
    named = all(ha["leaders"].values()) and all(hb["leaders"].values())
    both = ha["partitions"] and hb["partitions"]
    return (ha["partitions"], hb["partitions"]) if split and named and both else None


@pytest.mark.timeout(90)
async def test_the_page_on_one_hub_shows_and_acts_on_the_others_partitions(
    two_hubs: tuple[Server, Server], page: Any
) -> None:
    from playwright.async_api import expect

    a, b = two_hubs
    led_a, _ = await until(lambda: _shared(a, b), timeout=30, step=0.1)
    far = action_in(led_a[0])  # led by hub a; the page is hub b's
    release = asyncio.Event()
    calls: dict[str, int] = {}

    async def work(task: Any) -> Any:
        payload = await task.get_payload()
        if payload == "flaky":
            calls["flaky"] = calls.get("flaky", 0) + 1
            if calls["flaky"] == 1:
                raise ValueError("bad row 7")
            return "imported"
        await release.wait()
        return "done"

    async with (
        Client(b.url, name="svc", key="svc-key", connect_timeout=5) as worker,
        Client(b.url, name="svc", key="svc-key", connect_timeout=5) as publisher,
    ):
        await worker.sub(far, work, concurrency=2)
        dead = publisher.pub(far, "flaky")
        dead_id = await dead.accepted()
        assert await dead.get_result(default="failed", timeout=10) == "failed"
        running = publisher.pub(far, "slow")
        await running.accepted()

        await login(page, b, "ops", "ops-key")
        await expect(page.locator("h1")).to_have_text("Overview")
        await expect(page.locator("main")).to_contain_text("with “hub-a”")
        await expect(page.locator("#count-running .n")).to_have_text("1")
        await expect(page.locator(f'#queues tr[data-queue="{far} svc"]')).to_contain_text("1 / 2")
        await expect(page.locator(f'#recent tr[data-task="{running.id}"]')).to_have_count(1)
        await page.screenshot(path=ARTIFACTS / "dashboard-hubs-overview.png", full_page=True)

        await page.click("nav a[data-view=workers]")
        row = page.locator("#worker-list tr[data-service=svc]").filter(has_text=far)
        await expect(row).to_contain_text(f"{far} [svc] 1 / 2")
        await expect(row).to_contain_text("on hub hub-b")
        await expect(row).to_contain_text("running")

        await page.click("nav a[data-view=dead-letters]")
        letter = page.locator(f'#dead-list tr[data-task="{dead_id}"]')
        await expect(letter).to_contain_text("bad row 7")
        await letter.get_by_role("button", name="Re-queue").click()
        await page.click("#confirm-ok")
        note = page.locator("#requeued")
        await expect(note).to_contain_text(f"Re-queued {dead_id} as")
        await expect(letter).to_have_count(0)
        copy = await note.locator("a").inner_text()
        await note.locator("a").click()
        await expect(page.locator("#task-state")).to_have_text("success")
        assert a.hub is not None
        rec = await a.hub.find(copy)  # kept by hub a, which leads its partition
        assert rec is not None and rec.options["requeued_from"] == dead_id
        release.set()
        assert await running.get_result(timeout=10) == "done"
