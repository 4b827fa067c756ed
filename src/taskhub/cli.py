"""The ``taskhub`` command line: run a hub, publish a task, watch task events."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from taskhub import cli_bench, cli_worker
from taskhub.cli_common import CliError, err, fail, one_line, out, print_error
from taskhub.cli_creds import creds_app
from taskhub.cli_tasks import tasks_app
from taskhub.errors import PartitionsMismatch, TaskHubError

if TYPE_CHECKING:
    from taskhub.server import Server

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # errors are one line (main), never a traceback
    help="TaskHub: send it tasks, watch them as they happen.",
    context_settings={"help_option_names": ["-h", "--help"]},  # subcommands inherit it
)
app.add_typer(tasks_app, name="tasks")
app.add_typer(creds_app, name="creds")
app.command("worker")(cli_worker.worker)


def _print_version(value: bool) -> None:
    if value:
        from taskhub import __version__

        print(f"taskhub {__version__} (Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit"
        ),
    ] = False,
) -> None:
    """TaskHub: send it tasks, watch them as they happen."""


def _setup_logging() -> None:
    from taskhub import logs

    try:
        logs.setup()  # TASKHUB_LOG, TASKHUB_LOG_FORMAT (docs/operations.md)
    except ValueError as exc:
        fail(str(exc))


def _serve_epilog() -> str:
    from rich.markup import escape

    from taskhub.config import CREDENTIALS_ENV, CREDENTIALS_FILE_ENV, SETTINGS

    # Paragraphs: typer's help shows each on its own line. Escaped: [server] is not markup.
    lines = [
        "Every setting: its key in the TOML file's [server] table, its environment variable, "
        "its default and meaning. Flags win over the environment, which wins over the file.",
        *(
            f"{key} / TASKHUB_{key.upper()} (default {default}): {meaning}"
            for key, (default, meaning) in SETTINGS.items()
        ),
        "Also: TASKHUB_CONFIG (--config); "
        f"{CREDENTIALS_FILE_ENV} (--credentials-file: a TOML file of [[credentials]]); "
        f"{CREDENTIALS_ENV} (a JSON list of credentials: "
        '[{"name": "emailer", "key_hash": "scrypt$...", "pub_permissions": ["email:send"]}]); '
        "TASKHUB_LOG (level) and TASKHUB_LOG_FORMAT (text or json). See docs/operations.md.",
    ]
    return "\n\n".join(escape(line) for line in lines)


@app.command(epilog=_serve_epilog())
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 127.0.0.1; TASKHUB_HOST)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080; TASKHUB_PORT)")] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="memory://, sqlite:///relative.db, sqlite:////absolute.db, redis://host:port "
            "(default sqlite:///taskhub.db; TASKHUB_STORE)"
        ),
    ] = None,
    config: Annotated[str | None, typer.Option(help="TOML config file (TASKHUB_CONFIG)")] = None,
    credentials_file: Annotated[
        str | None,
        typer.Option(
            "--credentials-file",
            help="TOML file of credentials tables, a mounted secret (TASKHUB_CREDENTIALS_FILE)",
        ),
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option(help="Partitions of the work, 1-1024, fixed per store (TASKHUB_PARTITIONS)"),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            help="Hub processes sharing the port, partitions spread over them (default 1; "
            "TASKHUB_PROCESSES)"
        ),
    ] = None,
) -> None:
    """Run a hub (WebSocket and HTTP on one port).

    Exits 2 when the store was set up with another partition count, or when --processes > 1
    cannot share the store (memory://, or partitions = 1)."""
    from taskhub import config as cfg

    _setup_logging()
    try:
        server = cfg.load(
            config or os.environ.get("TASKHUB_CONFIG"),
            credentials_file=credentials_file,
            host=host,
            port=port,
            store=store,
            partitions=partitions,
            processes=processes,
        )
    except ModuleNotFoundError as exc:  # the [cli] extra without the [server] one
        if (exc.name or "taskhub").startswith("taskhub"):
            raise
        fail(
            f"taskhub serve needs the hub's dependencies ({exc.name} is not installed): "
            "pip install 'taskhub-server[server]'"
        )
    except (TaskHubError, ValueError) as exc:
        fail(str(exc))
        return
    _run_server(server)


def _run_server(server: Server) -> None:
    """Serve until SIGTERM/SIGINT: this process, or with ``processes`` > 1 that many
    children sharing the port (taskhub.processes); a child serves its parent's socket."""
    from taskhub import processes as procs
    from taskhub.runtime import run

    try:
        inherited = procs.inherited_fd()
        if inherited is not None:
            server.inherit(inherited)
        elif server.processes > 1:
            raise typer.Exit(procs.supervise(server, sys.argv[1:]))
        run(server.serve_forever())
    except (PartitionsMismatch, procs.NotShared) as exc:
        print_error(str(exc))
        raise typer.Exit(2) from None
    except (TaskHubError, ValueError, OSError) as exc:
        fail(str(exc))


@app.command()
def pub(
    action: Annotated[str, typer.Argument(help="e.g. email/bulk:send")],
    payload: Annotated[str, typer.Argument(help="JSON payload")] = "null",
    url: Annotated[str, typer.Option(envvar="TASKHUB_URL")] = "ws://127.0.0.1:8080",
    name: Annotated[str, typer.Option(envvar="TASKHUB_NAME")] = "cli",
    key: Annotated[str, typer.Option(envvar="TASKHUB_KEY", help="Credential key")] = "",
    wait: Annotated[
        bool, typer.Option("--wait", help="Show the task live, then print its result as JSON")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(help="End timeout: seconds after a worker starts it")
    ] = None,
    start_timeout: Annotated[
        float | None, typer.Option("--start-timeout", help="Seconds to wait for a worker")
    ] = None,
    delay: Annotated[
        str | None, typer.Option(help="Deliver later: seconds or an interval (5m, 1h30m)")
    ] = None,
    task_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="A repeat with this key returns the same task"),
    ] = None,
    priority: Annotated[int, typer.Option(help="Higher first")] = 0,
) -> None:
    """Publish a task; print its id, or with --wait show it live and print its result.

    With --wait the exit status is 0 on success, 2 if the task failed or timed out, 3 if it
    ended without a result.
    """
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        fail(f"payload is not valid JSON: {exc}")
    from taskhub.runtime import run

    options: dict[str, Any] = {"priority": priority}
    for option, value in (
        ("timeout", timeout),
        ("start_timeout", start_timeout),
        ("delay", delay),
        ("key", task_key),
    ):
        if value is not None:
            options[option] = value
    try:
        code = run(_pub(url, name, key, action, data, wait, options))
    except (TaskHubError, ValueError) as exc:
        fail(str(exc))
        return
    raise typer.Exit(code)


