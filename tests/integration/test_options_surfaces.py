"""Publish options and config keys as a running hub serves them (issue 18): the HTTP API's
task options are the options table's, and `taskhub serve` still reads the config keys older
versions named differently, saying at start which key to use instead (docs/operations.md)."""

from __future__ import annotations

from pathlib import Path

import httpx

from taskhub.options_table import PUB_OPTIONS
from tests.conftest import ServerFactory
from tests.integration.test_cli import cli


async def test_the_served_task_options_are_the_table_s(make_server: ServerFactory) -> None:
    server = await make_server()
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        spec = (await http.get("/openapi.json")).json()
    fields = spec["components"]["schemas"]["TaskOptions"]["properties"]
    assert set(fields) == {o.name for o in PUB_OPTIONS}
    for o in PUB_OPTIONS:
        types = {t.get("type") for t in fields[o.name].get("anyOf", [fields[o.name]])}
        assert ("string" in types) == (o.convert == "interval" or o.wire.startswith("string")), (
            o.name,
            types,
        )


async def test_serve_reads_an_old_key_and_says_what_to_use(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    busy = await make_server()  # its port is taken: serve stops once it has read the config
    path = tmp_path / "hub.toml"
    path.write_text("[server]\nstore = 'memory://'\ntask_end_timeout = 30\n")
    run = await cli(
        "serve", "--config", str(path), "--port", str(busy.port), TASKHUB_RETRY_BACKOFF="2"
    )
    assert run.code == 1 and "Traceback" not in run.stderr, run.stderr
    assert "[server] task_end_timeout is deprecated: use [server] timeout" in run.stderr
    assert "TASKHUB_RETRY_BACKOFF is deprecated: use TASKHUB_BACKOFF" in run.stderr
    assert run.stderr.splitlines()[-1].startswith("error: could not listen on")


async def test_serve_refuses_an_old_and_a_new_key_together(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text("[server]\nstore = 'memory://'\ntask_end_timeout = 30\ntimeout = 20\n")
    error = (await cli("serve", "--config", str(path))).one_error_line()
    assert "[server] task_end_timeout and [server] timeout are the same setting" in error


async def test_tasks_retry_copies_a_traced_task(make_server: ServerFactory) -> None:
    # A stored task's options include `trace` (set by a traced publisher); `taskhub tasks
    # retry` copies the options the Python `pub` takes, so it publishes the copy instead of
    # failing on an option `pub` does not take.
    server = await make_server()
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    body = {"action": "nobody:here", "options": {"trace": trace, "priority": 2}}
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        task = (await http.post("/v1/tasks", json=body)).json()
        await http.delete(f"/v1/tasks/{task['id']}")  # cancelled: failed, so it may be retried
        run = await cli("tasks", "retry", task["id"], "--url", server.url)
        assert run.code == 0 and "Traceback" not in run.stderr, run.stderr
        copy = (await http.get(f"/v1/tasks/{run.stdout.strip()}")).json()
    assert copy["options"]["priority"] == 2 and "trace" not in copy["options"]
