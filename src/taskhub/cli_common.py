"""What every ``taskhub`` command shares: consoles, connection options, one-line errors, and
a small HTTP helper for the ``/v1`` API."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.console import Console
from rich.text import Text

# No console markup: what is printed holds the hub's data (actions, error messages, config
# keys such as "[server]"), which rich would otherwise read as style tags and drop. Colour is
# given as Text styles instead.
err = Console(stderr=True, markup=False)
# Piped output is for scripts and grep: do not wrap tables at 80 columns there.
out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 240, markup=False)

WS_DEFAULT = "ws://127.0.0.1:8080"
Url = Annotated[str, typer.Option("--url", envvar="TASKHUB_URL", help="Hub URL (ws:// or http://)")]
Name = Annotated[str, typer.Option("--name", envvar="TASKHUB_NAME", help="Credential name")]
Key = Annotated[str, typer.Option("--key", envvar="TASKHUB_KEY", help="Credential key")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


class CliError(Exception):
    """An error the CLI reports as one ``error: ...`` line (exit status 1)."""


def one_line(message: str) -> str:
    return " ".join(str(message).split()) or "unknown error"


def print_error(message: str) -> None:
    """One ``error: ...`` line on stderr."""
    err.print(Text.assemble(("error:", "red"), " ", one_line(message)), soft_wrap=True)


def fail(message: str) -> NoReturn:
    print_error(message)
    raise typer.Exit(1)


def parse_json(text: str, what: str = "payload") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}") from None


def when(at: Any) -> str:
    if at is None:
        return "-"
    return dt.datetime.fromtimestamp(float(at)).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def span(seconds: float | None) -> str:
    """A short human duration: 850ms, 12.3s, 4m05s, 2h10m, 3d4h."""
    if seconds is None:
        return "-"
    s = max(0.0, float(seconds))
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d{int(s % 86400 // 3600)}h"


def duration(task: dict[str, Any], now: float | None = None) -> float | None:
    """How long the task ran: start to end, or start to now while it runs."""
    start = task.get("started_at")
    if start is None:
        return None
    end = task.get("ended_at")
    return float(end if end is not None else (now or time.time())) - float(start)


def http_base(url: str) -> str:
    """``ws://host:port[/v1/ws]`` -> ``http://host:port`` (and ``wss`` -> ``https``)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https"):
        raise CliError(f"--url {url!r}: expected ws://, wss://, http:// or https://")
    if not parts.netloc:
        raise CliError(f"--url {url!r} has no host")
    return urlunsplit((scheme, parts.netloc, "", "", ""))


class Http:
    """The hub's ``/v1`` HTTP API with ``Bearer name:key``; errors become :class:`CliError`."""

    def __init__(self, url: str, name: str, key: str, *, timeout: float = 10.0) -> None:
        import httpx

        self.base = http_base(url)
        self._client = httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {name}:{key}"},
            timeout=timeout,
        )

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._client.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, f"/v1{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"could not reach {self.base}: {exc or type(exc).__name__}") from None
        if response.status_code >= 400:
            raise CliError(_http_error(response))
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"{method} {path}: the answer is not JSON (is {self.base} a TaskHub hub?)"
            ) from None

    def sse(self, path: str, *, idle: float) -> Iterator[dict[str, Any]]:
        """The ``data`` of each Server-Sent Event of ``path``; stops at the end of the stream
        or after ``idle`` seconds without one (a running task's stream stays open)."""
        import httpx

        timeout = httpx.Timeout(10.0, read=idle)
        try:
            with self._client.stream("GET", f"/v1{path}", timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise CliError(_http_error(response))
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        yield json.loads(line[5:].strip())
        except httpx.ReadTimeout:
            return
        except httpx.HTTPError as exc:
            raise CliError(f"could not reach {self.base}: {exc or type(exc).__name__}") from None


def _http_error(response: Any) -> str:
    try:
        body = response.json()
        message = str(body.get("message") or body)
        code = body.get("code")
    except (ValueError, AttributeError):
        message, code = response.text[:200] or response.reason_phrase, None
    return f"{message} ({code or response.status_code})"


def ws_call(url: str, name: str, key: str, fn: Any) -> Any:
    """Connect with the WebSocket client and return ``await fn(client)``."""
    from taskhub import Client
    from taskhub.runtime import run

    async def go() -> Any:
        async with Client(url, name=name, key=key, connect_timeout=5) as client:
            return await fn(client)

    return run(go())
