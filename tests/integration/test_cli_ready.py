"""What a container and a new user meet first: one-line usage errors, --version and -h, every
setting in ``serve --help``, credentials from the environment or a secrets file, the sqlite
file's absolute path in the log, and a hint when nobody subscribes to a published action."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from taskhub import AuthenticationFailed, Client, Server, __version__, config
from tests.conftest import ClientFactory
from tests.integration.test_cli import ANSI, _env, cli


# --- usage errors, --version, -h, serve --help -------------------------------------------------
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["pub", "--bogus"], "No such option: --bogus (see "),
        (["pub", "--bogus"], " pub --help)"),
        (["serve", "--port", "abc"], "'--port'"),
        (["nope"], "No such command 'nope'"),
        (["pub"], "Missing argument 'action'"),
        (["tasks", "ls", "--state"], "--state"),
    ],
)
async def test_usage_errors_are_one_line(args: list[str], says: str) -> None:
    run = await cli(*args)
    assert says in run.one_error_line()
    assert "╭" not in run.stderr and "Usage:" not in run.stderr


async def test_version_and_short_help() -> None:
    version = await cli("--version")
    assert version.code == 0 and version.stdout.startswith(f"taskhub {__version__} ")
    for args in (["-h"], ["pub", "-h"], ["tasks", "ls", "-h"]):
        run = await cli(*args)
        assert run.code == 0 and "Usage:" in run.stdout and "taskhub" in run.stdout, args


async def test_serve_help_lists_every_setting_with_its_env_var() -> None:
    run = await cli("serve", "--help")
    assert run.code == 0
    text = " ".join(run.stdout.split())
    assert set(config.SETTINGS) == set(config._SERVER_KEYS)  # none missing from the help
    for key, (default, _) in config.SETTINGS.items():
        assert f"{key} / TASKHUB_{key.upper()} (default {default}):" in text, key
    for env in ("TASKHUB_CONFIG", "TASKHUB_CREDENTIALS_FILE", "TASKHUB_CREDENTIALS", "TASKHUB_LOG"):
        assert env in text
    assert "[server]" in text and "[[credentials]]" in text  # brackets are not eaten as markup


# --- credentials from the environment or a secrets file ----------------------------------------
async def _accepts(server: Server, name: str, key: str) -> bool:
    try:
        async with Client(server.url, name=name, key=key, connect_timeout=5):
            return True
    except AuthenticationFailed:
        return False


async def test_credentials_from_the_environment_and_a_secrets_file(tmp_path: Path) -> None:
    secrets = tmp_path / "creds.toml"
    made = await cli("creds", "add", "filed", "--pub", "job", "--config", str(secrets))
    assert made.code == 0, made.stderr
    k1 = made.stdout.strip()  # printed once; the file keeps its hash
    env = {
        "TASKHUB_CREDENTIALS": json.dumps(
            [{"name": "env", "key": "k2", "sub_permissions": ["job"], "max_connections": 2}]
        ),
        "TASKHUB_CREDENTIALS_FILE": str(secrets),
    }
    server = config.load(env=env, store="memory://", port=0)
    await server.start()
    try:
        assert await _accepts(server, "filed", k1)
        assert await _accepts(server, "env", "k2")
        assert not await _accepts(server, "env", "wrong")
        assert not await _accepts(server, "anyone", "")  # not open access any more
    finally:
        await server.stop()
    # the flag names the file as the variable does
    server = config.load(env={}, credentials_file=secrets, store="memory://", port=0)
    await server.start()
    try:
        assert await _accepts(server, "filed", k1)
    finally:
        await server.stop()


async def test_bad_credentials_are_one_line_that_never_shows_the_keys(tmp_path: Path) -> None:
    not_json = await cli("serve", "--store", "memory://", TASKHUB_CREDENTIALS='[{"key": "s3cret"')
    line = not_json.one_error_line()
    assert "TASKHUB_CREDENTIALS is not valid JSON" in line and "s3cret" not in line
    as_string = json.dumps([{"name": "a", "key": "s3cret", "pub_permissions": "job"}])
    wrong_type = (await cli("serve", TASKHUB_CREDENTIALS=as_string)).one_error_line()
    assert "pub_permissions must be a list of strings" in wrong_type and "s3cret" not in wrong_type
    secrets = tmp_path / "creds.toml"
    secrets.write_text('[[credentials]]\nname = "a"\nkey = "x"\n')
    twice = json.dumps([{"name": "a", "key": "y"}])
    dup = (
        await cli("serve", TASKHUB_CREDENTIALS=twice, TASKHUB_CREDENTIALS_FILE=str(secrets))
    ).one_error_line()
    assert "credential 'a' is given twice" in dup and "TASKHUB_CREDENTIALS" in dup
    missing = await cli("serve", "--credentials-file", str(tmp_path / "none.toml"))
    assert "does not exist" in missing.one_error_line()
    secrets.write_text('[server]\nport = 1\n[[credentials]]\nname = "a"\nkey = "x"\n')
    assert (
        "unknown section"
        in (await cli("serve", TASKHUB_CREDENTIALS_FILE=str(secrets))).one_error_line()
    )


# --- the sqlite file's path --------------------------------------------------------------------
async def _listening_line(cwd: Path, store: str) -> str:
    """Start ``taskhub serve`` in ``cwd``, return its "listening" log line, stop it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskhub", "serve", "--port", "0", "--store", store,
        cwd=cwd, stderr=asyncio.subprocess.PIPE, env=_env(PYTHONPATH=os.getcwd()),
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            while line := (await proc.stderr.readline()).decode():
                if "listening on" in line:
                    return line
        raise AssertionError("the hub stopped before listening")
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


