"""Operating a fleet from the dashboard, in Debian's chromium with live tasks flowing: the
charts, the workers, the actions (each confirmed), the search, a task's tries and progress,
and chains. Screenshots go to test-artifacts/dashboard-*.png."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from taskhub import Client, Server
from tests.conftest import ServerFactory, until
from tests.e2e.browser import ARTIFACTS, login

CREDS: list[dict[str, Any]] = [
    {"name": "ops", "key": "ops-key", "pub_permissions": ["admin"]},
    {"name": "svc", "key": "svc-key", "sub_permissions": ["job"], "pub_permissions": ["job"]},
]


@pytest.fixture
async def hub_server(make_server: ServerFactory) -> Server:
    return await make_server(creds=CREDS, pickup_window=1.0)


@pytest.fixture
async def svc(hub_server: Server) -> AsyncIterator[Client]:
    async with Client(hub_server.url, name="svc", key="svc-key") as client:
        yield client


async def _flowing(svc: Client, action: str, every: float = 0.02) -> None:
    """Publish a task every `every` seconds until cancelled: live traffic for the page."""
    i = 0
    while True:
        svc.pub(action, {"i": i})
        i += 1
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def flowing(svc: Client, action: str) -> AsyncIterator[None]:
    task = asyncio.create_task(_flowing(svc, action))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.timeout(90)
async def test_charts_and_workers_with_live_tasks(
    hub_server: Server, svc: Client, page: Any
) -> None:
    from playwright.async_api import expect

    @svc.sub("job:run", concurrency=4)
    async def run(task: Any) -> Any:
        await task.update({"done": 1, "total": 2})
        await asyncio.sleep(0.005)
        return "ok"

    async with flowing(svc, "job:run"):
        await login(page, hub_server, "ops", "ops-key")
        await expect(page.locator("h1")).to_have_text("Overview")
        # the charts draw what the hub counted: tasks per second and run/wait percentiles
        await page.wait_for_function(
            "() => +document.querySelector('#chart-rates')?.dataset.succeeded > 5"
            " && +document.querySelector('#chart-times')?.dataset.points > 0",
            timeout=20000,
        )
        await expect(page.locator("#chart-rates canvas")).to_have_count(1)
        await expect(page.locator("#chart-times canvas")).to_have_count(1)
        await expect(page.locator('#rates tr[data-action="job:run"]')).to_be_visible()
        await page.screenshot(path=ARTIFACTS / "dashboard-charts.png", full_page=True)

        # a longer span: one point a minute
        await page.select_option("#span", "1h")
        await page.wait_for_function(
            "() => +document.querySelector('#chart-rates')?.dataset.published > 0"
        )

        await page.click("nav a[data-view=workers]")
        row = page.locator('#worker-list tr[data-service="svc"]')
        await expect(row).to_contain_text(socket.gethostname())
        await expect(row).to_contain_text(f"pid {os.getpid()}")
        await expect(row).to_contain_text("taskhub-python")
        await expect(row).to_contain_text("job:run [svc]")
        await expect(row.locator("td").nth(5)).not_to_have_text("0")  # processed
        await page.screenshot(path=ARTIFACTS / "dashboard-workers.png", full_page=True)


@pytest.mark.timeout(90)
async def test_cancel_retry_and_purge_from_the_page(
    hub_server: Server, svc: Client, page: Any
) -> None:
    from playwright.async_api import expect

    started = asyncio.Event()
    runs = 0

    @svc.sub("job:hang")
    async def hang(task: Any) -> Any:
        started.set()
        await asyncio.sleep(3600)

    @svc.sub("job:flaky")
    async def flaky(task: Any) -> Any:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise ValueError("the first run fails")
        return "second run ok"

    await login(page, hub_server, "ops", "ops-key")
    await expect(page.locator("h1")).to_have_text("Overview")

    # cancel a running task: asked first, and "Keep it" keeps it
    running = await svc.pub("job:hang", {"n": 1}).accepted()
    await started.wait()
    await page.goto(f"{hub_server.http_url}/#/task/{running}")
    await expect(page.locator("#task-state")).to_have_text("running")
    await page.click("#cancel")
    await expect(page.locator("#confirm")).to_contain_text(f"Cancel job:hang {running}?")
    await page.click("#confirm-cancel")
    await expect(page.locator("#confirm")).to_have_count(0)
    assert hub_server.hub is not None and hub_server.hub.lc.get(running) is not None
    await page.click("#cancel")
    await page.click("#confirm-ok")
    await expect(page.locator("#task-state")).to_have_text("failed")
    await expect(page.locator("#outcome")).to_contain_text("cancelled by ops")
    await expect(page.locator('#timeline li[data-type="fail"]')).to_be_visible()
    await page.screenshot(path=ARTIFACTS / "dashboard-cancelled.png", full_page=True)

    # retry a failed task: a fresh copy, which succeeds
    failed = svc.pub("job:flaky", {"rows": 2})
    failed_id = await failed.accepted()
    assert await failed.get_result(default="failed", timeout=10) == "failed"
    await page.goto(f"{hub_server.http_url}/#/task/{failed_id}")
    await expect(page.locator("#task-state")).to_have_text("failed")
    await page.click("#retry")
    await page.click("#confirm-ok")
    note = page.locator("#retried")
    await expect(note).to_contain_text("Published again as")
    await note.locator("a").click()
    await expect(page.locator("#task-state")).to_have_text("success")
    await expect(page.locator("#outcome")).to_contain_text("second run ok")

    # purge a queue: the waiting tasks fail (purged), the running one is left alone
    started.clear()
    await svc.pub("job:hang", None).accepted()
    await started.wait()
    waiting = [await svc.pub("job:hang", {"i": i}).accepted() for i in range(2)]
    await page.click("nav a[data-view=overview]")
    queue = page.locator('#queues tr[data-queue="job:hang svc"]')
    await expect(queue.locator("td").nth(5)).to_have_text("2")
    await queue.get_by_role("button", name="Purge").click()
    await expect(page.locator("#confirm")).to_contain_text("The 2 waiting deliveries")
    await page.screenshot(path=ARTIFACTS / "dashboard-purge-confirm.png")
    await page.click("#confirm-ok")
    await expect(page.locator("#purged")).to_contain_text("Purged 2 waiting deliveries")
    await expect(queue.locator("td").nth(5)).to_have_text("0")
    for task_id in waiting:
        rec = await hub_server.hub.find(task_id)
        assert rec is not None and rec.state == "fail" and rec.error is not None
        assert rec.error["reason"] == "purged"


@pytest.mark.timeout(90)
async def test_search_finds_a_task_by_its_error_text(
    hub_server: Server, svc: Client, page: Any
) -> None:
    from playwright.async_api import expect

    @svc.sub("job:import", concurrency=4)
    async def imp(task: Any) -> Any:
        payload = await task.get_payload()
        raise OSError(payload["why"])

    whys = ["disk full on /var", "permission denied", "connection reset"]
    handles = [svc.pub("job:import", {"why": why}) for why in whys]
    ids = [await h.accepted() for h in handles]
    for h in handles:
        assert await h.get_result(default="failed", timeout=10) == "failed"

    await login(page, hub_server, "ops", "ops-key")
    await page.click("nav a[data-view=tasks]")
    await page.fill("#search input[name=error]", "DISK FULL")
    await page.click("#search button[type=submit]")
    rows = page.locator("#task-list tbody tr[data-task]")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-task", ids[0])
    await expect(rows.first).to_contain_text("OSError: disk full on /var")
    await expect(page.locator("#list-mode")).to_contain_text("Search of the stored tasks")
    await page.screenshot(path=ARTIFACTS / "dashboard-search.png", full_page=True)
    assert "error=DISK+FULL" in page.url  # a search can be linked to

    # by publisher and state too; "Clear" goes back to the live list
    await page.fill("#search input[name=error]", "")
    await page.fill("#search input[name=publisher]", "svc")
    await page.select_option("#search select[name=state]", "fail")
    await expect(rows).to_have_count(3)
    # and by the time they were created (the browser's local time)
    hour_ago = (datetime.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    await page.fill("#search input[name=until]", hour_ago)
    await page.click("#search button[type=submit]")
    await expect(rows).to_have_count(0)
    await page.fill("#search input[name=until]", "")
    await page.fill("#search input[name=since]", hour_ago)
    await page.click("#search button[type=submit]")
    await expect(rows).to_have_count(3)
    await page.click("#search button[type=button]")
    await expect(page.locator("#list-mode")).to_contain_text("Live and recently ended")


@pytest.mark.timeout(90)
async def test_a_task_page_shows_its_retries_and_its_progress(
    hub_server: Server, svc: Client, page: Any
) -> None:
    from playwright.async_api import expect

    release = asyncio.Event()
    runs = 0

    @svc.sub("job:convert")
    async def convert(task: Any) -> Any:
        nonlocal runs
        runs += 1
        await task.update({"done": runs, "total": 4})
        if runs < 3:
            raise ValueError(f"bad try {runs}")
        await release.wait()
        return "converted"

    handle = svc.pub("job:convert", {"file": "a.mov"}, retries=2, backoff=0.05)
    task_id = await handle.accepted()
    await until(lambda: runs == 3, timeout=10)

    await login(page, hub_server, "ops", "ops-key")
    await page.goto(f"{hub_server.http_url}/#/task/{task_id}")
    await expect(page.locator("#progress")).to_contain_text("3 / 4 (75 %)")
    retries = page.locator('#timeline li[data-type="retry"]')
    await expect(retries).to_have_count(2)  # the CLI's events, retries included
    await expect(retries.first).to_contain_text("try 1 failed (ValueError: bad try 1)")
    tries = page.locator("#tries .try")
    await expect(tries).to_have_count(2)
    await expect(tries.nth(0)).to_contain_text("ValueError: bad try 1")
    await expect(tries.nth(1)).to_contain_text("ValueError: bad try 2")
    await page.screenshot(path=ARTIFACTS / "dashboard-task-retries.png", full_page=True)

    release.set()
    assert await handle.get_result(timeout=10) == "converted"
    await expect(page.locator("#task-state")).to_have_text("success")
    types = await page.locator("#timeline li").evaluate_all(
        "items => items.map(li => li.dataset.type)"
    )
    assert types.count("retry") == 2 and types[-1] == "success", types


@pytest.mark.timeout(90)
async def test_a_chain_is_shown_as_a_chain(hub_server: Server, svc: Client, page: Any) -> None:
    from playwright.async_api import expect

    @svc.sub("job:add")
    async def add(task: Any) -> Any:
        return (await task.get_payload()) + 1

    chain = svc.chain([("job:add", 1), ("job:add", None), ("job:add", None)])
    chain_id = await chain.accepted()
    assert await chain.get_result(timeout=10) == 4

    await login(page, hub_server, "ops", "ops-key")
    await page.click("nav a[data-view=tasks]")
    listed = page.locator("#task-list tbody tr[data-task]")
    await expect(listed).to_have_count(3)  # the steps, as the tasks they are
    await expect(page.locator(f'#task-list tr[data-task="{chain_id}"]')).to_have_count(0)
    await expect(listed.first).to_contain_text("step 2")

    await page.click("nav a[data-view=chains]")
    row = page.locator(f'#task-list tr[data-task="{chain_id}"]')
    await expect(row).to_contain_text("chain")
    await row.locator("a").first.click()
    await expect(page.locator("h1")).to_contain_text("Chain")
    steps = page.locator("#chain-steps tbody tr[data-step]")
    await expect(steps).to_have_count(3)
    for i in range(3):
        await expect(steps.nth(i)).to_contain_text("success")
    await expect(page.locator("#task-action")).to_contain_text("chain of 3 steps")
    await page.screenshot(path=ARTIFACTS / "dashboard-chain.png", full_page=True)

    # a step links back to its chain
    await steps.nth(1).locator("a").click()
    await expect(page.locator("#task-chain")).to_contain_text(f"step 1 of {chain_id}")


@pytest.mark.timeout(90)
async def test_a_task_page_shows_the_traceback_of_every_try(
    hub_server: Server, svc: Client, page: Any
) -> None:
    from playwright.async_api import expect

    @svc.sub("job:parse")
    async def parse_rows(task: Any) -> Any:
        raise ValueError("bad line 3")

    handle = svc.pub("job:parse", {"file": "x.csv"}, retries=1, backoff=0.05)
    task_id = await handle.accepted()
    assert await handle.get_result(default="failed", timeout=10) == "failed"

    await login(page, hub_server, "ops", "ops-key")
    await page.goto(f"{hub_server.http_url}/#/task/{task_id}")
    await expect(page.locator("#task-state")).to_have_text("failed")
    tries = page.locator("#tries .try")
    await expect(tries).to_have_count(2)  # retried once, then failed for good
    for i in range(2):
        traceback = tries.nth(i).locator("pre.traceback")
        await expect(traceback).to_contain_text("in parse_rows")
        await expect(traceback).to_contain_text('raise ValueError("bad line 3")')
    final = page.locator("#task-error pre.traceback")
    await expect(final).to_contain_text("in parse_rows")
    await page.screenshot(path=ARTIFACTS / "dashboard-traceback.png", full_page=True)

    # the search looks into tracebacks too
    await page.click("nav a[data-view=tasks]")
    await page.fill("#search input[name=error]", "in parse_rows")
    await page.click("#search button[type=submit]")
    rows = page.locator("#task-list tbody tr[data-task]")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-task", task_id)
