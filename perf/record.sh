#!/usr/bin/env bash
# CPU flamegraph of sipvane under load: perf record (software cpu-clock
# event, DWARF call graphs, so it works in VMs without hardware counters
# and on binaries without frame pointers) while sipvane-bench offers calls,
# then perf script | inferno-collapse-perf | inferno-flamegraph.
#
# Usage: perf/record.sh [RATE_CPS [SECONDS [OUT.svg]]]
#   perf/record.sh                       # 2000 cps for 5 s -> perf/flamegraph.svg
#   perf/record.sh 5000 10 /tmp/f.svg
#   WORKERS=2 IO=epoll perf/record.sh    # see perf/lib.sh for the environment
#
# Installs inferno (cargo install inferno) once if its tools are missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rate="${1:-2000}"; secs="${2:-5}"; out="${3:-$here/flamegraph.svg}"
# shellcheck source=perf/lib.sh
. "$here/lib.sh"

command -v perf >/dev/null || { echo "record.sh: perf not found (apt-get install linux-perf)" >&2; exit 1; }
if ! command -v inferno-flamegraph >/dev/null || ! command -v inferno-collapse-perf >/dev/null; then
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v inferno-flamegraph >/dev/null || cargo install --locked inferno
fi

build
start_lab
# Warm up, then record exactly the measured load.
"$bench" uac "$TARGET" --rate "$rate" --duration-ms 1000 --quiet >/dev/null
"$bench" uac "$TARGET" --rate "$rate" --duration-ms "$((secs * 1000))" --quiet >"$work/uac.txt" &
uac=$!
perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$SIPVANE_PID" \
  -o "$work/perf.data" -- sleep "$secs" 2>"$work/perf.log" || { cat "$work/perf.log" >&2; exit 1; }
wait "$uac"
cat "$work/uac.txt"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"$work/folded"
inferno-flamegraph --title "sipvane, $rate cps offered" <"$work/folded" >"$out"
echo "flamegraph: $out (samples in $work/perf.data)"
