#!/bin/bash
# Sequential round trips on memory:// and the hub's CPU per task (docs/decisions.md, "A memory
# store's round committed in the input's turn"):
#   PYTHONPATH=<checkout>/src benchmarks/seq_cpu.sh .venv/bin/python .      (N=3000 by default)
set -euo pipefail
PY=$1
ROOT=$2
cd "$ROOT"
PORT=$("$PY" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
LOGS=$(mktemp -d /tmp/seq-cpu.XXXX)
"$PY" -m taskhub serve --host 127.0.0.1 --port "$PORT" --store memory:// > "$LOGS/hub.log" 2>&1 &
HUB=$!
trap 'kill $HUB ${W:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$LOGS"' EXIT
sleep 1.5
"$PY" benchmarks/taskhub_bench.py worker --url "ws://127.0.0.1:$PORT" --concurrency 8 > "$LOGS/w.log" 2>&1 &
W=$!
sleep 1
N=${N:-3000}
t0=$(awk '{print $14+$15}' "/proc/$HUB/stat")
w0=$(awk '{print $14+$15}' "/proc/$W/stat")
"$PY" benchmarks/taskhub_bench.py publish --url "ws://127.0.0.1:$PORT" --n 1 --seq "$N" --warmup 200 > "$LOGS/p.out"
t1=$(awk '{print $14+$15}' "/proc/$HUB/stat")
w1=$(awk '{print $14+$15}' "/proc/$W/stat")
TICK=$(getconf CLK_TCK)
"$PY" - "$LOGS/p.out" "$t0" "$t1" "$w0" "$w1" "$TICK" "$N" <<'PY'
import json, sys
out = sys.argv[1]
t0, t1, w0, w1, tick, n = (int(a) for a in sys.argv[2:])
result = [json.loads(line) for line in open(out) if line.startswith("{")][-1]
per_task = 1e6 / tick / (n + 201)  # the warm-up's 200 and the burst's 1 too
pub = result.get("seq_cpu_us")  # an older taskhub_bench.py does not say
print(
    f"seq_p50_ms {result['seq_p50_ms']:.3f}  hub_us_per_task {(t1 - t0) * per_task:.1f}"
    f"  worker_us_per_task {(w1 - w0) * per_task:.1f}"
    f"  publisher_us_per_task {'-' if pub is None else format(pub, '.1f')}"
)
PY
