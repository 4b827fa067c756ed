#!/usr/bin/env bash
# Instructions per task of hub_cpu_bench.py under valgrind's cachegrind: deterministic, so it
# compares two versions on a busy machine where time does not. Runs the bench with n=2,000
# and n=6,000 and divides the difference by 4,000, so start-up cancels out.
#
#   benchmarks/hub_instructions.sh memory://
#   benchmarks/hub_instructions.sh sqlite --frame 8 --flush-each    # a fresh temp file
#   PYTHONPATH=/other/checkout/src benchmarks/hub_instructions.sh memory://   # A/B
#   benchmarks/hub_instructions.sh memory:// --fixed-clock   # A/B within ~0.1 %, not ~1 %
set -euo pipefail
store=${1:?usage: hub_instructions.sh memory://|sqlite [hub_cpu_bench.py flags]}
shift
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-$here/../.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
declare -A total
for n in 2000 6000; do
  url=$store
  if [ "$store" = sqlite ]; then url="sqlite:///$tmp/b$n.db"; fi
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$tmp/cg.$n" \
    "$py" "$here/hub_cpu_bench.py" --n "$n" --rounds 1 --store "$url" "$@" >"$tmp/log.$n" 2>&1 \
    || { cat "$tmp/log.$n" >&2; exit 1; }
  total[$n]=$(awk '/^summary:/ {print $2}' "$tmp/cg.$n")
done
echo "instructions per task ($store $*): $(( (total[6000] - total[2000]) / 4000 ))"
