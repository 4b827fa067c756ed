"""What a hub with credentials tells callers who have none (issue 15, item 9): /metrics needs
a credential, /healthz tells only status and role, and a dashboard logout ends the session."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from taskhub import Server
from tests.conftest import ServerFactory

CREDS: list[dict[str, Any]] = [
    {"name": "ops", "key": "ops-key", "sub_permissions": ["admin"]},
    {"name": "prometheus", "key": "scrape-key"},  # no permissions: it only reads /metrics
]


@pytest.fixture
async def secured(make_server: ServerFactory) -> Server:
    return await make_server(creds=CREDS, store="memory://")


async def test_metrics_need_a_credential_when_credentials_are_configured(
    secured: Server,
) -> None:
    async with httpx.AsyncClient(base_url=secured.http_url) as http:
        anonymous = await http.get("/metrics")
        assert anonymous.status_code == 401
        assert "taskhub_" not in anonymous.text
        assert anonymous.json()["code"] == "auth_failed"
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer prometheus:nope"})
        assert wrong.status_code == 401
        ok = await http.get("/metrics", headers={"Authorization": "Bearer prometheus:scrape-key"})
        assert ok.status_code == 200 and "taskhub_connections" in ok.text


async def test_metrics_of_an_open_access_hub_need_none(make_server: ServerFactory) -> None:
    server = await make_server()
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/metrics")).status_code == 200


async def test_healthz_tells_status_and_role_only(secured: Server) -> None:
    async with httpx.AsyncClient(base_url=secured.http_url) as http:
        r = await http.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "role": "standalone"}  # no store URL, no paths


async def test_logout_ends_the_session(secured: Server) -> None:
    async with httpx.AsyncClient(base_url=secured.http_url) as http:
        login = await http.post("/v1/dashboard/login", json={"name": "ops", "key": "ops-key"})
        assert login.status_code == 200
        token = http.cookies["taskhub_session"]
        assert (await http.get("/v1/dashboard/session")).status_code == 200
        out = await http.post("/v1/dashboard/logout")
        assert out.status_code == 204
        # A copy of the cookie kept from before (a stolen one, or another tab) is dead too.
        http.cookies.clear()
        http.cookies.set("taskhub_session", token)
        after = await http.get("/v1/dashboard/session")
        assert after.status_code == 401 and "log in" in after.json()["message"]
        # Logging in again gives a new session that works.
        again = await http.post("/v1/dashboard/login", json={"name": "ops", "key": "ops-key"})
        assert again.status_code == 200
        assert (await http.get("/v1/dashboard/session")).status_code == 200
