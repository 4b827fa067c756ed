"""Every snippet of docs/workers.md runs as written: the Python files are written where the
page names them (``# tasks.py``), the shell lines run in that directory, with the hub on a
free port instead of 8080 (``127.0.0.1:8080`` in the snippets is rewritten). Long-running
commands (``taskhub serve``, ``taskhub worker``) run in the background and are stopped with
SIGTERM at the end, which must exit 0. ``pip install`` is the one line not run: this checkout
is what is installed."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "workers.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
LONG_RUNNING = ("taskhub serve", "taskhub worker")


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text())]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("the hub of the docs did not start")


def wait_output(path: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        assert proc.poll() is None, path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never logged:\n{path.read_text()}")


def test_every_snippet_of_workers_md_runs(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TASKHUB_URL": f"ws://127.0.0.1:{port}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(tmp_path),
    }
    background: list[tuple[subprocess.Popen[bytes], Path]] = []
    python_files = 0
    ran: list[str] = []
    try:
        for lang, body in blocks():
            body = body.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            if lang == "python":
                first = body.splitlines()[0]
                assert first.startswith("# ") and first.endswith(".py"), first
                (tmp_path / first[2:]).write_text(body)
                python_files += 1
                continue
            assert lang == "sh", lang
            for line in body.strip().splitlines():
                if line.startswith("pip install"):
                    continue
                if line.startswith("taskhub serve"):
                    line += f" --port {port}"
                if line.startswith(LONG_RUNNING):
                    log = tmp_path / f"bg-{len(background)}.log"
                    with log.open("wb") as out:
                        proc = subprocess.Popen(
                            shlex.split(line),
                            cwd=tmp_path,
                            env=env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    background.append((proc, log))
                    if line.startswith("taskhub serve"):
                        wait_ready(port)
                    else:
                        wait_output(log, "ready", proc)
                else:
                    done = subprocess.run(
                        line,
                        shell=True,
                        cwd=tmp_path,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                    assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
                    ran.append(done.stdout)
        assert python_files >= 5
        publish_out = ran[0]
        assert "progress {'pct': 25}" in publish_out
        assert "{'pct': 100}" in publish_out
        assert "{'sent': 'ada@example.com'}" in publish_out
        assert "{'w': 320}" in publish_out
        assert "2262" in publish_out  # primes below 20,000
        assert "2 passed" in ran[1]
        # §7: SIGTERM stops each worker with status 0 (the hub last).
        for proc, log in reversed(background):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, log.read_text()
            assert "Traceback" not in log.read_text()
    finally:
        for proc, _ in background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
