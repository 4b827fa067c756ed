"""Structured logs of a real `taskhub serve`: JSON lines, task events at debug, no secrets."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from taskhub import AuthenticationFailed, Client
from tests.e2e.hubproc import HubProcess


async def test_json_logs_carry_task_events_but_no_keys_or_data(tmp_path: Path) -> None:
    secret = uuid.uuid4().hex  # one marker inside every secret: found anywhere = leaked
    key = f"key-{secret}"
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[[credentials]]\nname = "svc"\nkey = "{key}"\n'
        'sub_permissions = ["*"]\npub_permissions = ["*"]\n'
    )
    hub = HubProcess(
        f"sqlite:///{tmp_path / 'hub.db'}",
        None,
        "--config",
        str(config),
        env={"TASKHUB_LOG": "debug", "TASKHUB_LOG_FORMAT": "json"},
    )
    hub.log.unlink(missing_ok=True)
    hub.start()
    try:
        async with Client(hub.url, name="svc", key=key) as client:

            async def work(task: Any) -> Any:
                await task.update({"progress": f"update-{secret}"})
                return {"result": f"result-{secret}"}

            async def fail(task: Any) -> Any:
                raise RuntimeError(f"error-{secret}")

            await client.sub("secret:job", work)
            await client.sub("secret:fail", fail)
            handle = client.pub("secret:job", {"payload": f"payload-{secret}"})
            assert await handle.get_result(timeout=10) == {"result": f"result-{secret}"}
            failing = client.pub("secret:fail", f"payload-{secret}")
            assert await failing.get_result(default="failed", timeout=10) == "failed"
        with pytest.raises(AuthenticationFailed):
            async with Client(hub.url, name="svc", key=f"wrong-{secret}", connect_timeout=2):
                pass
    finally:
        hub.stop()
    text = hub.log.read_text()
    assert secret not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    events = [r for r in records if r.get("logger") == "taskhub.events"]
    kinds = {r["event"] for r in events}
    assert {"task.init", "task.offer", "task.start", "task.update", "task.success"} <= kinds
    assert "task.fail" in kinds
    start = next(r for r in events if r["event"] == "task.start")
    assert start["action"] == "secret:job"
    assert start["task"] == handle.id
    assert start["service"] == "svc"
    assert start["group"] == "svc"
    assert start["level"] == "debug"
    assert any(r.get("msg", "").startswith("SIGTERM") for r in records)
