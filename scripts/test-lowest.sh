#!/usr/bin/env bash
# Run a representative part of the test suite with every dependency at the LOWEST version
# pyproject.toml allows (uv's --resolution lowest-direct), in a scratch venv (.venv-lowest),
# so that a floor that does not work fails here instead of on a user's machine (issue 15,
# item 17: websockets 15, uvicorn 0.50-0.52, redis 5-7.1, typer 0.12 and croniter < 6.1 each
# broke at run time). `make test` runs it; about a minute with a warm uv cache (two workers,
# as the main run).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-lowest
UV=.venv/bin/uv  # a dev dependency of the project
"$UV" venv -q --allow-existing -p .venv/bin/python "$VENV"
# The test tools, with the floors the dev extra declares (lowest too: they are direct here).
mapfile -t TOOLS < <(.venv/bin/python - <<'PY'
import re, tomllib
dev = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]
for req in dev:
    if re.split(r"[<>=!~; \[]", req)[0] in {
        "pytest", "pytest-asyncio", "pytest-timeout", "pytest-xdist", "hypothesis"
    }:
        print(req)
PY
)
"$UV" pip install -q --python "$VENV/bin/python" --resolution lowest-direct -e '.[server]' "${TOOLS[@]}"
echo "test-lowest: $("$UV" pip freeze -q --python "$VENV/bin/python" | grep -iE \
  '^(msgspec|websockets|uvicorn|fastapi|fastapi-offline|starlette|uvloop|typer|rich|croniter|prometheus-client|httpx|tomlkit|hiredis|redis)==' \
  | tr '\n' ' ')"

# Every dependency's code path at least once: the wire codec and lifecycle (msgspec), the
# hub's uvicorn protocol and the client's websockets protocol, HTTP (fastapi, starlette,
# httpx), schedules (croniter), metrics (prometheus-client), the CLI (typer, rich, tomlkit),
# and the stores (redis, hiredis). test_typing.py runs mypy, a dev tool this venv does not have.
# Warnings are shown here, not errors (pyproject's filterwarnings = error holds for the main
# run): the floors' own deprecations (redis 7.2's cluster passes its deprecated lib_name) are
# fixed in the versions the main run installs. The lifecycle state machine (test_lifecycle_
# machine.py) checks the lifecycle, not a floor, and hypothesis 6.100 runs it for minutes.
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -o timeout=60 -W default -n 2 --dist loadfile \
    tests/unit --ignore=tests/unit/test_typing.py --ignore=tests/unit/test_lifecycle_machine.py \
    tests/store/test_conformance.py tests/store/test_redis.py \
    tests/integration/test_roundtrip.py tests/integration/test_frames.py \
    tests/integration/test_events.py tests/integration/test_watch.py \
    tests/integration/test_close.py tests/integration/test_slow_reader.py \
    tests/integration/test_flusher.py tests/integration/test_http.py \
    tests/integration/test_metrics.py \
    "tests/integration/test_cli.py::test_creds_add_writes_a_hash_a_hub_accepts" \
    "tests/integration/test_cli.py::test_tasks_ls_pages_and_filters" \
    "$@"
