"""Handlers keep their types through the decorators under ``mypy --strict``, and the options of
``pub``, ``sub`` and ``Worker.task`` are checked by name (issue 16, item 8; issue 18: they are
typed by the options table's TypedDicts)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

SNIPPET = """
from taskhub import Client, Worker
from taskhub.client import TaskContext
from taskhub.sync import Client as SyncClient, Task as SyncClientTask
from taskhub.worker import SyncTask, Task

worker = Worker()

@worker.task("email:send", retries=3, backoff="10s", timeout="5m")
async def send(task: Task) -> dict[str, int]:
    return {"sent": 1}

@worker.task("img:resize")
def resize(task: SyncTask) -> bytes:
    return b""

reveal_type(send)
reveal_type(resize)

async def main(client: Client, sync: SyncClient) -> None:
    @client.sub("a:b")
    async def handler(task: TaskContext) -> int:
        return 1

    reveal_type(handler)

    @sync.sub("c:d")
    def sync_handler(task: SyncClientTask) -> str:
        return ""

    reveal_type(sync_handler)
    sync.pub("a:b", None, priorty=3)
    client.pub("a:b", None, dealy=3)
    client.sub("e:f", handler, retires=1)
    worker.task("g:h", tiemout="5m")
"""


def test_decorators_keep_the_handler_type_and_pub_checks_option_names(tmp_path: Path) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(textwrap.dedent(SNIPPET))
    stdout, _, _ = api.run(["--strict", "--no-incremental", "--cache-dir=/dev/null", str(path)])
    lines = [line.split(": ", 1)[1] for line in stdout.splitlines() if ": " in line]
    revealed = [line for line in lines if line.startswith("note: Revealed type")]
    assert revealed == [
        'note: Revealed type is "def (task: taskhub.worker.Task) -> typing.Coroutine[Any, Any, '
        'dict[str, int]]"',
        'note: Revealed type is "def (task: taskhub.worker.SyncTask) -> bytes"',
        'note: Revealed type is "taskhub.client.client.Subscription[typing.Coroutine[Any, Any, '
        'int]]"',
        'note: Revealed type is "def (task: taskhub.sync.Task) -> str"',
    ], stdout
    errors = [line for line in lines if line.startswith("error:")]
    for misspelt in ("priorty", "dealy", "retires", "tiemout"):
        assert any(f'Unexpected keyword argument "{misspelt}"' in e for e in errors), stdout
    # Nothing else: an overloaded `sub` adds "no overload variant" for its misspelt call.
    others = [e for e in errors if "Unexpected keyword" not in e]
    assert len(errors) == 5 and len(others) == 1 and "overload" in others[0], stdout
