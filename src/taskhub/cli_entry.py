"""The ``taskhub`` script's entry point: a clear line when the CLI's extra is not installed.

``pip install taskhub-server`` is the client alone; the command needs the ``cli`` extra (and
``serve`` the ``server`` extra), so the script must not die on an ``ImportError`` traceback.
"""

from __future__ import annotations

import sys

# Top-level modules the command line imports, and the extra that brings each.
CLI_MODULES = frozenset({"typer", "rich", "click", "httpx", "tomlkit"})
CLI_INSTALL = "pip install 'taskhub-server[cli]'"
SERVER_INSTALL = "pip install 'taskhub-server[server]'"


def main() -> None:
    try:
        from taskhub.cli import main as cli_main
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in CLI_MODULES:
            raise
        sys.stderr.write(
            f"error: the taskhub command needs its extra ({missing} is not installed): "
            f"{CLI_INSTALL} (or {SERVER_INSTALL} to run a hub too)\n"
        )
        sys.exit(1)
    cli_main()
