"""What the dashboard's browser tests share: Debian's chromium driven by Playwright (never
Playwright's own browser download), the screenshot folder, and the login steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taskhub import Server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


async def login(page: Any, server: Server, name: str, key: str) -> None:
    await page.goto(f"{server.http_url}/")
    await page.fill("#login input[name=name]", name)
    await page.fill("#login input[name=key]", key)
    await page.click("#login button[type=submit]")