async def _pub(
    url: str, name: str, key: str, action: str, payload: Any, wait: bool, options: dict[str, Any]
) -> int:
    from taskhub import Client
    from taskhub.cli_live import say_if_pooled, wait_for_result

    # The CLI says it in its own words (say_if_pooled), so not the client's log line too.
    logging.getLogger("taskhub.client").addFilter(
        lambda record: record.funcName != "nobody_subscribed"
    )
    async with Client(url, name=name, key=key, connect_timeout=5) as client:
        handle = client.pub(action, payload, **options)
        if wait:
            return await wait_for_result(handle, live=err.is_terminal)
        print(await handle.accepted(), flush=True)
        say_if_pooled(handle)
        return 0


@app.command()
def watch(
    pattern: Annotated[str, typer.Argument(help="Actions to watch: email:send, email:*, >")],
    url: Annotated[str, typer.Option(envvar="TASKHUB_URL")] = "ws://127.0.0.1:8080",
    name: Annotated[str, typer.Option(envvar="TASKHUB_NAME")] = "cli",
    key: Annotated[str, typer.Option(envvar="TASKHUB_KEY")] = "",
    lines: Annotated[
        bool, typer.Option("--lines", help="One line per event instead of the live table")
    ] = False,
    rows: Annotated[
        int | None, typer.Option(min=1, help="Tasks in the live table [terminal height]")
    ] = None,
) -> None:
    """Show task events live: a table of the latest tasks, updating in place (on a terminal),
    or with --lines (and whenever stdout is not a terminal) one line per event."""
    from taskhub.names import validate_topic
    from taskhub.runtime import run

    table = out.is_terminal and not lines
    height = rows or max(5, out.size.height - 4)
    try:
        validate_topic(pattern, pattern=True)  # before connecting: say what is wrong with it
        run(_watch(url, name, key, pattern, height if table else None))
    except TaskHubError as exc:
        fail(str(exc))


