"""The ``taskhub`` command line as subprocesses against a live in-process hub."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from taskhub import AuthenticationFailed, Client, PermissionDenied, Server, config
from taskhub.hub.auth import verify_key
from tests.conftest import ClientFactory, ServerFactory

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Run:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def one_error_line(self) -> str:
        assert self.code == 1, (self.code, self.stdout, self.stderr)
        assert "Traceback" not in self.stderr
        assert self.stderr.count("\n") == 1 and self.stderr.startswith("error: "), self.stderr
        return self.stderr


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKHUB_")}
    env.update(COLUMNS="200", NO_COLOR="1")
    env.pop("FORCE_COLOR", None)
    env.update(extra)
    return env


async def cli_process(*args: str, stdin: int | None = None, **env: str) -> Process:
    """Start ``python -m taskhub ARGS`` with its output piped, in ``_env(**env)``."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskhub",
        *args,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(**env),
    )


async def cli(*args: str, stdin: str | None = None, timeout: float = 30, **env: str) -> Run:
    """Run ``python -m taskhub ARGS`` without blocking the hub's event loop."""
    proc = await cli_process(*args, stdin=subprocess.PIPE, **env)
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


# --- pub ------------------------------------------------------------------------------------
async def test_pub_wait_prints_updates_on_stderr_and_the_result_as_json(
    server: Server, make_client: ClientFactory
) -> None:
    worker = await make_client("w")

    async def work(task: Any) -> Any:
        payload = await task.get_payload()
        await task.update({"done": 1, "total": 2})
        await task.update({"done": 2, "total": 2})
        return {"got": payload}

    await worker.sub("job:run", work)
    run = await cli("pub", "job:run", '{"n": 1}', "--wait", "--url", server.url)
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout) == {"got": {"n": 1}}
    assert run.stdout.count("\n") == 1  # stdout is nothing but the JSON
    assert 'update: {"done": 2, "total": 2}' in run.stderr
    assert "success" in run.stderr


async def test_pub_wait_live_status_line_goes_to_stderr(
    server: Server, make_client: ClientFactory
) -> None:
    worker = await make_client("w")

    async def work(task: Any) -> Any:
        await task.update({"done": 1, "total": 4})
        await asyncio.sleep(0.4)  # the status line refreshes 10 times a second
        await task.update({"progress": 0.5})
        await asyncio.sleep(0.4)
        return 7

    await worker.sub("job:run", work)
    run = await cli("pub", "job:run", "--wait", "--url", server.url, FORCE_COLOR="1")
    assert run.code == 0, run.stderr
    assert run.stdout == "7\n"  # no control codes on stdout
    shown = ANSI.sub("", run.stderr)
    assert "1/4" in shown and "50%" in shown and "start" in shown


async def test_pub_wait_exit_codes(server: Server, make_client: ClientFactory) -> None:
    worker = await make_client("w")

    async def work(task: Any) -> Any:
        kind = await task.get_payload()
        if kind == "fail":
            raise RuntimeError("it broke at [step] 2")  # brackets are text, not markup
        await task.drop()

    await worker.sub("job:run", work)
    failed = await cli("pub", "job:run", '"fail"', "--wait", "--url", server.url)
    assert failed.code == 2 and failed.stdout == ""
    assert "RuntimeError: it broke at [step] 2" in failed.stderr
    dropped = await cli("pub", "job:run", '"drop"', "--wait", "--url", server.url)
    assert dropped.code == 3 and dropped.stdout == ""
    assert "without a result" in dropped.stderr
    timed_out = await cli(
        "pub", "nobody:home", "--wait", "--start-timeout", "0.2", "--url", server.url
    )
    assert timed_out.code == 2 and "fail" in timed_out.stderr


