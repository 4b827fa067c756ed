#!/usr/bin/env bash
# Make sure `haproxy` is on PATH: tests/e2e/test_compose.py runs deploy/haproxy.cfg in front of
# three real hubs. Installs Debian's package with apt-get (CI runs as root); does nothing when
# haproxy is already there.
set -euo pipefail

if command -v haproxy >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-haproxy: no apt-get; install haproxy by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "ensure-haproxy: installing haproxy with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends haproxy >/dev/null
