#!/usr/bin/env bash
# Saturation with one trunk: the built-in generator sends every call from ONE
# source socket (as a trunk behind an SBC does) as fast as it is allowed, and
# we read how many calls per second completed with 1 and then 2 workers under
# the default settings (balance = "callid"), plus each worker's share of the
# calls from /status. Bounded: each step offers at most RATE × SECONDS calls.
#
# Usage: perf/saturation.sh [RATE_CPS [SECONDS]]   (defaults 30000 and 4)
#   WORKER_COUNTS="1 2 4" perf/saturation.sh
# On a machine with few CPUs the generator and the two responders compete
# with sipvane for the same cores: read the figures as a ratio, not a ceiling.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rate="${1:-30000}"; secs="${2:-4}"
# shellcheck source=perf/lib.sh
. "$here/lib.sh"
build

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

for WORKERS in ${WORKER_COUNTS:-1 2}; do
  pids=()
  start_lab
  mgmt="$(sed -n '/^\[mgmt\]/{n;s/^listen = "\(.*\)"/\1/p}' "$work/sipvane.toml")"
  # Warm-up, then the measured run from one source socket.
  "$bench" uac "$TARGET" --threads 1 --sockets 1 --rate 500 --calls 500 --duration-ms 2000 --quiet >/dev/null
  t0="$(cpu_ticks "$SIPVANE_PID")"
  "$bench" uac "$TARGET" --threads 1 --sockets 1 --rate "$rate" --duration-ms $((secs * 1000)) \
    --concurrency 4000 --timeout-ms 4000 --quiet --json >"$work/uac-$WORKERS.json"
  t1="$(cpu_ticks "$SIPVANE_PID")"
  cps="$(sed -n 's/^ *"achieved_cps": \([0-9.]*\),*$/\1/p' "$work/uac-$WORKERS.json" | head -1)"
  ok="$(ok_calls "$work/uac-$WORKERS.json")"
  calls="$(curl -s "http://$mgmt/status" | tr -d ' \n' | grep -o '"initial_invites":[0-9]*' | cut -d: -f2 | paste -sd/)"
  us_per_call="$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$ok" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n }')"
  printf 'workers %s: %s calls completed, %.0f calls/s, sipvane CPU %s us/call, initial INVITEs per worker %s\n' \
    "$WORKERS" "$ok" "$cps" "$us_per_call" "$calls"
  cleanup
done