async def test_pub_options_reach_the_task(server: Server, make_client: ClientFactory) -> None:
    c = await make_client("reader")
    args = ["pub", "later:run", "[1]", "--url", server.url, "--priority", "3", "--timeout", "9"]
    args += ["--start-timeout", "30", "--delay", "1h", "--idempotency-key", "k-1"]
    first = await cli(*args)
    assert first.code == 0, first.stderr
    task_id = first.stdout.strip()
    again = await cli(*args)
    assert again.stdout.strip() == task_id  # the idempotency key
    task = await c.get(task_id)
    options = task["options"]
    assert options["priority"] == 3 and options["timeout"] == 9 and options["key"] == "k-1"
    assert options["start_timeout"] == 30
    assert task["state"] == "init"


# --- tasks ----------------------------------------------------------------------------------
async def test_tasks_ls_pages_and_filters(server: Server, make_client: ClientFactory) -> None:
    c = await make_client("p")
    ids = [await c.pub("pool:wait", i).accepted() for i in range(3)]
    await c.pub("other:thing").accepted()
    run = await cli("tasks", "ls", "--action", "pool:wait", "--url", server.url)
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["id", "action", "state", "publisher", "created", "duration"]
    assert [line.split()[0] for line in lines[1:]] == ids
    assert all(line.split()[1:4] == ["pool:wait", "init", "p"] for line in lines[1:])

    first = await cli("tasks", "ls", "--limit", "2", "--url", server.url)
    assert [line.split()[0] for line in first.stdout.splitlines()[1:]] == ids[:2]
    assert f"--after {ids[1]}" in first.stderr
    rest = await cli("tasks", "ls", "--after", ids[1], "--json", "--url", server.url)
    page = json.loads(rest.stdout)
    assert [t["id"] for t in page["tasks"]][:1] == [ids[2]] and page["next"] is None

    none = await cli("tasks", "ls", "--state", "success", "--json", "--url", server.url)
    assert json.loads(none.stdout)["tasks"] == []


async def test_tasks_show_has_fields_deliveries_and_timeline(
    server: Server, make_client: ClientFactory
) -> None:
    worker, p = await make_client("w"), await make_client("p")

    async def work(task: Any) -> Any:
        await task.update({"step": 1})
        return {"ok": True}

    await worker.sub("job:run", work)
    handle = p.pub("job:run", None, priority=2)
    await handle.get_result()
    run = await cli("tasks", "show", str(handle.id), "--url", server.url)
    assert run.code == 0, run.stderr
    text = run.stdout
    assert f"id           {handle.id}" in text
    assert re.search(r"state\s+success", text) and re.search(r'result\s+\{"ok": true\}', text)
    assert '"priority": 2' in text
    assert re.search(r"\n w\s+done\s+1\s+\d", text), text  # the delivery: group w
    timeline = text.split("timeline", 1)[1]
    kinds = [line.split()[3] for line in timeline.splitlines()[2:] if line.strip()]
    assert kinds == ["init", "offer", "start", "update", "success"]

    as_json = json.loads(
        (await cli("tasks", "show", str(handle.id), "--json", "--url", server.url)).stdout
    )
    assert as_json["task"]["result"] == {"ok": True}
    assert [e["type"] for e in as_json["events"]][-1] == "success"


async def test_tasks_show_of_a_running_task_returns(
    server: Server, make_client: ClientFactory
) -> None:
    p = await make_client("p")
    task_id = await p.pub("pool:wait").accepted()
    run = await cli("tasks", "show", task_id, "--json", "--url", server.url, timeout=10)
    assert run.code == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["task"]["state"] == "init" and got["events"][0]["type"] == "init"


async def test_tasks_cancel(server: Server, make_client: ClientFactory) -> None:
    p = await make_client("p")
    task_id = await p.pub("pool:wait").accepted()
    run = await cli("tasks", "cancel", task_id, "--url", server.url)
    assert run.code == 0, run.stderr
    assert "cancelled" in run.stderr
    task = await p.get(task_id)
    assert task["state"] == "fail" and task["error"]["reason"] == "cancelled"
    again = await cli("tasks", "cancel", task_id, "--url", server.url)
    assert "already ended" in again.one_error_line()


