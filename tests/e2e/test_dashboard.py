"""The web dashboard against a real hub: its JSON routes and login cookie over plain HTTP, then
the page itself in Debian's chromium, driven by Playwright (scripts/ensure-chromium.sh installs
the browser; Playwright's own browser download is never used). Screenshots go to
test-artifacts/dashboard-*.png.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import taskhub
from taskhub import Client, Server
from taskhub.lifecycle import Credentials
from tests.conftest import ServerFactory, until
from tests.e2e.browser import ARTIFACTS, login

CREDS: list[dict[str, Any]] = [
    {"name": "ops", "key": "ops-key", "pub_permissions": ["admin"]},  # admin, nothing else
    {"name": "svc", "key": "svc-key", "sub_permissions": ["job"], "pub_permissions": ["job"]},
    {"name": "viewer", "key": "viewer-key", "sub_permissions": ["job"]},
]
ADMIN = {"Authorization": "Bearer ops:ops-key"}
SVC = {"Authorization": "Bearer svc:svc-key"}


def test_admin_rule() -> None:
    from taskhub.hub.dashboard import is_admin

    assert is_admin(Credentials("a", sub_permissions=(), pub_permissions=("admin",)))
    assert is_admin(Credentials("a", sub_permissions=("admin",), pub_permissions=()))
    assert is_admin(Credentials("a"))  # "*" (open access, or a credential with every right)
    assert not is_admin(Credentials("a", sub_permissions=("job",), pub_permissions=("job",)))
    assert not is_admin(Credentials("a", sub_permissions=("admins:x",), pub_permissions=()))


# --- plain HTTP ---------------------------------------------------------------------------
@pytest.fixture
async def hub_server(make_server: ServerFactory) -> Server:
    return await make_server(creds=CREDS, pickup_window=1.0)


@pytest.fixture
async def http(hub_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hub_server.http_url, timeout=10) as client:
        yield client


async def test_stats_needs_an_admin(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/dashboard/stats")).status_code == 401
    refused = await http.get("/v1/dashboard/stats", headers=SVC)
    assert refused.status_code == 403
    assert refused.json()["code"] == "forbidden"
    assert "'admin' permission" in refused.json()["message"]
    ok = await http.get("/v1/dashboard/stats", headers=ADMIN)
    assert ok.status_code == 200
    body = ok.json()
    assert body["counts"] == {
        "waiting": 0,
        "running": 0,
        "success": 0,
        "fail": 0,
        "end": 0,
        "chains": 0,
    }
    assert body["window"] == 60


async def test_stats_count_tasks_rates_queues_and_connections(
    hub_server: Server, http: httpx.AsyncClient
) -> None:
    async with Client(hub_server.url, name="svc", key="svc-key") as worker:
        release = asyncio.Event()

        @worker.sub("job:run", concurrency=3)
        async def run(task: Any) -> Any:
            await release.wait()
            return "done"

        await until(lambda: hub_server.hub is not None and hub_server.hub.lc.queues)
        created = await http.post("/v1/tasks", json={"action": "job:run"}, headers=SVC)
        task_id = created.json()["id"]

        async def running() -> Any:
            body = (await http.get("/v1/dashboard/stats", headers=ADMIN)).json()
            return body if body["counts"]["running"] == 1 else None

        body = await until(running)
        assert body["queues"] == [
            {
                "action": "job:run",
                "group": "svc",
                "durable": False,
                "workers": 1,
                "credit": 3,
                "inflight": 1,
                "waiting": 0,
                "in_flight": 1,
            }
        ]
        [conn] = body["connections"]
        assert conn["service"] == "svc" and conn["kind"] == "websocket"
        # the client's hello: this very process
        assert conn["host"] == socket.gethostname() and conn["pid"] == os.getpid()
        assert conn["client"] == "taskhub-python" and conn["version"] == taskhub.__version__
        assert conn["remote"] == "127.0.0.1" and conn["uptime"] >= 0
        assert conn["holding"] == 1 and conn["current"][0]["task"] == task_id
        assert conn["current"][0]["state"] == "started"
        assert conn["subscriptions"] == [
            {"action": "job:run", "group": "svc", "concurrency": 3, "inflight": 1, "observe": False}
        ]
        assert body["services"] == {"svc": 1}
        [again] = (await http.get("/v1/dashboard/connections", headers=ADMIN)).json()
        assert again["id"] == conn["id"] and again["subscriptions"] == conn["subscriptions"]

        release.set()

        async def succeeded() -> Any:
            body = (await http.get("/v1/dashboard/stats", headers=ADMIN)).json()
            return body if body["counts"]["success"] == 1 else None

        body = await until(succeeded)
        # one row per action, its groups inside it (no row repeating another)
        [rate] = body["rates"]
        assert rate["action"] == "job:run"
        assert (rate["published"], rate["started"], rate["succeeded"]) == (1, 1, 1)
        assert rate["groups"] == [{"group": "svc", "started": 1, "failed": 0}]
        [conn] = body["connections"]
        assert (conn["processed"], conn["succeeded"], conn["failed"]) == (1, 1, 0)

    rows = (await http.get("/v1/dashboard/tasks?state=success", headers=ADMIN)).json()["tasks"]
    assert [r["id"] for r in rows] == [task_id]
    assert rows[0]["groups"] == {"svc": "done"}
    detail = (await http.get(f"/v1/dashboard/tasks/{task_id}", headers=ADMIN)).json()
    assert detail["result"] == "done" and "payload" in detail


async def test_login_sets_a_signed_http_only_cookie(http: httpx.AsyncClient) -> None:
    wrong = await http.post("/v1/dashboard/login", json={"name": "ops", "key": "nope"})
    assert wrong.status_code == 401
    refused = await http.post("/v1/dashboard/login", json={"name": "viewer", "key": "viewer-key"})
    assert refused.status_code == 403
    assert "needs the 'admin' permission" in refused.json()["message"]
    assert "set-cookie" not in refused.headers

    ok = await http.post("/v1/dashboard/login", json={"name": "ops", "key": "ops-key"})
    assert ok.status_code == 200
    assert ok.json()["name"] == "ops" and ok.json()["open_access"] is False
    cookie = ok.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= attributes
    assert "samesite=strict" in cookie.lower()
    token = http.cookies["taskhub_session"]

    # the cookie alone now opens the dashboard's routes (httpx sends it back)
    assert (await http.get("/v1/dashboard/session")).json()["name"] == "ops"
    assert (await http.get("/v1/dashboard/stats")).status_code == 200
    # ... but not the task API, which stays Bearer only
    assert (await http.get("/v1/tasks")).status_code == 401
    # a change made with the cookie needs the page's header (no cross-site form can send it)
    csrf = await http.post("/v1/dashboard/dead-letters/x/requeue")
    assert csrf.status_code == 403 and "x-taskhub-dashboard" in csrf.json()["message"]
    with_header = await http.post(
        "/v1/dashboard/dead-letters/x/requeue", headers={"X-TaskHub-Dashboard": "1"}
    )
    assert with_header.status_code == 404

    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    http.cookies.clear()
    http.cookies.set("taskhub_session", forged)
    bad = await http.get("/v1/dashboard/stats")
    assert bad.status_code == 401 and "log in" in bad.json()["message"]

    out = await http.post("/v1/dashboard/logout")
    assert out.status_code == 204 and "max-age=0" in out.headers["set-cookie"].lower()


async def test_sessions_expire() -> None:
    from taskhub.hub.dashboard import Sessions

    now = [1000.0]
    sessions = Sessions(ttl=60, clock=lambda: now[0])
    token = sessions.issue(Credentials("ops"))
    creds = sessions.check(token)
    assert creds is not None and creds.name == "ops"
    assert sessions.check(token + "x") is None
    now[0] += 61
    assert sessions.check(token) is None


async def test_open_access_needs_no_login(make_server: ServerFactory) -> None:
    server = await make_server()
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/v1/dashboard/stats")).status_code == 200
        login = await http.post("/v1/dashboard/login", json={"name": "x", "key": ""})
        assert login.json()["open_access"] is True


async def test_page_and_openapi_are_served(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script type="module" src="/static/js/app.js">' in page.text
    script = await http.get("/static/js/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    paths = (await http.get("/openapi.json")).json()["paths"]
    for path in (
        "/v1/dashboard/stats",
        "/v1/dashboard/connections",
        "/v1/dashboard/login",
        "/v1/dashboard/series",
        "/v1/dashboard/tasks/{task_id}/cancel",
        "/v1/dashboard/tasks/{task_id}/retry",
        "/v1/dashboard/queues/{action}/{group}/purge",
    ):
        assert path in paths
    vendored = await http.get("/static/vendor/uplot/uPlot.iife.min.js")  # no CDN
    assert vendored.status_code == 200 and "uPlot" in vendored.text[:200]
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert "/" not in paths


# --- in the browser (fixtures in tests/e2e/conftest.py) ---------------------------------
@pytest.mark.timeout(60)
async def test_a_published_task_appears_completes_and_has_a_timeline(
    hub_server: Server, page: Any
) -> None:
    from playwright.async_api import expect

    await login(page, hub_server, "ops", "ops-key")
    await expect(page.locator("h1")).to_have_text("Overview")

    release = asyncio.Event()
    async with Client(hub_server.url, name="svc", key="svc-key") as svc:

        @svc.sub("job:run", concurrency=2)
        async def run(task: Any) -> Any:
            await task.update({"step": "halfway"})
            await release.wait()
            return {"rows": 42}

        handle = svc.pub("job:run", {"file": "report.csv"})
        task_id = await handle.accepted()

        row = page.locator(f'#recent tr[data-task="{task_id}"]')
        await expect(row).to_have_attribute("data-state", "start")
        await expect(page.locator("#count-running .n")).to_have_text("1")
        queue = page.locator('#queues tr[data-queue="job:run svc"]')
        await expect(queue).to_contain_text("1 / 2")
        await expect(page.locator("main")).not_to_contain_text("[object")  # a node as text
        await page.screenshot(path=ARTIFACTS / "dashboard-overview.png", full_page=True)

        release.set()
        assert await handle.get_result(timeout=10) == {"rows": 42}
        await expect(row).to_have_attribute("data-state", "success")
        await expect(page.locator("#count-success .n")).to_have_text("1")

        await page.click("nav a[data-view=tasks]")
        await page.select_option("select[name=state]", "success")
        listed = page.locator(f'#task-list tr[data-task="{task_id}"]')
        await expect(listed).to_have_attribute("data-state", "success")
        await page.screenshot(path=ARTIFACTS / "dashboard-tasks.png", full_page=True)

        await listed.locator("a").click()
        timeline = page.locator("#timeline li")
        await expect(page.locator('#timeline li[data-type="success"]')).to_be_visible()
        types = await timeline.evaluate_all("items => items.map(li => li.dataset.type)")
        assert types[0] == "init" and types[-1] == "success", types
        assert "update" in types and ("start" in types or "pickup" in types), types
        await expect(page.locator("#updates")).to_contain_text("halfway")
        await expect(page.locator("#task-state")).to_have_text("success")
        await expect(page.get_by_text('"file": "report.csv"')).to_be_visible()
        await expect(page.get_by_text('"rows": 42')).to_be_visible()
        await page.screenshot(path=ARTIFACTS / "dashboard-task.png", full_page=True)


@pytest.mark.timeout(60)
async def test_a_dead_letter_is_requeued_from_the_page(hub_server: Server, page: Any) -> None:
    from playwright.async_api import expect

    calls = 0
    async with Client(hub_server.url, name="svc", key="svc-key") as svc:

        @svc.sub("job:import")
        async def flaky(task: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("bad row 7")
            return "imported"

        handle = svc.pub("job:import", {"rows": 7})
        dead_id = await handle.accepted()
        assert await handle.get_result(default="failed", timeout=10) == "failed"

        await login(page, hub_server, "ops", "ops-key")
        await page.click("nav a[data-view=dead-letters]")
        row = page.locator(f'#dead-list tr[data-task="{dead_id}"]')
        await expect(row).to_contain_text("bad row 7")
        await page.screenshot(path=ARTIFACTS / "dashboard-dead-letters.png", full_page=True)
        await row.get_by_role("button", name="Re-queue").click()
        await page.click("#confirm-ok")  # every change is confirmed first

        note = page.locator("#requeued")
        await expect(note).to_contain_text(f"Re-queued {dead_id} as")
        await expect(row).to_have_count(0)
        new_id = await note.locator("a").inner_text()
        assert new_id != dead_id
        await note.locator("a").click()
        await expect(page.locator("#task-state")).to_have_text("success")
        assert hub_server.hub is not None
        rec = await hub_server.hub.find(new_id)
        assert rec is not None and rec.options["requeued_from"] == dead_id
        assert rec.publisher == "ops"


@pytest.mark.timeout(60)
async def test_a_non_admin_is_refused_with_a_clear_message(hub_server: Server, page: Any) -> None:
    from playwright.async_api import expect

    await login(page, hub_server, "viewer", "viewer-key")
    error = page.locator("#login-error")
    await expect(error).to_contain_text("'viewer' may not use the dashboard")
    await expect(error).to_contain_text("'admin' permission")
    await page.screenshot(path=ARTIFACTS / "dashboard-refused.png")

    await page.fill("#login input[name=name]", "ops")
    await page.fill("#login input[name=key]", "wrong")
    await page.click("#login button[type=submit]")
    await expect(error).to_have_text("Wrong name or key.")
    await expect(page.locator("nav")).to_be_hidden()
