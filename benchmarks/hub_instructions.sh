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
#   benchmarks/hub_instructions.sh redis-server --batched --fixed-clock
#
# With `redis` only the hub's process is counted (the client side of the store: encoding,
# the arguments, packing, redis-py). With `redis-server` the same burst runs with the hub as
# it is and redis-server under cachegrind instead: redis-server's instructions per task for
# the batches a hub writes (redis_script_bench.py --valgrind writes batches of its own).
set -euo pipefail
store=${1:?usage: hub_instructions.sh memory://|sqlite|redis|redis-server [hub_cpu_bench.py flags]}
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
grind=(valgrind --tool=cachegrind --cache-sim=no)
declare -A total
for n in 2000 6000; do
  url=$store
  hub=("${grind[@]}" --cachegrind-out-file="$tmp/cg.$n")
  if [ "$store" = sqlite ]; then url="sqlite:///$tmp/b$n.db"; fi
  if [ "$store" = redis ] || [ "$store" = redis-server ]; then
    port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    server=(redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp")
    if [ "$store" = redis-server ]; then
      server=("${grind[@]}" --cachegrind-out-file="$tmp/cg.$n" "${server[@]}")
      hub=()
    fi
    "${server[@]}" >"$tmp/redis.$n" 2>&1 &
    redis_pid=$!
    "$py" -c 'import sys; sys.path.insert(0, sys.argv[1]); from common import wait_port
wait_port(int(sys.argv[2]), 60)' "$here" "$port"
    url="redis://127.0.0.1:$port/0"
  fi
  "${hub[@]}" "$py" "$here/hub_cpu_bench.py" --n "$n" --rounds 1 --store "$url" "$@" \
    >"$tmp/log.$n" 2>&1 || { cat "$tmp/log.$n" >&2; exit 1; }
  if [ "$store" = redis-server ]; then
    # cachegrind writes its counts when redis-server exits: a clean shutdown, then wait.
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=
  fi
  total[$n]=$(awk '/^summary:/ {print $2}' "$tmp/cg.$n")
  stop_redis
done
echo "instructions per task ($store $*): $(( (total[6000] - total[2000]) / 4000 ))"
