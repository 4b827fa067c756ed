#!/usr/bin/env bash
# Make sure `node` and `npm` are on PATH: the JS client's tests (clients/js) run with them.
# Installs them with apt-get (CI runs as root); Debian 12's package is Node 18, which the client
# and its tests also run on (they need nothing newer). Does nothing when they are there.
set -euo pipefail

major() { node -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null || echo 0; }

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && [ "$(major)" -ge 18 ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-node: node >= 18 and npm are needed for clients/js; install them by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "ensure-node: installing nodejs and npm with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "ensure-node: node or npm is still missing; install them by hand" >&2
    exit 1
fi
if [ "$(major)" -lt 18 ]; then
    echo "ensure-node: apt installed node $(node --version), but clients/js needs 18 or newer" >&2
    exit 1
fi
