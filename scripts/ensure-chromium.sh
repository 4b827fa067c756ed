#!/usr/bin/env bash
# Make sure Debian's chromium is at /usr/bin/chromium: the dashboard tests
# (tests/e2e/test_dashboard.py) drive it with Playwright. Playwright's own browser download
# (`playwright install`) is never used. Does nothing when chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: no apt-get; install chromium at /usr/bin/chromium by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "ensure-chromium: installing chromium with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null

if [ ! -x /usr/bin/chromium ]; then
    echo "ensure-chromium: /usr/bin/chromium is still missing; install it by hand" >&2
    exit 1
fi