async def test_the_log_names_the_absolute_sqlite_path(tmp_path: Path) -> None:
    # Three slashes: relative to the working directory; four: absolute (SQLAlchemy's rule).
    relative = await _listening_line(tmp_path, "sqlite:///var/lib/taskhub/hub.db")
    assert f"file {tmp_path}/var/lib/taskhub/hub.db" in relative, relative
    assert (tmp_path / "var/lib/taskhub/hub.db").exists()
    absolute = tmp_path / "abs" / "hub.db"
    line = await _listening_line(Path("/"), f"sqlite:///{absolute}")
    assert f"(store sqlite:///{absolute}, file {absolute})" in line, line


# --- nobody subscribed ---------------------------------------------------------------------
async def test_pub_says_when_no_worker_subscribes(
    server: Server, make_client: ClientFactory
) -> None:
    hint = "no worker subscribes to 'nobody:home'"
    run = await cli("pub", "nobody:home", "--url", server.url)
    assert run.code == 0 and re.fullmatch(r"[0-9A-Z]{26}\n", run.stdout), run
    assert run.stderr.count(hint) == 1, run.stderr  # the CLI's line, not the log's too
    waited = await cli(
        "pub", "nobody:home", "--wait", "--start-timeout", "0.2", "--url", server.url
    )
    assert waited.code == 2 and waited.stderr.count(hint) == 1, waited.stderr
    worker = await make_client("w")
    await worker.sub("some:one", lambda task: None)
    served = await cli("pub", "some:one", "--wait", "--url", server.url)
    assert served.code == 0 and "no worker subscribes" not in served.stderr, served.stderr


async def test_handle_knows_and_logs_once_per_action_when_nobody_subscribes(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client("pub")
    caplog.set_level(logging.WARNING, logger="taskhub.client")
    first, second = client.pub("nobody:home", 1), client.pub("nobody:home", 2)
    await first.accepted()
    await second.accepted()
    assert first.pooled and second.pooled
    said = [r.getMessage() for r in caplog.records if "no worker subscribes" in r.getMessage()]
    assert len(said) == 1 and "'nobody:home'" in said[0] and first.id in said[0], said
    worker = await make_client("w")
    done = asyncio.Event()
    await worker.sub("nobody:home", lambda task: done.set())
    later = client.pub("nobody:home", 3)
    await later.accepted()
    assert not later.pooled
    await asyncio.wait_for(done.wait(), 5)  # the pooled ones reach the new worker


async def test_pub_wait_keeps_its_count_visible_at_80_columns(
    server: Server, make_client: ClientFactory
) -> None:
    worker = await make_client("w")

    async def work(task: Any) -> Any:
        await task.update({"done": 3, "total": 4, "note": "a long update " * 20})
        return 1

    await worker.sub("job:run", work)
    run = await cli("pub", "job:run", "--wait", "--url", server.url, FORCE_COLOR="1", COLUMNS="80")
    assert run.code == 0, run.stderr
    frames = [f for f in re.split(r"[\r\n]", ANSI.sub("", run.stderr)) if "━" in f]
    assert frames and all("3/4" in f and len(f) <= 80 for f in frames), frames
