"""deploy/compose.yaml without Docker: a real redis-server, the three hub services as real
``taskhub serve`` processes with the environment the compose file gives them, and a real
HAProxy with deploy/haproxy.cfg in front. Host names become loopback addresses; everything
else is read from the two files. A worker and a publisher that only know the load balancer's
address work tasks through it, over WebSockets and HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskhub import Client
from tests.e2e.hubproc import HubProcess, free_port
from tests.redisproc import RedisProcess

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SECRET = '[[credentials]]\nname = "app"\nkey = "app-key"\nsub_permissions = ["*"]\npub_permissions = ["*"]\n'  # noqa: E501


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def test_the_compose_file_runs_three_hubs_on_one_redis_behind_the_balancer() -> None:
    services = compose()["services"]
    hubs = {n: s for n, s in services.items() if s.get("build", {}).get("dockerfile")}
    assert sorted(hubs) == ["hub1", "hub2", "hub3"]
    assert all(s["build"]["dockerfile"] == "deploy/Dockerfile" for s in hubs.values())
    stores = {s["environment"]["TASKHUB_STORE"] for s in hubs.values()}
    assert len(stores) == 1 and stores.pop().startswith("redis://redis:")
    urls = {s["environment"]["TASKHUB_ADVERTISE_URL"] for s in hubs.values()}
    assert urls == {f"http://{n}:8080" for n in hubs}
    cfg = (DEPLOY / "haproxy.cfg").read_text()
    assert set(re.findall(r"^\s*server (\w+) (\w+):8080", cfg, re.M)) == {(n, n) for n in hubs}
    assert "written against" in (DEPLOY / "compose.yaml").read_text().lower()


@pytest.fixture
def haproxy() -> str:
    found = shutil.which("haproxy")
    if found is None:
        message = "haproxy is missing: run scripts/ensure-haproxy.sh (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def stack(haproxy: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    redis = RedisProcess(tmp_path / "redis").start()
    secret = tmp_path / "credentials.toml"
    secret.write_text(SECRET)
    services = compose()["services"]
    ports = {name: free_port() for name in ("hub1", "hub2", "hub3")}
    hubs: list[HubProcess] = []
    proxy: subprocess.Popen[bytes] | None = None
    try:
        for name, port in ports.items():
            env = {k: str(v) for k, v in services[name]["environment"].items()}
            for host, p in ports.items():  # the compose network's names, on loopback
                env = {k: v.replace(f"{host}:8080", f"127.0.0.1:{p}") for k, v in env.items()}
            store = re.sub(
                r"redis://redis:6379/", f"redis://127.0.0.1:{redis.port}/", env["TASKHUB_STORE"]
            )
            env["TASKHUB_CREDENTIALS_FILE"] = str(secret)  # where the secret is mounted
            hubs.append(HubProcess(store, port, env=env).start())
        lb, stats = free_port(), free_port()
        cfg = (DEPLOY / "haproxy.cfg").read_text()
        for name, port in ports.items():
            cfg = cfg.replace(f" {name}:8080", f" 127.0.0.1:{port}")
        cfg = cfg.replace("bind :8080", f"bind 127.0.0.1:{lb}")
        cfg = cfg.replace("bind :8404", f"bind 127.0.0.1:{stats}")
        (tmp_path / "haproxy.cfg").write_text(cfg)
        with (tmp_path / "haproxy.log").open("wb") as log:  # the child keeps its own copy
            proxy = subprocess.Popen(
                [haproxy, "-db", "-f", str(tmp_path / "haproxy.cfg")], stdout=log, stderr=log
            )
        yield {"lb": lb, "hubs": hubs, "ports": ports, "log": tmp_path / "haproxy.log"}
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        for hub in hubs:
            hub.stop()
        redis.stop()


def _roles(ports: dict[str, int]) -> list[str]:
    roles = []
    for port in ports.values():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            roles.append(json.load(answer)["role"])
    return sorted(roles)


@pytest.mark.timeout(120)
async def test_tasks_flow_through_the_balancer_to_any_hub(stack: dict[str, Any]) -> None:
    url = f"ws://127.0.0.1:{stack['lb']}"
    for _ in range(200):  # one hub takes the lead; HAProxy's checks find the hubs
        if await asyncio.to_thread(_roles, stack["ports"]) == ["follower", "follower", "leader"]:
            break
        await asyncio.sleep(0.1)
    assert await asyncio.to_thread(_roles, stack["ports"]) == ["follower", "follower", "leader"]
    workers = []
    for i in range(3):  # least-connections spreads them over the hubs
        worker = Client(url, name="app", key="app-key", connect_timeout=10)
        await worker.connect()
        worker.sub("img:resize", lambda task, i=i: {"by": i})
        workers.append(worker)
    try:
        async with Client(url, name="app", key="app-key", connect_timeout=10) as app:
            results = [await app.pub("img:resize", n).get_result(timeout=30) for n in range(6)]
            assert all(set(r) == {"by"} for r in results)

            def over_http() -> Any:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{stack['lb']}/v1/tasks",
                    data=json.dumps({"action": "img:resize", "payload": 1}).encode(),
                    headers={
                        "Authorization": "Bearer app:app-key",
                        "Content-Type": "application/json",
                    },
                )
                with urllib.request.urlopen(request, timeout=10) as answer:
                    task = json.load(answer)
                wait = f"http://127.0.0.1:{stack['lb']}/v1/tasks/{task['id']}/result?wait=20"
                with urllib.request.urlopen(
                    urllib.request.Request(wait, headers={"Authorization": "Bearer app:app-key"}),
                    timeout=30,
                ) as answer:
                    return json.load(answer)

            answer = await asyncio.to_thread(over_http)
            assert "by" in json.dumps(answer)
    finally:
        for worker in workers:
            await worker.close()
