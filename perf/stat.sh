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
#   MODE=callgrind PROXIES=sipvane,kamailio perf/stat.sh
#                                 # both proxies in one run, and their ratio
#                                 # (callgrind only: Kamailio's forked children
#                                 # are each counted, instrumented from the end
#                                 # of the warm-up to the end of the calls)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=perf/lib.sh
. "$here/lib.sh"

mode="${MODE:-}"
PROXIES="${PROXIES:-sipvane}"
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
    declare -A per_call
    for proxy in ${PROXIES//,/ }; do
      vg=(valgrind --tool=callgrind --instr-atstart=no --trace-children=yes
          --callgrind-out-file="$work/callgrind.$proxy.%p")
      case "$proxy" in
        sipvane) start_lab "${vg[@]}"; main="$SIPVANE_PID" ;;
        kamailio) start_kamailio "${vg[@]}"; main="$KAMAILIO_PID" ;;
        *) echo "stat.sh: PROXIES: sipvane and/or kamailio" >&2; exit 2 ;;
      esac
      "$bench" uac "$TARGET" --rate "$rate" --calls 200 --duration-ms 2000 --quiet >/dev/null
      # Every process of the proxy: sipvane is one; Kamailio's forked children
      # (UDP receiver, timers, dispatcher prober) do its work. Each counts only
      # between these two points, background work included.
      procs=("$main" $(pgrep -P "$main" || true))
      for p in "${procs[@]}"; do callgrind_control -i on "$p" >/dev/null 2>&1 || true; done
      marker="$work/marker.$proxy"; touch "$marker"; sleep 0.1
      secs=$(( (calls + rate - 1) / rate + 2 ))
      "$bench" uac "$TARGET" --rate "$rate" --calls "$calls" --duration-ms $((secs * 1000)) --timeout-ms 20000 --quiet --json >"$work/uac.$proxy.json"
      for p in "${procs[@]}"; do callgrind_control -d measured "$p" >/dev/null 2>&1 || true; done
      sleep 1
      ok="$(ok_calls "$work/uac.$proxy.json")"
      ir=0
      for dump in $(find "$work" -maxdepth 1 -name "callgrind.$proxy.*" -newer "$marker"); do
        n="$(sed -n 's/^summary: *\([0-9]*\).*/\1/p; s/^totals: *\([0-9]*\).*/\1/p' "$dump" | head -1)"
        ir=$((ir + ${n:-0}))
      done
      case "$proxy" in
        sipvane) how="epoll driver, $WORKERS worker(s)" ;;
        *) how="${#procs[@]} processes, one UDP receiver" ;;
      esac
      echo "$proxy: completed calls: $ok (callgrind, $how)"
      per_call[$proxy]="$(awk -v i="$ir" -v n="$ok" 'BEGIN { if (n > 0) printf "%.0f", i / n }')"
      echo "$proxy: instructions/call: ${per_call[$proxy]}"
      echo "$proxy: profiles: callgrind_annotate $work/callgrind.$proxy.<pid>.*"
      kill "$main" 2>/dev/null || true; wait "$main" 2>/dev/null || true
    done
    if [ -n "${per_call[sipvane]:-}" ] && [ -n "${per_call[kamailio]:-}" ]; then
      awk -v s="${per_call[sipvane]}" -v k="${per_call[kamailio]}" \
        'BEGIN { printf "sipvane/Kamailio instructions per call: %.3f\n", s / k }'
    fi
    ;;
  *) echo "stat.sh: MODE must be perf or callgrind" >&2; exit 2 ;;
esac
