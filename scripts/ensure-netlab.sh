#!/usr/bin/env bash
# Make sure `ip` and `iptables` are there: the cluster partition tests
# (tests/e2e/test_cluster_partition.py) put hubs and Redis in network namespaces and cut them
# apart with iptables DROP rules. Installs them with apt-get (CI runs as root). Does nothing
# when both are already there.
set -euo pipefail

if command -v ip >/dev/null 2>&1 && command -v iptables >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-netlab: install iproute2 and iptables by hand (no apt-get here)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "ensure-netlab: installing iproute2 and iptables with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends iproute2 iptables >/dev/null

if ! command -v ip >/dev/null 2>&1 || ! command -v iptables >/dev/null 2>&1; then
    echo "ensure-netlab: ip or iptables is still missing; install them by hand" >&2
    exit 1
fi
