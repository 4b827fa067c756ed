"""The deployment recipes in deploy/, run as far as this machine can: Docker cannot build here,
so the Dockerfile's own steps (its COPY lines, its install line, its ENV, its entry command and
its health check) run in a fresh virtualenv and a temporary directory standing for the image
and its volume, parsed out of the file so that the test and the recipe cannot drift apart. The
systemd unit's command and environment run the same way."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhub import Client
from tests.integration.test_install import ROOT, build_context, make_venv
from tests.redisproc import free_port

DEPLOY = ROOT / "deploy"


def dockerfile(path: Path = DEPLOY / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    steps: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        steps.append((word.upper(), rest.strip()))
    return steps


def one(steps: list[tuple[str, str]], word: str) -> str:
    found = [rest for w, rest in steps if w == word]
    assert len(found) == 1, (word, found)
    return found[0]


def env_pairs(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(text))


def test_the_image_is_slim_runs_as_a_user_keeps_a_volume_and_checks_health() -> None:
    steps = dockerfile()
    assert steps[0][0] == "FROM" and "-slim" in steps[0][1]
    users = [rest for w, rest in steps if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    volume = one(steps, "VOLUME")
    store = {k: v for w, rest in steps if w == "ENV" for k, v in env_pairs(rest).items()}
    assert store["TASKHUB_STORE"] == f"sqlite:///{volume}/taskhub.db"  # absolute, in the volume
    assert "/healthz" in one(steps, "HEALTHCHECK")
    assert "written against" in (DEPLOY / "Dockerfile").read_text().lower()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The image, built the way the Dockerfile builds it: its COPY lines into a working
    directory, then its pip install line, in a fresh virtualenv."""
    root = tmp_path_factory.mktemp("image")
    context = build_context(root / "context")
    bin_dir = make_venv(root / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"  # `pip` and `python` are the image's
    workdir = root / "opt"
    workdir.mkdir()
    steps = dockerfile()
    installs = [rest for w, rest in steps if w == "RUN" and "pip install" in rest]
    assert len(installs) == 1, installs
    for word, rest in steps:
        if word == "WORKDIR" and rest.startswith("/var/lib"):
            break  # past the build: the rest is the container's run time
        if word == "COPY":
            *sources, dest = shlex.split(rest)
            target = workdir / dest
            for source in sources:
                src = context / source
                if src.is_dir():
                    shutil.copytree(src, target, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target / Path(source).name)
        if word == "RUN" and rest in installs:
            run = subprocess.run(
                ["sh", "-c", rest], cwd=workdir, env=env, capture_output=True, text=True,
                timeout=900,
            )  # fmt: skip
            assert run.returncode == 0, run.stderr[-3000:]
    yield {"bin": bin_dir, "env": env, "steps": steps}


def health(image: dict[str, Any], env: dict[str, str]) -> int:
    command = re.sub(r"^(--\S+\s+)*CMD\s+", "", one(image["steps"], "HEALTHCHECK"))
    return subprocess.run(["sh", "-c", command], env=env, capture_output=True).returncode


async def _serve_and_use(
    argv: list[str], env: dict[str, str], cwd: Path, port: int, check: Any
) -> tuple[int, bytes]:
    """Start the hub, wait for its health check, work one task through it with the secret's
    credentials, stop it with SIGTERM; returns its exit status and its log."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        for _ in range(300):  # until the health check passes (or the hub died)
            if proc.returncode is not None or await asyncio.to_thread(check) == 0:
                break
            await asyncio.sleep(0.1)
        assert proc.returncode is None, "the hub exited at start"
        assert await asyncio.to_thread(check) == 0
        url = f"ws://127.0.0.1:{port}"
        async with Client(url, name="app", key="app-key", connect_timeout=5) as client:
            await client.sub("img:resize", lambda task: {"ok": True})
            assert await client.pub("img:resize", {"w": 10}).get_result(timeout=30) == {"ok": True}
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        log = await proc.stderr.read()
        code = await proc.wait()
    return code, log


SECRET = """\
[[credentials]]
name = "app"
key = "app-key"
sub_permissions = ["img"]
pub_permissions = ["img"]
"""


@pytest.mark.timeout(900)
async def test_the_dockerfile_steps_install_serve_and_pass_the_health_check(
    image: dict[str, Any], tmp_path: Path
) -> None:
    steps = image["steps"]
    volume = Path(one(steps, "VOLUME"))
    here = tmp_path / "volume"  # stands for the volume
    here.mkdir()
    env = dict(image["env"])
    for word, rest in steps:
        if word == "ENV":
            env.update({k: v.replace(str(volume), str(here)) for k, v in env_pairs(rest).items()})
    port = free_port()
    # The container listens on 0.0.0.0 inside its own network; here: loopback, a free port.
    env.update(TASKHUB_HOST="127.0.0.1", TASKHUB_PORT=str(port))
    secret = tmp_path / "secret.toml"  # as `docker run --secret` / compose secrets mount it
    secret.write_text(SECRET)
    env["TASKHUB_CREDENTIALS_FILE"] = str(secret)
    argv = json.loads(one(steps, "ENTRYPOINT")) + json.loads(one(steps, "CMD"))
    code, log = await _serve_and_use(argv, env, here, port, lambda: health(image, env))
    assert code == 0, log.decode()[-2000:]
    assert (here / "taskhub.db").exists()  # the store is in the volume
    assert f"file {here}/taskhub.db".encode() in log
    assert health(image, env) != 0  # the check fails once the hub is gone


def unit(path: Path = DEPLOY / "taskhub.service") -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


@pytest.mark.timeout(900)
async def test_the_systemd_unit_serves_with_its_environment_and_credential(
    image: dict[str, Any], tmp_path: Path
) -> None:
    """ExecStart with the unit's Environment=, from the directories systemd would give it:
    the venv stands for /opt/taskhub/venv, tmp_path for StateDirectory and %d."""
    values = unit()
    state = Path("/var/lib") / values["StateDirectory"][0]
    assert values["WorkingDirectory"] == [str(state)] and values["User"] != ["root"]
    here, creds_dir = tmp_path / "state", tmp_path / "credentials"
    here.mkdir()
    creds_dir.mkdir()
    name, _, source = values["LoadCredential"][0].partition(":")
    assert source.startswith("/etc/")
    (creds_dir / name).write_text(SECRET)
    env = dict(image["env"])
    for entry in values["Environment"]:
        key, _, value = entry.partition("=")
        env[key] = value.replace(str(state), str(here)).replace("%d", str(creds_dir))
    port = free_port()
    env.update(TASKHUB_HOST="127.0.0.1", TASKHUB_PORT=str(port))
    argv = shlex.split(values["ExecStart"][0])
    assert argv[0] == "/opt/taskhub/venv/bin/taskhub"
    argv[0] = str(image["bin"] / "taskhub")

    def check() -> int:
        return health(image, env)  # the image's check asks the same /healthz

    code, log = await _serve_and_use(argv, env, here, port, check)
    assert code == 0, log.decode()[-2000:]
    assert (here / "taskhub.db").exists()
    stop = int(values["TimeoutStopSec"][0])
    assert stop > 10  # longer than the hub's default shutdown_grace
