"""/docs (Swagger UI) and /redoc (ReDoc) work without internet: their scripts and styles are
served by the hub itself, and in chromium, with every request off this machine refused, both
pages render the API."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskhub import Server
from tests.conftest import ServerFactory
from tests.e2e.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

# Every URL a page names: attributes, and the strings Swagger UI's and ReDoc's set-up code pass.
URL = re.compile(
    r"""(?:src|href)=["']([^"']+)["']|url:\s*['"]([^'"]+)['"]|Redoc\.init\(['"]([^'"]+)"""
)


@pytest.fixture
async def hub(make_server: ServerFactory) -> Server:
    return await make_server()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_page_names_only_assets_the_hub_serves(hub: Server, page: str) -> None:
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        html = (await http.get(page)).text
        assert "http://" not in html and "https://" not in html and "//" + "cdn" not in html
        urls = [next(u for u in m.groups() if u) for m in URL.finditer(html)]
        assets = [u for u in urls if u != "/openapi.json"]
        assert assets, html
        sizes = {}
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), url
            answer = await http.get(url)
            assert answer.status_code == 200, url
            sizes[url] = len(answer.content)
        scripts = [u for u in assets if u.endswith(".js")]
        assert scripts and all(sizes[u] > 100_000 for u in scripts), sizes  # the real bundles


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: run scripts/ensure-chromium.sh (make test does)"
        if os.environ.get("CI"):  # CI runs `make test`, which installs it: missing is a bug
            pytest.fail(message)
        pytest.skip(message)
    ARTIFACTS.mkdir(exist_ok=True)
    return CHROMIUM


@pytest.fixture
async def offline_page(chromium: str) -> AsyncIterator[tuple[Any, list[str]]]:
    from playwright.async_api import async_playwright

    refused: list[str] = []

    async def only_loopback(route: Any) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1:", "data:", "blob:")):
            await route.continue_()
        else:
            refused.append(url)
            await route.abort()

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = await browser.new_page()
        await page.route("**/*", only_loopback)
        yield page, refused
        await browser.close()


@pytest.mark.timeout(60)
async def test_swagger_ui_and_redoc_render_offline(
    hub: Server, offline_page: tuple[Any, list[str]]
) -> None:
    from playwright.async_api import expect

    page, refused = offline_page
    await page.goto(f"{hub.http_url}/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("TaskHub")
    await expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    await page.screenshot(path=str(ARTIFACTS / "docs-swagger.png"))
    await page.goto(f"{hub.http_url}/redoc")
    await expect(page.locator("h1").first).to_contain_text("TaskHub")
    await page.screenshot(path=str(ARTIFACTS / "docs-redoc.png"))
    # ReDoc's bundle draws its own "API docs by Redocly" logo from its CDN; with the request
    # refused the page lacks that logo and nothing else.
    assert all(url == "https://cdn.redoc.ly/redoc/logo-mini.svg" for url in refused), refused