async def test_tasks_retry_publishes_a_fresh_copy(
    server: Server, make_client: ClientFactory
) -> None:
    worker, p = await make_client("w"), await make_client("p")
    calls: list[Any] = []

    async def work(task: Any) -> Any:
        calls.append(await task.get_payload())
        if len(calls) == 1:
            raise ValueError("first time fails")
        return "second time works"

    await worker.sub("job:run", work)
    handle = p.pub("job:run", {"to": "x"}, priority=4, key="once", timeout=30)
    with pytest.raises(Exception, match="first time fails"):
        await handle.get_result()
    run = await cli("tasks", "retry", str(handle.id), "--url", server.url)
    assert run.code == 0, run.stderr
    new_id = run.stdout.strip()
    assert new_id and new_id != handle.id
    for _ in range(200):
        task = await p.get(new_id)
        if task["state"] == "success":
            break
        await asyncio.sleep(0.02)
    assert task["result"] == "second time works" and calls == [{"to": "x"}, {"to": "x"}]
    assert task["options"]["priority"] == 4 and task["options"]["timeout"] == 30
    assert "key" not in task["options"]
    assert task["publisher"] == "cli"

    succeeded = await cli("tasks", "retry", new_id, "--url", server.url)
    assert "--force" in succeeded.one_error_line()
    running = await p.pub("pool:wait").accepted()
    assert (
        "still running"
        in (await cli("tasks", "retry", running, "--url", server.url)).one_error_line()
    )


async def test_dlq_ls_and_requeue(server: Server, make_client: ClientFactory) -> None:
    worker, p = await make_client("w"), await make_client("p")
    attempts: list[int] = []

    async def work(task: Any) -> Any:
        attempts.append(task.attempt)
        if len(attempts) == 1:
            raise RuntimeError("dead")
        return "alive"

    await worker.sub("job:run", work)
    handle = p.pub("job:run", 1, retries=0)
    with pytest.raises(Exception, match="dead"):
        await handle.get_result()
    listed = await cli("dlq", "ls", "--url", server.url)
    assert listed.code == 0 and handle.id in listed.stdout and "dead" in listed.stdout
    requeued = await cli("dlq", "requeue", str(handle.id), "--url", server.url)
    assert requeued.code == 0, requeued.stderr
    assert requeued.stdout.strip() not in ("", handle.id)


# --- watch ----------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def watching(pattern: str, *args: str, **env: str) -> AsyncIterator[asyncio.StreamReader]:
    """``taskhub watch PATTERN ARGS`` once it says it watches; its stdout; stopped at the end."""
    proc = await cli_process("watch", pattern, *args, **env)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(15):
            assert f"watching {pattern}".encode() in await proc.stderr.readline()
        yield proc.stdout
    finally:
        proc.terminate()
        await proc.wait()


async def test_watch_live_table_shows_one_row_per_task(
    server: Server, make_client: ClientFactory
) -> None:
    worker, p = await make_client("w"), await make_client("p")
    await worker.sub("geo:geocode", lambda t: {"lat": 59.9})
    seen = ""
    async with watching("geo:*", "--url", server.url, FORCE_COLOR="1", LINES="30") as out:
        handles = [p.pub("geo:geocode", "Oslo"), p.pub("geo:geocode", "Bergen")]
        for h in handles:
            await h.get_result()
        async with asyncio.timeout(10):
            while not all(f"{h.id} geo:geocode success" in seen for h in handles):
                chunk = await out.read(4096)
                assert chunk, "watch ended"
                seen += chunk.decode()
                seen = re.sub(r" +", " ", ANSI.sub("", seen))
    assert "id action state last event service age" in seen
    assert 'success {"lat": 59.9} w' in seen
    last_frame = seen.rsplit("id action state", 1)[1]
    rows = [line for line in last_frame.splitlines() if "geo:geocode" in line]
    assert len(rows) == 2  # updated in place: one row per task, newest first
    assert rows[0].split()[0] == handles[1].id


