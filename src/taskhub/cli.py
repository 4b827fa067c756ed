"""The ``taskhub`` command line: run a hub, publish a task, watch task events."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from taskhub.errors import TaskHubError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="TaskHub: send it tasks, watch them as they happen.",
)
err = Console(stderr=True)
out = Console()


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)  # one line
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


@app.command()
def watch(
    pattern: Annotated[str, typer.Argument(help="Actions to watch: email:send, email:*, >")],
    url: Annotated[str, typer.Option(envvar="TASKHUB_URL")] = "ws://127.0.0.1:8080",
    name: Annotated[str, typer.Option(envvar="TASKHUB_NAME")] = "cli",
    key: Annotated[str, typer.Option(envvar="TASKHUB_KEY")] = "",
) -> None:
    """Show task events live: time, task, action, event, state, service, data."""
    from taskhub.names import validate_topic
    from taskhub.runtime import run

    try:
        validate_topic(pattern, pattern=True)  # before connecting: say what is wrong with it
        run(_watch(url, name, key, pattern))
    except TaskHubError as exc:
        _fail(str(exc))


async def _watch(url: str, name: str, key: str, pattern: str) -> None:
    from taskhub import Client

    async with (
        Client(url, name=name, key=key, connect_timeout=5) as client,
        client.watch(pattern) as events,
    ):
        err.print(f"watching {pattern} on {url} (Ctrl-C to stop)", highlight=False)
        async for event in events:
            out.print(_event_line(event), soft_wrap=True, highlight=False)


_TYPE_STYLE = {"success": "green", "fail": "red", "end": "yellow", "retry": "yellow"}


def _event_line(event: dict[str, Any]) -> Text:
    at = dt.datetime.fromtimestamp(float(event.get("at", 0))).strftime("%H:%M:%S.%f")[:-3]
    kind = str(event.get("type", ""))
    data = json.dumps(event["data"], default=str) if "data" in event else ""
    if len(data) > 60:
        data = data[:59] + "…"
    return Text.assemble(
        (at, "dim"),
        " ",
        (str(event.get("task", "")), "bold"),
        " ",
        (str(event.get("action", "")), "cyan"),
        " ",
        (f"{kind:<8}", _TYPE_STYLE.get(kind, "")),
        " ",
        f"{event.get('state', ''):<7}",
        " ",
        (str(event.get("service") or "-"), "magenta"),
        " ",
        data,
    )


def main() -> None:
    app()