async def _watch(url: str, name: str, key: str, pattern: str, rows: int | None) -> None:
    from taskhub import Client
    from taskhub.cli_live import watch_table

    async with (
        Client(url, name=name, key=key, connect_timeout=5) as client,
        client.watch(pattern) as events,
    ):
        err.print(f"watching {pattern} on {url} (Ctrl-C to stop)", highlight=False)
        if rows is not None:
            await watch_table(events, pattern, rows)
            return
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


# --- schedules, queues, dead letters (docs/scheduling.md) --------------------------------------
schedules_app = typer.Typer(no_args_is_help=True, help="Cron schedules: ls, add, rm.")
queues_app = typer.Typer(no_args_is_help=True, help="Group queues: ls, show, purge.")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: ls, show, requeue.")
app.add_typer(schedules_app, name="schedules")
app.add_typer(queues_app, name="queues")
app.add_typer(dlq_app, name="dlq")
app.command("bench")(cli_bench.bench)

Url = Annotated[str, typer.Option("--url", envvar="TASKHUB_URL")]
Name = Annotated[str, typer.Option("--name", envvar="TASKHUB_NAME")]
Key = Annotated[str, typer.Option("--key", envvar="TASKHUB_KEY")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
_WS = "ws://127.0.0.1:8080"


def _call(url: str, name: str, key: str, fn: Any) -> Any:
    """Connect, run ``await fn(client)``, print errors the way every command does."""
    from taskhub import Client
    from taskhub.runtime import run

    async def go() -> Any:
        async with Client(url, name=name, key=key, connect_timeout=5) as client:
            return await fn(client)

    try:
        return run(go())
    except (TaskHubError, ValueError, TypeError) as exc:
        fail(str(exc))


def _when(at: Any) -> str:
    if at is None:
        return "-"
    return dt.datetime.fromtimestamp(float(at)).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _table(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    from rich.table import Table

    table = Table(*columns, box=None, pad_edge=False)
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col)
            if col.endswith("_at") or col == "last_slot":
                cells.append(_when(value))
            elif isinstance(value, dict | list):
                cells.append(json.dumps(value, default=str))
            else:
                cells.append("-" if value is None else str(value))
        table.add_row(*cells)
    out.print(table)


@schedules_app.command("ls")
def schedules_ls(
    url: Url = _WS, name: Name = "cli", key: Key = "", as_json: AsJson = False
) -> None:
    """List schedules with their next slot."""
    rows = _call(url, name, key, lambda c: c.schedules())
    cols = ["name", "cron", "timezone", "action", "next_at", "last_slot", "source"]
    _table(rows, cols, as_json)


@schedules_app.command("add")
def schedules_add(
    schedule: Annotated[str, typer.Argument(help="Schedule name")],
    cron: Annotated[str, typer.Argument(help="e.g. '*/5 * * * *' (quote it)")],
    action: Annotated[str, typer.Argument(help="Action to publish at every slot")],
    payload: Annotated[str, typer.Argument(help="JSON payload")] = "null",
    timezone: Annotated[str, typer.Option(help="IANA time zone of the cron")] = "UTC",
    timeout: Annotated[float | None, typer.Option(help="End timeout, seconds")] = None,
    retries: Annotated[int | None, typer.Option(help="Retries after a failure")] = None,
    url: Url = _WS,
    name: Name = "cli",
    key: Key = "",
) -> None:
    """Create or replace a schedule."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        fail(f"payload is not valid JSON: {exc}")
    options: dict[str, Any] = {}
    if timeout is not None:
        options["timeout"] = timeout
    if retries is not None:
        options["retries"] = retries
    got = _call(
        url,
        name,
        key,
        lambda c: c.schedule(schedule, cron, action, data, timezone=timezone, **options),
    )
    err.print(f"schedule {schedule} saved; next slot {_when(got.get('next_at'))}", highlight=False)


@schedules_app.command("rm")
def schedules_rm(
    schedule: Annotated[str, typer.Argument(help="Schedule name")],
    url: Url = _WS,
    name: Name = "cli",
    key: Key = "",
) -> None:
    """Remove a schedule."""
    _call(url, name, key, lambda c: c.unschedule(schedule))
    err.print(f"schedule {schedule} removed", highlight=False)


_QUEUE_COLS = ["action", "group", "durable", "workers", "credit", "waiting", "in_flight"]


@queues_app.command("ls")
def queues_ls(url: Url = _WS, name: Name = "cli", key: Key = "", as_json: AsJson = False) -> None:
    """List group queues with their counts."""
    _table(_call(url, name, key, lambda c: c.queues()), _QUEUE_COLS, as_json)


@queues_app.command("show")
def queues_show(
    action: Annotated[str, typer.Argument()],
    group: Annotated[str, typer.Argument()],
    url: Url = _WS,
    name: Name = "cli",
    key: Key = "",
) -> None:
    """Show one group queue (JSON)."""

    async def one(c: Any) -> dict[str, Any]:
        for q in await c.queues():
            if q["action"] == action and q["group"] == group:
                return dict(q)
        raise ValueError(f"no queue for group {group!r} of {action!r}")

    sys.stdout.write(json.dumps(_call(url, name, key, one), indent=2) + "\n")


@queues_app.command("purge")
def queues_purge(
    action: Annotated[str, typer.Argument()],
    group: Annotated[str, typer.Argument()],
    forget: Annotated[
        bool, typer.Option("--forget", help="Also remove the durable subscription")
    ] = False,
    url: Url = _WS,
    name: Name = "cli",
    key: Key = "",
) -> None:
    """Fail the group's waiting deliveries (reason 'purged')."""
    n = _call(url, name, key, lambda c: c.purge(action, group, forget=forget))
    err.print(f"purged {n} deliveries" + (", forgot the group" if forget else ""), highlight=False)


@dlq_app.command("ls")
def dlq_ls(
    action: Annotated[str | None, typer.Option(help="Only this action")] = None,
    url: Url = _WS,
    name: Name = "cli",
    key: Key = "",
    as_json: AsJson = False,
) -> None:
    """List dead letters, oldest first."""
    rows = _call(url, name, key, lambda c: c.dead_letters(action))
    for row in rows:
        row["reason"] = (row.get("error") or {}).get("reason")
        row["message"] = (row.get("error") or {}).get("message")
    _table(rows, ["id", "action", "ended_at", "reason", "message"], as_json)


@dlq_app.command("show")
def dlq_show(
    task_id: Annotated[str, typer.Argument()],
    url: Url = _WS,
    name: Name = "cli",
    key: Key = "",
) -> None:
    """Show one dead letter with its payload (JSON)."""
    entry = _call(url, name, key, lambda c: c.dead_letter(task_id))
    sys.stdout.write(json.dumps(entry, indent=2, default=str) + "\n")


@dlq_app.command("requeue")
def dlq_requeue(
    task_id: Annotated[str, typer.Argument()],
    url: Url = _WS,
    name: Name = "cli",
    key: Key = "",
) -> None:
    """Publish a fresh copy of a dead letter; print the new task id."""
    print(_call(url, name, key, lambda c: c.requeue(task_id)), flush=True)


def main() -> None:
    """The ``taskhub`` entry point: any error is one ``error: ...`` line and exit status 1,
    a mistyped command or option too (``TASKHUB_DEBUG=1`` shows the traceback instead)."""
    try:
        # Not standalone: click's usage errors come here instead of typer's boxed message.
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.TyperException as exc:  # click's usage errors (typer vendors click)
        if type(exc).__name__ == "NoArgsIsHelpError":  # as typer tells it apart
            sys.exit(exc.exit_code)  # `taskhub tasks` alone: typer printed the group's help
        print_error(_usage(exc))
        sys.exit(1)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("TASKHUB_DEBUG"):
            raise
        print_error(_describe(exc))
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _usage(exc: typer.TyperException) -> str:
    """``No such option: --bogus (see taskhub pub --help)``: the message and where help is."""
    path = getattr(getattr(exc, "ctx", None), "command_path", None)
    where = f" (see {path} --help)" if isinstance(path, str) else ""
    return one_line(exc.format_message()) + where


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CliError | TaskHubError | ValueError):
        return one_line(str(exc))
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return one_line(f"{where}{exc.strerror or exc}")
    return one_line(f"{type(exc).__name__}: {exc}")
