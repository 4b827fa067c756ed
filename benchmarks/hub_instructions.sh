#!/usr/bin/env bash
# Instructions per task of hub_cpu_bench.py under valgrind's cachegrind: deterministic, so it
# compares two versions on a busy machine where time does not. Runs the bench with n=2,000
# and n=6,000 and divides the difference by 4,000, so start-up cancels out.
#
#   benchmarks/hub_instructions.sh memory://
#   benchmarks/hub_instructions.sh sqlite --frame 8 --flush-each    # a fresh temp file
#   PYTHONPATH=/other/checkout/src benchmarks/hub_instructions.sh memory://   # A/B
#   benchmarks/hub_instructions.sh memory:// --fixed-clock   # A/B within ~0.1 %, not ~1 %
#   benchmarks/hub_instructions.sh redis --batched   # a throwaway loopback redis-server per n
#
# With `redis` only the hub's process is counted (the client side of the store: encoding,
# the arguments, packing, redis-py); redis-server's own instructions per task come from
# redis_script_bench.py --valgrind.
set -euo pipefail
store=${1:?usage: hub_instructions.sh memory://|sqlite|redis [hub_cpu_bench.py flags]}
shift
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-$here/../.venv/bin/python}
tmp=$(mktemp -d)
redis_pid=
stop_redis() {
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
  redis_pid=
}
trap 'stop_redis; rm -rf "$tmp"' EXIT
declare -A total
for n in 2000 6000; do
  url=$store
  if [ "$store" = sqlite ]; then url="sqlite:///$tmp/b$n.db"; fi
  if [ "$store" = redis ]; then
    port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
      >"$tmp/redis.$n" 2>&1 &
    redis_pid=$!
    "$py" -c 'import sys; sys.path.insert(0, sys.argv[1]); from common import wait_port
wait_port(int(sys.argv[2]), 15)' "$here" "$port"
    url="redis://127.0.0.1:$port/0"
  fi
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$tmp/cg.$n" \
    "$py" "$here/hub_cpu_bench.py" --n "$n" --rounds 1 --store "$url" "$@" >"$tmp/log.$n" 2>&1 \
    || { cat "$tmp/log.$n" >&2; exit 1; }
  total[$n]=$(awk '/^summary:/ {print $2}' "$tmp/cg.$n")
  stop_redis
done
echo "instructions per task ($store $*): $(( (total[6000] - total[2000]) / 4000 ))"
