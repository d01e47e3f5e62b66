#!/usr/bin/env bash
# Flakiness check: `make test` N times in a row (default 10) in one fresh clone of
# this repository's HEAD, while one extra process keeps a CPU core busy.
#
#   scripts/repeat_tests.sh [N] [WORKDIR]
#
# WORKDIR (default: a new temporary folder) receives the clone, one log per run
# (run-<i>.log) and summary.txt: each run's exit status, wall time, load average
# before and after, pytest's last line and the tests that failed. The tests need
# ../shared next to the clone (the OpenAI spec and the compose schema): it is linked
# to the shared folder next to this repository when there is one. Exits non-zero if
# any run failed.
set -uo pipefail

runs=${1:-10}
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=${2:-$(mktemp -d)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
if [ -d "$repo/../shared" ] && [ ! -e "$work/shared" ]; then
  ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"
fi
rm -rf "$work/clone"
git clone --quiet "$repo" "$work/clone"
summary="$work/summary.txt"

python3 -c 'while True: pass' &
busy=$!
trap 'kill $busy 2>/dev/null' EXIT

echo "commit $(git -C "$work/clone" rev-parse --short HEAD), $runs runs, busy pid $busy, $(nproc) CPUs" | tee "$summary"
failed=0
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  (cd "$work/clone" && make test PYTEST_ADDOPTS="-p no:cacheprovider -rf" >"$work/run-$i.log" 2>&1)
  rc=$?
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  result=$(grep -E "^=+ .*(passed|failed|error).* in " "$work/run-$i.log" | tail -1)
  echo "run $i: exit $rc, $(($(date +%s) - start)) s, load $load_before..$(cut -d' ' -f1 /proc/loadavg) $result" | tee -a "$summary"
  grep "^FAILED\|^ERROR" "$work/run-$i.log" | tee -a "$summary"
done
echo "$failed of $runs runs failed" | tee -a "$summary"
[ "$failed" -eq 0 ]
