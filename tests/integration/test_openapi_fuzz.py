"""Schemathesis against the served /openapi.json of a live hub: no 500s, answers match the schema.

Runs the schemathesis CLI as a subprocess (it is synchronous and would block the hub's loop).
The SSE route is left out: a stream on a live task rightly stays open until the task ends.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import ServerFactory

SCHEMATHESIS = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")


@pytest.mark.timeout(120)
@pytest.mark.skipif(not Path(SCHEMATHESIS).exists(), reason="schemathesis is not installed")
async def test_openapi_fuzz_finds_no_server_errors(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(
        creds=[{"name": "fuzz", "key": "k", "sub_permissions": ["*"], "pub_permissions": ["*"]}]
    )
    assert server.hub is not None
    server.hub.limits.max_wait = 0.5  # long polls must not outlast the request timeout
    proc = await asyncio.create_subprocess_exec(
        SCHEMATHESIS,
        "run",
        f"{server.http_url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        # DELETE cancels a task, which stays readable (by design); and a body can match the
        # schema yet break a rule the schema cannot say (a duration string): that is a 422.
        "use_after_free,positive_data_acceptance",
        "--include-path-regex",
        "^/v1/(tasks|consumers|events)",  # the routes of hub/http.py
        "--exclude-path",
        "/v1/tasks/{task_id}/events",
        "--max-examples",
        "15",
        "--request-timeout",
        "10",
        "--seed",
        "1",
        "-H",
        "Authorization: Bearer fuzz:k",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # its cache and reports stay out of the repository
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 100)
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-6000:]
