"""Handlers keep their types through the decorators under ``mypy --strict``, and the sync
client's ``pub`` options are checked by name (issue 16, item 8)."""

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
    assert len(errors) == 1, stdout
    assert 'Unexpected keyword argument "priorty"' in errors[0]
