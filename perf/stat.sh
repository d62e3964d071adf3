#!/usr/bin/env bash
# Instructions (and cycles) sipvane spends per completed call.
#
# With hardware counters (`perf stat -e instructions true` counts), perf stat
# attaches to sipvane while sipvane-bench places the calls. Without them (most
# VMs, this project's CI machine) sipvane runs under callgrind instead, with
# instrumentation switched on only for the measured calls: slow (~50x) but
# the count is exact and stable on a noisy shared machine.
#
# Usage: perf/stat.sh [CALLS [RATE_CPS]]
#   perf/stat.sh                  # 20000 calls at 5000 cps (perf) or 2000 at 200 (callgrind)
#   MODE=callgrind perf/stat.sh   # force the callgrind measurement
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=perf/lib.sh
. "$here/lib.sh"

mode="${MODE:-}"
if [ -z "$mode" ]; then
  if perf stat -x, -e instructions true 2>&1 | grep -q '^[0-9]'; then mode=perf; else mode=callgrind; fi
fi
build

case "$mode" in
  perf)
    calls="${1:-20000}"; rate="${2:-5000}"
    start_lab
    "$bench" uac "$TARGET" --rate "$rate" --duration-ms 1000 --quiet >/dev/null
    secs=$(( (calls + rate - 1) / rate + 2 ))
    "$bench" uac "$TARGET" --rate "$rate" --calls "$calls" --duration-ms $((secs * 1000)) --quiet --json >"$work/uac.json" &
    uac=$!
    perf stat -x, -e instructions,cycles -p "$SIPVANE_PID" -o "$work/stat.csv" -- sleep "$secs"
    wait "$uac"
    ok="$(ok_calls "$work/uac.json")"
    ins="$(awk -F, '$3 ~ /^instructions/ {print $1}' "$work/stat.csv")"
    cyc="$(awk -F, '$3 ~ /^cycles/ {print $1}' "$work/stat.csv")"
    echo "completed calls: $ok"
    awk -v i="$ins" -v c="$cyc" -v n="$ok" 'BEGIN { if (n > 0) printf "instructions/call: %.0f\ncycles/call: %.0f\n", i / n, c / n }'
    ;;
  callgrind)
    calls="${1:-2000}"; rate="${2:-200}"
    command -v valgrind >/dev/null || { echo "stat.sh: valgrind not found (scripts/deps.sh)" >&2; exit 1; }
    # io_uring is opaque to valgrind: measure the epoll driver (same core).
    IO=epoll
    start_lab valgrind --tool=callgrind --instr-atstart=no \
      --callgrind-out-file="$work/callgrind.out.%p"
    "$bench" uac "$TARGET" --rate "$rate" --calls 200 --duration-ms 2000 --quiet >/dev/null
    callgrind_control -i on "$SIPVANE_PID" >/dev/null 2>&1
    secs=$(( (calls + rate - 1) / rate + 2 ))
    "$bench" uac "$TARGET" --rate "$rate" --calls "$calls" --duration-ms $((secs * 1000)) --timeout-ms 20000 --quiet --json >"$work/uac.json"
    callgrind_control -d measured "$SIPVANE_PID" >/dev/null 2>&1
    sleep 1
    ok="$(ok_calls "$work/uac.json")"
    dump="$(ls -t "$work"/callgrind.out.* | head -1)"
    ir="$(sed -n 's/^summary: *\([0-9]*\).*/\1/p; s/^totals: *\([0-9]*\).*/\1/p' "$dump" | head -1)"
    echo "completed calls: $ok (callgrind, epoll driver, $WORKERS worker(s))"
    awk -v i="$ir" -v n="$ok" 'BEGIN { if (n > 0) printf "instructions/call: %.0f\n", i / n }'
    echo "profile: callgrind_annotate $dump"
    ;;
  *) echo "stat.sh: MODE must be perf or callgrind" >&2; exit 2 ;;
esac
