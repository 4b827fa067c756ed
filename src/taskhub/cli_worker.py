"""``taskhub worker MODULE[:ATTR] ...``: run the tasks a module declares with ``Worker``."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from typing import Annotated, Any, NoReturn

import typer

from taskhub.cli_common import print_error

log = logging.getLogger("taskhub.worker")

# A bad MODULE[:ATTR] (not importable, no such attribute, not a Worker): a usage error.
EXIT_USAGE = 2


class BadTarget(Exception):
    """MODULE[:ATTR] does not name a Worker; the message says why, in one line."""


# The command's arguments and flags, declared once here so that its signature reads at a glance.
Targets = Annotated[
    list[str],
    typer.Argument(
        metavar="MODULE[:ATTR]...",
        help="Module(s) declaring tasks; ATTR names the Worker (default: every Worker "
        "instance in the module). The current directory is on the import path.",
    ),
]
UrlFlag = Annotated[
    str | None,
    typer.Option(
        help="Hub URL (default: the Worker's, else $TASKHUB_URL, else ws://127.0.0.1:8080)"
    ),
]
NameFlag = Annotated[
    str | None, typer.Option(help="Credential name (default: the Worker's, else $TASKHUB_NAME)")
]
KeyFlag = Annotated[
    str | None, typer.Option(help="Credential key (default: the Worker's, else $TASKHUB_KEY)")
]
ConcurrencyFlag = Annotated[
    int | None,
    typer.Option(min=1, help="Tasks of each action run at once, for tasks that set none"),
]
PoolFlag = Annotated[
    str | None,
    typer.Option(
        help="Where plain `def` handlers run: threads (default), processes (CPU-bound "
        "work; payload and result by value) or async (on the handler loop)"
    ),
]
LogLevelFlag = Annotated[
    str | None,
    typer.Option(help="debug, info, warning or error (default: $TASKHUB_LOG, else info)"),
]
ReloadFlag = Annotated[
    bool, typer.Option("--reload", help="Restart when a .py file under the cwd changes")
]
GraceFlag = Annotated[
    float | None,
    typer.Option(
        min=0,
        help="Seconds running tasks get to finish on SIGTERM / Ctrl-C before they are "
        "handed back (default: the Worker's, 30)",
    ),
]


def worker(
    targets: Targets,
    url: UrlFlag = None,
    name: NameFlag = None,
    key: KeyFlag = None,
    concurrency: ConcurrencyFlag = None,
    pool: PoolFlag = None,
    log_level: LogLevelFlag = None,
    reload: ReloadFlag = False,
    grace: GraceFlag = None,
) -> None:
    """Run workers: connect, take tasks until SIGTERM or Ctrl-C (docs/workers.md).

    SIGTERM or Ctrl-C: take nothing new, let running tasks end within --grace, hand back the rest.

    Exit status: 0 after a stop, 1 if the hub cannot be reached, 2 for a bad MODULE[:ATTR].
    """
    from taskhub import logs
    from taskhub.worker import POOLS

    if pool is not None and pool not in POOLS:
        _usage_error(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    try:
        logs.setup(level=log_level)
    except ValueError as exc:
        _usage_error(str(exc))
    if reload:
        raise typer.Exit(_reload(sys.argv[1:]))
    sys.path.insert(0, os.getcwd())
    try:
        main = combined(load(targets))
    except (BadTarget, ValueError) as exc:
        _usage_error(str(exc))
    flags = {"url": url, "name": name, "key": key, "concurrency": concurrency, "pool": pool}
    for attr, value in flags.items():
        if value is not None:
            setattr(main, attr, value)  # the flag wins over the Worker's own setting
    main.run(grace=grace)
    if main.lingering:
        # Plain functions still running in threads cannot be stopped, and the interpreter
        # would wait for them at exit: their deliveries are handed back, so leave now.
        log.warning("%d handler thread(s) still running; exiting without them", main.lingering)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _usage_error(message: str) -> NoReturn:
    print_error(message)
    raise typer.Exit(EXIT_USAGE)


def combined(found: list[Any]) -> Any:
    """One Worker running the tasks of all ``found`` (ValueError: two declare one action)."""
    main = found[0]
    for other in found[1:]:
        main.include(other)
    return main


def load(targets: list[str]) -> list[Any]:
    """The Worker(s) that ``MODULE[:ATTR]`` targets name. Raises BadTarget."""
    from taskhub.worker import Worker

    found: list[Worker] = []
    for target in targets:
        module_name, _, attr = target.partition(":")
        if not module_name:
            raise BadTarget(f"{target!r}: expected MODULE[:ATTR], e.g. myapp.tasks:worker")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                raise BadTarget(
                    f"cannot import {module_name!r}: no module named {exc.name!r} "
                    f"(looked in the current directory and the import path)"
                ) from None
            raise BadTarget(f"importing {module_name!r} failed: {_where(exc)}") from None
        except Exception as exc:
            raise BadTarget(f"importing {module_name!r} failed: {_where(exc)}") from None
        if attr:
            if not hasattr(module, attr):
                raise BadTarget(f"module {module_name!r} has no attribute {attr!r}")
            value = getattr(module, attr)
            if not isinstance(value, Worker):
                raise BadTarget(f"{target!r} is a {type(value).__name__}, not a taskhub.Worker")
            found.append(value)
        else:
            workers = [v for v in vars(module).values() if isinstance(v, Worker)]
            if not workers:
                raise BadTarget(
                    f"no taskhub.Worker in module {module_name!r}; declare one "
                    "(worker = Worker()) or name it as MODULE:ATTR"
                )
            found.extend(dict.fromkeys(workers))  # one Worker under two names counts once
    return found


def _where(exc: BaseException) -> str:
    """``Type: message (file:line)`` of the innermost frame: one line that points at it."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}:{exc.lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


def _reload(argv: list[str]) -> int:
    """Run the worker (without --reload) in a child process; restart it when a ``.py`` file
    under the current directory changes. SIGTERM / Ctrl-C stop the child gracefully."""
    import watchfiles

    args = [a for a in argv if a != "--reload"]
    cmd = [sys.executable, "-m", "taskhub", *args]
    stop = threading.Event()

    def forward(signum: int, _frame: Any) -> None:
        stop.set()
        if child.poll() is None:
            child.send_signal(signum)

    child = subprocess.Popen(cmd)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    for changes in watchfiles.watch(
        os.getcwd(),
        watch_filter=watchfiles.PythonFilter(),
        stop_event=stop,
        rust_timeout=500,
        yield_on_timeout=True,
    ):
        if stop.is_set():
            break
        if child.poll() is not None and not changes:
            continue  # the child ended (an error it printed): wait for a fix
        if not changes:
            continue
        log.warning("%s changed: restarting the worker", sorted(p for _, p in changes)[0])
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            child.wait()
        child = subprocess.Popen(cmd)
    return child.wait()
