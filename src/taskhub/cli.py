"""The ``taskhub`` command line: run a hub, publish a task."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from taskhub.errors import TaskHubError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="TaskHub: send it tasks, watch them as they happen.",
)
err = Console(stderr=True)
out = Console()


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def _setup_logging() -> None:
    level = os.environ.get("TASKHUB_LOG", "info").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [8080]")] = None,
    store: Annotated[
        str | None, typer.Option(help="memory://, sqlite:///path.db [sqlite:///taskhub.db]")
    ] = None,
    config: Annotated[str | None, typer.Option(help="TOML config file")] = None,
) -> None:
    """Run a hub (WebSocket and HTTP on one port)."""
    from taskhub import config as cfg
    from taskhub.runtime import run

    _setup_logging()
    try:
        server = cfg.load(
            config or os.environ.get("TASKHUB_CONFIG"), host=host, port=port, store=store
        )
    except (TaskHubError, ValueError) as exc:
        _fail(str(exc))
        return
    try:
        run(server.serve_forever())
    except (TaskHubError, ValueError, OSError) as exc:
        _fail(str(exc))


@app.command()
def pub(
    action: Annotated[str, typer.Argument(help="e.g. email/bulk:send")],
    payload: Annotated[str, typer.Argument(help="JSON payload")] = "null",
    url: Annotated[str, typer.Option(envvar="TASKHUB_URL")] = "ws://127.0.0.1:8080",
    name: Annotated[str, typer.Option(envvar="TASKHUB_NAME")] = "cli",
    key: Annotated[str, typer.Option(envvar="TASKHUB_KEY")] = "",
    wait: Annotated[bool, typer.Option("--wait", help="Print updates, then the result")] = False,
    timeout: Annotated[float | None, typer.Option(help="End timeout, seconds")] = None,
) -> None:
    """Publish a task; print its id, or with --wait its updates and result."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        _fail(f"payload is not valid JSON: {exc}")
    from taskhub.runtime import run

    try:
        code = run(_pub(url, name, key, action, data, wait, timeout))
    except TaskHubError as exc:
        _fail(str(exc))
        return
    raise typer.Exit(code)


async def _pub(
    url: str, name: str, key: str, action: str, payload: Any, wait: bool, timeout: float | None
) -> int:
    from taskhub import Client

    async with Client(url, name=name, key=key, connect_timeout=5) as client:
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        handle = client.pub(action, payload, **kwargs)
        task_id = await handle.accepted()
        if not wait:
            print(task_id, flush=True)
            return 0
        err.print(f"task {task_id} published", highlight=False)
        handle.on(
            "update", lambda h: err.print(f"update: {json.dumps(h.last_update)}", highlight=False)
        )
        try:
            result = await handle.get_result()
        except TaskHubError as exc:
            err.print(f"[red]{type(exc).__name__}:[/red] {exc}", highlight=False)
            return 2
        sys.stdout.write(json.dumps(result) + "\n")
        return 0


def main() -> None:
    app()
