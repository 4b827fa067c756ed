"""``taskhub worker MODULE`` as a real subprocess on a temporary module (issue 16): stops on
SIGTERM and Ctrl-C, hands back what it cannot finish, logs and stores tracebacks, runs
CPU-bound handlers in processes, reloads on a code change, refuses a bad target."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhub import TaskFailed, Worker
from taskhub.sync import Client
from taskhub.testing import running_hub
from taskhub.worker import Task


@pytest.fixture
def hub_url() -> Iterator[str]:
    with running_hub(retries=0, max_attempts=5) as url:
        yield url


class WorkerProcess:
    """``python -m taskhub worker ARGS`` in ``cwd``, its output in a file."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.log = cwd / f"worker-{time.monotonic_ns()}.log"
        env = {**os.environ, "TASKHUB_LOG": "info"}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskhub", "worker", *args],
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the worker's output:\n{self.output}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.kill()


def module(tmp_path: Path, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def wait_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


SLOW = """
import asyncio, pathlib
from taskhub import Worker
worker = Worker(name="slow")

@worker.task("job:slow")
async def slow(task):
    pathlib.Path(task.payload["marker"]).write_text(task.id)
    await asyncio.sleep(task.payload["seconds"])
    return "done"
"""


def test_sigterm_with_a_task_in_hand_lets_it_finish_within_the_grace_and_exits_0(
    tmp_path: Path, hub_url: str, workers: list[WorkerProcess]
) -> None:
    mod = module(tmp_path, "slowmod", SLOW)
    w = WorkerProcess(tmp_path, mod, "--url", hub_url, "--grace", "30")
    workers.append(w)
    w.wait_for("ready")
    marker = tmp_path / "started"
    with Client(hub_url, name="pub") as client:
        handle = client.pub("job:slow", {"marker": str(marker), "seconds": 1.0})
        wait_file(marker)
        w.signal(signal.SIGTERM)
        assert w.wait() == 0
        assert handle.get_result(timeout=10) == "done"
    assert "Traceback" not in w.output
    assert "succeeded" in w.output


def test_sigterm_past_the_grace_hands_back_without_a_try_and_it_runs_once_elsewhere(
    tmp_path: Path, hub_url: str, workers: list[WorkerProcess]
) -> None:
    mod = module(tmp_path, "stuckmod", SLOW)
    w = WorkerProcess(tmp_path, mod, "--url", hub_url, "--grace", "0.5")
    workers.append(w)
    w.wait_for("ready")
    marker = tmp_path / "started"
    runs: list[str] = []
    with Client(hub_url, name="pub") as client:
        handle = client.pub("job:slow", {"marker": str(marker), "seconds": 600})
        wait_file(marker)
        w.signal(signal.SIGTERM)
        assert w.wait() == 0
        assert "handed back 1" in w.output
        assert client.get(handle.id)["deliveries"][0]["tries"] == 0

        other = Worker(hub_url, name="slow")

        @other.task("job:slow")
        async def elsewhere(task: Task) -> str:
            runs.append(task.id)
            return "elsewhere"

        with other:
            assert handle.get_result(timeout=10) == "elsewhere"
        task = client.get(handle.id)
    assert runs == [handle.id]
    assert task["deliveries"][0]["tries"] == 0
    assert "Traceback" not in w.output


def test_second_ctrl_c_stops_at_once_without_a_traceback(
    tmp_path: Path, hub_url: str, workers: list[WorkerProcess]
) -> None:
    mod = module(tmp_path, "ctrlcmod", SLOW)
    w = WorkerProcess(tmp_path, mod, "--url", hub_url, "--grace", "600")
    workers.append(w)
    w.wait_for("ready")
    marker = tmp_path / "started"
    with Client(hub_url, name="pub") as client:
        handle = client.pub("job:slow", {"marker": str(marker), "seconds": 600})
        wait_file(marker)
        w.signal(signal.SIGINT)
        w.wait_for("Ctrl-C again")
        w.signal(signal.SIGINT)
        assert w.wait() == 0
        assert client.get(handle.id)["deliveries"][0]["tries"] == 0
    assert "Traceback" not in w.output
    assert "KeyboardInterrupt" not in w.output


def test_a_raising_handler_logs_its_traceback_and_tasks_show_prints_it(
    tmp_path: Path, hub_url: str, workers: list[WorkerProcess]
) -> None:
    mod = module(
        tmp_path,
        "boommod",
        """
        from taskhub import Worker
        worker = Worker(name="boom")

        def parse(order):
            return int(order["qty"])

        @worker.task("order:check", retries=1, backoff=0)
        def check(task):
            return parse(task.payload)
        """,
    )
    w = WorkerProcess(tmp_path, mod, "--url", hub_url)
    workers.append(w)
    w.wait_for("ready")
    with Client(hub_url, name="pub") as client:
        handle = client.pub("order:check", {"qty": "many"})
        with pytest.raises(TaskFailed):
            handle.get_result(timeout=10)
    assert "in parse" in w.output and "ValueError" in w.output  # the log has the traceback
    shown = subprocess.run(
        [sys.executable, "-m", "taskhub", "tasks", "show", handle.id, "--url", hub_url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "try 1: ValueError: invalid literal for int()" in shown.stdout
    assert "final error: ValueError" in shown.stdout
    assert 'in parse\n    return int(order["qty"])' in shown.stdout


def test_pool_processes_runs_a_cpu_bound_handler_in_another_process(
    tmp_path: Path, hub_url: str, workers: list[WorkerProcess]
) -> None:
    mod = module(
        tmp_path,
        "cpumod",
        """
        import os
        from taskhub import Worker
        worker = Worker(name="cpu")

        @worker.task("math:sum", concurrency=2)
        def total(task):
            return {"sum": sum(i * i for i in range(task.payload)), "pid": os.getpid()}
        """,
    )
    w = WorkerProcess(tmp_path, f"{mod}:worker", "--url", hub_url, "--pool", "processes")
    workers.append(w)
    w.wait_for("ready")
    with Client(hub_url, name="pub") as client:
        result = client.pub("math:sum", 100_000).get_result(timeout=30)
    assert result["sum"] == sum(i * i for i in range(100_000))
    assert result["pid"] not in (w.proc.pid, os.getpid())
    w.signal(signal.SIGTERM)
    assert w.wait() == 0


def test_a_process_pool_handler_sends_progress_and_extends_its_timeout(
    tmp_path: Path, hub_url: str, workers: list[WorkerProcess]
) -> None:
    """``task.update`` and ``task.extend`` from a handler running in a child process: the
    publisher sees the progress, the extended end timeout holds the task alive past its
    own ``timeout``, and the result comes after them."""
    mod = module(
        tmp_path,
        "procsteps",
        """
        import os, time
        from taskhub import Worker
        worker = Worker(name="cpu")

        @worker.task("math:warm")
        def warm(task):  # the first task of a process imports this module
            return os.getpid()

        @worker.task("math:steps", timeout=2)
        def steps(task):
            task.update({"pct": 50, "pid": os.getpid()})
            task.extend("30s")
            time.sleep(3)  # past the declared timeout of 2 s: alive thanks to extend
            task.update({"pct": 100, "pid": os.getpid()})
            return os.getpid()
        """,
    )
    w = WorkerProcess(tmp_path, f"{mod}:worker", "--url", hub_url, "--pool", "processes")
    workers.append(w)
    w.wait_for("ready")
    seen: list[Any] = []
    with Client(hub_url, name="pub") as client:
        client.pub("math:warm").get_result(timeout=30)
        handle = client.pub("math:steps")
        handle.on("update", lambda h: seen.append(h.last_update))
        pid = handle.get_result(timeout=30)  # TaskTimeout without the extend
    assert pid not in (w.proc.pid, os.getpid())  # it ran in a child process
    assert seen and seen[-1] == {"pct": 100, "pid": pid}  # progress from that process
    w.signal(signal.SIGTERM)
    assert w.wait() == 0


def test_reload_restarts_the_worker_when_its_code_changes(
    tmp_path: Path, hub_url: str, workers: list[WorkerProcess]
) -> None:
    source = """
    from taskhub import Worker
    worker = Worker(name="r")

    @worker.task("ver:get")
    def version(task):
        return VERSION

    VERSION = {v}
    """
    mod = module(tmp_path, "reloadmod", source.format(v=1))
    w = WorkerProcess(tmp_path, mod, "--url", hub_url, "--reload")
    workers.append(w)
    w.wait_for("ready")
    with Client(hub_url, name="pub") as client:
        assert client.pub("ver:get").get_result(timeout=10) == 1
        module(tmp_path, "reloadmod", source.format(v=2))
        w.wait_for("restarting the worker")
        deadline = time.monotonic() + 30
        got: Any = None
        while time.monotonic() < deadline and got != 2:
            got = client.pub("ver:get").get_result(timeout=30)
        assert got == 2
    w.signal(signal.SIGTERM)
    assert w.wait() == 0


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("nosuchmodule", "cannot import 'nosuchmodule'"),
        ("goodmod:nope", "module 'goodmod' has no attribute 'nope'"),
        ("goodmod:helper", "'goodmod:helper' is a function, not a taskhub.Worker"),
        ("emptymod", "no taskhub.Worker in module 'emptymod'"),
        ("brokenmod", "importing 'brokenmod' failed: NameError"),
    ],
)
def test_a_bad_target_is_one_line_and_exit_2(tmp_path: Path, target: str, says: str) -> None:
    module(
        tmp_path, "goodmod", "from taskhub import Worker\nworker = Worker()\ndef helper(): ...\n"
    )
    module(tmp_path, "emptymod", "x = 1\n")
    module(tmp_path, "brokenmod", "y = undefined_name\n")
    done = subprocess.run(
        [sys.executable, "-m", "taskhub", "worker", target],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_help_lists_every_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taskhub", "worker", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0
    for flag in (
        "--url",
        "--name",
        "--key",
        "--concurrency",
        "--pool",
        "--log-level",
        "--reload",
        "--grace",
    ):
        assert flag in done.stdout


def test_concurrency_flag_sets_the_default_credit(
    tmp_path: Path, hub_url: str, workers: list[WorkerProcess]
) -> None:
    mod = module(
        tmp_path,
        "barriermod",
        """
        import threading
        from taskhub import Worker
        worker = Worker(name="b")
        together = threading.Barrier(3, timeout=20)

        @worker.task("job:together")  # no concurrency of its own: --concurrency applies
        def meet(task):
            together.wait()  # returns only once 3 handlers run at the same time
            return "met"
        """,
    )
    w = WorkerProcess(tmp_path, mod, "--url", hub_url, "--concurrency", "3")
    workers.append(w)
    w.wait_for("ready")
    with Client(hub_url, name="pub") as client:
        handles = [client.pub("job:together") for _ in range(3)]
        assert [h.get_result(timeout=30) for h in handles] == ["met"] * 3


def test_a_hub_that_cannot_be_reached_is_one_line_and_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    mod = module(tmp_path, "lonelymod", SLOW)
    done = subprocess.run(
        [sys.executable, "-m", "taskhub", "worker", mod, "--url", f"ws://127.0.0.1:{port}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: could not connect to ws://127.0.0.1:{port}/v1/ws: [Errno 111] Connection refused"
    ], done.stderr
    assert "Traceback" not in done.stderr


def test_several_modules_run_in_one_worker(
    tmp_path: Path, hub_url: str, workers: list[WorkerProcess]
) -> None:
    one = module(
        tmp_path,
        "onemod",
        """
        from taskhub import Worker
        worker = Worker(name="multi")

        @worker.task("one:run")
        async def one(task):
            return 1
        """,
    )
    two = module(
        tmp_path,
        "twomod",
        """
        from taskhub import Worker
        jobs = Worker()

        @jobs.task("two:run")
        def two(task):
            return 2
        """,
    )
    w = WorkerProcess(tmp_path, one, f"{two}:jobs", "--url", hub_url)
    workers.append(w)
    w.wait_for("ready")
    with Client(hub_url, name="pub") as client:
        assert client.pub("one:run").get_result(timeout=10) == 1
        assert client.pub("two:run").get_result(timeout=10) == 2
    w.signal(signal.SIGTERM)
    assert w.wait() == 0


def test_sigterm_past_the_grace_with_a_plain_def_in_a_thread_exits_without_waiting_for_it(
    tmp_path: Path, hub_url: str, workers: list[WorkerProcess]
) -> None:
    mod = module(
        tmp_path,
        "threadmod",
        """
        import pathlib, time
        from taskhub import Worker
        worker = Worker(name="t")

        @worker.task("job:sleepy")
        def sleepy(task):
            pathlib.Path(task.payload).write_text("started")
            time.sleep(600)  # a thread cannot be interrupted
        """,
    )
    w = WorkerProcess(tmp_path, mod, "--url", hub_url, "--grace", "0.5")
    workers.append(w)
    w.wait_for("ready")
    marker = tmp_path / "started"
    with Client(hub_url, name="pub") as client:
        handle = client.pub("job:sleepy", str(marker))
        wait_file(marker)
        w.signal(signal.SIGTERM)
        assert w.wait(60) == 0  # not 600 s: the thread is left behind
        assert "handed back 1" in w.output
        assert "1 handler thread(s) still running" in w.output
        task = client.get(handle.id)
    assert task["deliveries"][0]["state"] == "pending"  # waiting for another worker
    assert task["deliveries"][0]["tries"] == 0