async def test_watch_lines_keeps_one_line_per_event(
    server: Server, make_client: ClientFactory
) -> None:
    worker, p = await make_client("w"), await make_client("p")
    await worker.sub("geo:geocode", lambda t: 1)
    async with watching("geo:*", "--lines", FORCE_COLOR="1", TASKHUB_URL=server.url) as out:
        handle = p.pub("geo:geocode", "Oslo")
        await handle.get_result()
        lines = []
        async with asyncio.timeout(10):
            while len(lines) < 4:
                lines.append(ANSI.sub("", (await out.readline()).decode()))
    assert [line.split()[3] for line in lines] == ["init", "offer", "start", "success"]


# --- creds ----------------------------------------------------------------------------------
async def test_creds_add_writes_a_hash_a_hub_accepts(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    original = '# my hub\n[server]\nport = 8080  # the port\n\n[[actions]]\nname = "e:s"\n'
    path.write_text(original)
    run = await cli(
        "creds",
        "add",
        "web",
        "--config",
        str(path),
        "--pub",
        "job",
        "--sub",
        "job:run",
        "--max-connections",
        "2",
    )
    assert run.code == 0, run.stderr
    key = run.stdout.strip()
    assert len(key) > 30 and "\n" not in key
    assert "ONCE" in run.stderr and key not in run.stderr
    text = path.read_text()
    assert key not in text and "key_hash" in text
    assert text.startswith("# my hub\n[server]\nport = 8080  # the port\n")
    assert '[[actions]]\nname = "e:s"' in text

    dup = await cli("creds", "add", "web", "--config", str(path))
    assert "already exists" in dup.one_error_line()
    await cli("creds", "add", "ops", "--config", str(path), "--sub", "*")

    listed = await cli("creds", "ls", "--config", str(path), "--json")
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["web", "ops"]
    assert rows[0]["pub_permissions"] == ["job"] and rows[0]["max_connections"] == 2
    assert "scrypt" not in listed.stdout
    table = await cli("creds", "ls", "--config", str(path))
    assert "scrypt" not in table.stdout and "web" in table.stdout

    server = config.load(path, port=0, store="memory://")
    await server.start()
    try:
        async with Client(server.url, name="web", key=key) as web:
            assert await web.pub("job:run").accepted()
            with pytest.raises(PermissionDenied):  # the permissions were written too
                await web.pub("pool:x").accepted()
        with pytest.raises(AuthenticationFailed):
            async with Client(server.url, name="web", key=key + "x", connect_timeout=2):
                pass
        http = await cli("tasks", "ls", "--url", server.url, "--name", "web", "--key", key)
        assert http.code == 0, http.stderr
    finally:
        await server.stop()

    removed = await cli("creds", "rm", "ops", "--config", str(path))
    assert removed.code == 0
    assert [
        r["name"]
        for r in json.loads((await cli("creds", "ls", "--config", str(path), "--json")).stdout)
    ] == ["web"]
    missing = await cli("creds", "rm", "ops", "--config", str(path))
    assert "no credential 'ops'" in missing.one_error_line()


async def test_creds_add_creates_the_file_and_hash_reads_stdin(tmp_path: Path) -> None:
    path = tmp_path / "new.toml"
    run = await cli("creds", "add", "svc", TASKHUB_CONFIG=str(path))
    assert run.code == 0 and path.exists()
    assert (path.stat().st_mode & 0o077) == 0  # a new file is private
    hashed = await cli("creds", "hash", stdin="s3cret\n")
    assert hashed.code == 0 and verify_key("s3cret", hashed.stdout.strip())
    assert (await cli("creds", "hash", stdin="")).one_error_line()
    bad_name = await cli("creds", "add", "a:b", "--config", str(path))
    assert "a:b" in bad_name.one_error_line()
    bad_perm = await cli("creds", "add", "x", "--pub", "a b", "--config", str(path))
    assert "' '" in bad_perm.one_error_line()


# --- errors: one line on stderr, exit status 1 ------------------------------------------------
async def test_a_port_in_use_is_one_error_line_and_frees_the_store(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """uvicorn answers a port in use with sys.exit: the CLI says which address and why, in
    one line with status 1, and an embedded Server raises OSError with its store closed."""
    busy = await make_server()
    run = await cli("serve", "--store", "memory://", "--port", str(busy.port))
    assert run.code == 1 and "Traceback" not in run.stderr, run.stderr
    last = run.stderr.splitlines()[-1]  # after the hub's start-up warning (no credentials)
    assert last.startswith(f"error: could not listen on 127.0.0.1:{busy.port}: "), last
    assert "address already in use" in last
    assert "uvicorn.error" not in run.stderr  # said once, in the error line
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    failed = Server(store=db, port=busy.port)
    with pytest.raises(OSError, match=f"could not listen on 127.0.0.1:{busy.port}"):
        await failed.start()
    await failed.stop()  # nothing to stop, and no error raised again
    await make_server(store=db)  # the file's lock was given back: another hub may open it


async def test_errors_are_one_line(make_server: ServerFactory, tmp_path: Path) -> None:
    server = await make_server(creds=[{"name": "web", "key": "right", "pub_permissions": ["*"]}])
    wrong = {"TASKHUB_URL": server.url, "TASKHUB_NAME": "web", "TASKHUB_KEY": "wrong"}
    env = {"TASKHUB_URL": server.url, "TASKHUB_NAME": "web", "TASKHUB_KEY": "right"}
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = ")
    typo = tmp_path / "typo.toml"
    typo.write_text("[server]\nportt = 5\n")
    # (what the one line says, the command, its environment)
    cases: list[tuple[str, list[str], dict[str, str]]] = [
        # connection refused: over HTTP and over the WebSocket
        ("could not reach", ["tasks", "ls", "--url", "ws://127.0.0.1:9"], {}),
        ("could not connect", ["pub", "a:b", "--url", "ws://127.0.0.1:9"], {}),
        # auth failed
        *(
            ("wrong key", args, wrong)
            for args in (
                ["tasks", "ls"],
                ["tasks", "show", "X"],
                ["pub", "a:b"],
                ["tasks", "retry", "X"],
            )
        ),
        # not found
        *(
            ("NOPE", args, env)
            for args in (
                ["tasks", "show", "NOPE"],
                ["tasks", "cancel", "NOPE"],
                ["tasks", "retry", "NOPE"],
            )
        ),
        # bad JSON
        ("not valid JSON", ["pub", "a:b", "{nope"], env),
        # bad config
        ("not valid TOML", ["creds", "ls", "--config", str(bad)], {}),
        ("not valid TOML", ["creds", "add", "x", "--config", str(bad)], {}),
        ("not valid TOML", ["serve", "--config", str(bad)], {}),
        # not eaten as markup
        ("[server] has an unknown setting 'portt'", ["serve", "--config", str(typo)], {}),
        ("does not exist", ["creds", "ls", "--config", str(tmp_path / "none.toml")], {}),
        # bad input
        ("--url", ["tasks", "ls", "--url", "ftp://x"], {}),
        ("delay", ["pub", "a:b", "--delay", "1 fortnight"], env),
        ("state", ["tasks", "ls", "--state", "nah"], env),
    ]
    # Independent commands, two at a time: each is mostly its interpreter's start-up. Not
    # more: the hub checks at most two keys at a time from one address (auth.Throttle).
    at_once = asyncio.Semaphore(2)

    async def run(args: list[str], extra: dict[str, str]) -> Run:
        async with at_once:
            return await cli(*args, **extra)

    runs = await asyncio.gather(*(run(args, extra) for _, args, extra in cases))
    for (says, args, _), done in zip(cases, runs, strict=True):
        assert says in done.one_error_line(), args
