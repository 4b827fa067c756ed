"""The blocking client for workers (issue 16). After ``fork()`` (gunicorn --preload, uwsgi)
the child reconnects on first use instead of hanging on the parent's loop thread, which a fork
does not copy; pub() checks option names; a handler extends its end timeout."""

from __future__ import annotations

import json
import os
import sys

import pytest

from taskhub.sync import Client, Task
from taskhub.testing import running_hub


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
def test_a_forked_child_publishes_with_the_parents_client() -> None:
    with running_hub() as url, Client(url, name="app") as client:

        @client.sub("echo:run")
        def echo(task: Task) -> object:
            return {"echo": task.payload, "pid": os.getpid()}

        assert client.pub("echo:run", "parent").get_result(timeout=10)["echo"] == "parent"
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: answer through the pipe, whatever happens
            code = 0
            try:
                result = client.pub("echo:run", "child").get_result(timeout=10)
                os.write(write, json.dumps({"result": result}).encode())
            except BaseException as exc:
                os.write(write, json.dumps({"error": repr(exc)}).encode())
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as pipe:
            answer = json.loads(pipe.read() or "{}")
        _, status = os.waitpid(pid, 0)
        assert answer.get("result", answer)["echo"] == "child", answer
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's client was left alone: it still publishes and still works tasks.
        assert client.pub("echo:run", "again").get_result(timeout=10)["echo"] == "again"


def test_sync_pub_refuses_a_misspelt_option_at_run_time() -> None:
    with (
        running_hub() as url,
        Client(url, name="app") as client,
        pytest.raises(TypeError, match="priorty"),
    ):
        client.pub("a:b", None, priorty=3)  # type: ignore[call-arg]


def test_a_sync_handler_extends_its_end_timeout() -> None:
    import time

    with running_hub(task_end_timeout=0.5) as url, Client(url, name="app") as client:

        @client.sub("long:job")
        def long_job(task: Task) -> str:
            task.extend("30s")
            time.sleep(1.0)  # past the hub's 0.5 s end timeout
            return "done"

        assert client.pub("long:job").get_result(timeout=10) == "done"
