"""The framework examples (examples/, docs/frameworks.md) run for real: a hub in a process of
its own, the example's worker started beside the web app as its own process, and the web app
driven through its framework's test client (FastAPI's in this process, Django's in a
subprocess: Django's settings are process-wide, and the preforking test forks).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.hubproc import HubProcess

ROOT = Path(__file__).resolve().parents[2]
DJANGO_DIR = ROOT / "examples" / "django_app"
# `taskhub worker`, the command the docs start the workers with (this environment's).
TASKHUB_WORKER = [str(Path(sys.executable).parent / "taskhub"), "worker"]


@pytest.fixture(scope="module")
def hub() -> Iterator[HubProcess]:
    proc = HubProcess("memory://").start()
    yield proc
    proc.stop()


class WorkerProcess:
    """An example's worker process, started as the docs say; ready once it says so."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        for line in self.proc.stdout:  # ends when the worker exits; pytest-timeout bounds it
            self.lines.append(line)
            if " ready: " in line:  # the worker's log line once it is subscribed
                # Read on, so that its log never fills the pipe and blocks it.
                self.reader = threading.Thread(target=self._read, daemon=True)
                self.reader.start()
                return
        self.proc.stdout.close()
        raise AssertionError(f"the worker exited with {self.proc.wait()}: {''.join(self.lines)}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        self.lines.extend(self.proc.stdout)

    def stop(self) -> int:
        """SIGTERM, as a process manager stops it: it exits by itself, with 0."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


# --- FastAPI ------------------------------------------------------------------------------


# Starlette's TestClient warns that it will want httpx2 instead of httpx; both drive the app.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_fastapi_app_publishes_and_awaits_results_of_its_worker(
    hub: HubProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples.fastapi_app import app as example
    from fastapi.testclient import TestClient

    monkeypatch.setenv("TASKHUB_URL", hub.url)
    monkeypatch.setattr(example, "RESULT_WAIT", 0.5)
    with TestClient(example.app) as http:  # runs the lifespan: the client connects

        def finished(task_id: str) -> dict[str, Any]:
            def check() -> dict[str, Any] | None:
                answer = http.get(f"/tasks/{task_id}")
                assert answer.status_code == 200, answer.text
                body: dict[str, Any] = answer.json()
                return body if body["state"] in ("success", "fail", "end") else None

            return dict(eventually(check))

        # No worker yet: the route waits RESULT_WAIT, then answers 504 naming the task.
        cat = {"url": "https://img.example/cat.png", "width": 64}
        late = http.post("/thumbnail", json=cat)
        assert late.status_code == 504, late.text
        waiting = late.json()["detail"]
        assert waiting["state"] == "init"

        env = {"TASKHUB_URL": hub.url, "TASKHUB_NAME": "worker"}
        worker = WorkerProcess([*TASKHUB_WORKER, "examples.fastapi_app.worker"], ROOT, env)
        try:
            # The task waited in the hub for a worker; the worker started beside the app did it.
            assert finished(waiting["task"]) == {
                "state": "success",
                "result": "https://img.example/cat.png?w=64",
                "error": None,
            }
            signup = http.post("/signup", json={"email": "ada@example.com"})
            assert signup.status_code == 202, signup.text
            assert finished(signup.json()["task"])["result"] == {"sent_to": "ada@example.com"}

            monkeypatch.setattr(example, "RESULT_WAIT", 30.0)
            dog = http.post("/thumbnail", json={"url": "https://img.example/dog.png", "width": 9})
            assert dog.status_code == 200, dog.text
            assert dog.json() == {"thumbnail": "https://img.example/dog.png?w=9"}
            assert http.get("/tasks/01NOSUCHTASK").status_code == 404
            bad = http.post("/thumbnail", json={"url": "https://img.example/x.png", "width": 0})
            assert bad.status_code == 502, bad.text
            assert "ValueError: width must be positive, not 0" in bad.json()["detail"]["error"]
        finally:
            assert worker.stop() == 0


# --- Django -------------------------------------------------------------------------------

DJANGO_BEFORE_THE_WORKER = """
import json
import django
django.setup()
from django.test import Client
from shop import views

views.QUOTE_WAIT = 0.5
answer = Client().post("/quote/", {"apple": 1}, content_type="application/json")
assert answer.status_code == 504, answer.content
print(json.dumps(answer.json()))
"""

DJANGO_WITH_THE_WORKER = """
import json, os, signal, sys, time
import django
django.setup()
from django.test import Client

web = Client()

def finished(task_id):
    for _ in range(1500):
        body = web.get(f"/tasks/{task_id}/").json()
        if body["state"] in ("success", "fail", "end"):
            return body
        time.sleep(0.02)
    raise TimeoutError(task_id)

def post(path, body):
    return web.post(path, body, content_type="application/json")

out = {"late": finished(sys.argv[1])}
order = post("/orders/", {"id": 7, "items": {"apple": 2}})
assert order.status_code == 202, order.content
out["order"] = finished(order.json()["task"])
quote = post("/quote/", {"apple": 2, "pear": 1})
out["quote"] = [quote.status_code, quote.json()]
bad = post("/quote/", {"plum": 1})
out["bad"] = [bad.status_code, bad.json()["error"]]
out["unknown"] = web.get("/tasks/01NOSUCHTASK/").status_code

# A preforking server: this process has connected its client; its children fork from it.
children = []
for n in (1, 2, 3):
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)  # a child that hangs on its parent's connection dies, and says so
        answer = post("/quote/", {"pear": n})
        os._exit(0 if answer.status_code == 200 and answer.json() == {"total": 55 * n} else 1)
    children.append(pid)
out["children"] = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
again = post("/quote/", {"apple": 1})  # the parent's client still works
out["parent_after_fork"] = again.json()
print(json.dumps(out))
"""


def run_django(code: str, env: dict[str, str], *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=DJANGO_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_django_views_publish_with_the_blocking_client_and_survive_a_fork(
    hub: HubProcess, tmp_path: Path
) -> None:
    env = {
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "DJANGO_DB": str(tmp_path / "db.sqlite3"),
        "TASKHUB_URL": hub.url,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    late = run_django(DJANGO_BEFORE_THE_WORKER, env)
    assert late["state"] == "init"

    worker = WorkerProcess([*TASKHUB_WORKER, "shop.worker"], DJANGO_DIR, env)
    try:
        out = run_django(DJANGO_WITH_THE_WORKER, env, late["task"])
    finally:
        assert worker.stop() == 0
    assert out["late"] == {"state": "success", "result": 40, "error": None}
    assert out["order"] == {
        "state": "success",
        "result": {"order": 7, "status": "confirmed"},
        "error": None,
    }
    assert out["quote"] == [200, {"total": 135}]
    assert out["bad"][0] == 502 and "ValueError: no price for plum" in out["bad"][1]
    assert out["unknown"] == 404
    assert out["children"] == [0, 0, 0]
    assert out["parent_after_fork"] == {"total": 40}


# --- the docs show the examples as they are --------------------------------------------------


def test_frameworks_md_quotes_the_examples_as_they_are() -> None:
    """Each code block of docs/frameworks.md that names an example file (the line before it
    ends with `` `examples/...`: ``) is a verbatim part of that file."""
    page = (ROOT / "docs" / "frameworks.md").read_text()
    quoted = re.findall(r"`(examples/[^`]+)`:\n+```\w*\n(.*?)^```", page, re.M | re.S)
    assert len(quoted) >= 5
    for name, code in quoted:
        assert code in (ROOT / name).read_text(), f"docs/frameworks.md differs from {name}"
