#!/usr/bin/env bash
# The saturation of the soak's configuration (scripts/soak.sh: RTPEngine, Redis
# events, PostgreSQL acc, HEP, registrar and probing all on), so that `make soak`
# can run at half of it, as issue 15 asks: a ladder of short soak runs at
# rising call rates; the last rate at which every call and REGISTER completed
# and nothing was dropped is the saturation of this machine for that setup.
#
#   perf/soak-saturation.sh [RATES] [SECONDS]   # default "100 200 400 800 1600" 40
#
# Prints one line per step and, at the end, `saturation: N calls/s` (the
# highest passing step) and the soak command at half of it. The RSS bound of
# soak.sh is not applied (a 40 s run is all warm-up). Bounded: at most one
# soak run per rate, each SECONDS of load plus drain.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
rates="${1:-100 200 400 800 1600}"
secs="${2:-40}"
best=0
for r in $rates; do
  out="$repo/target/soak-saturation/$r"
  if SOAK_OUT="$out" SOAK_SECONDS="$secs" SOAK_RATE="$r" SOAK_RSS_BOUND_PCT=100000 \
    bash scripts/soak.sh >"$out.log" 2>&1; then
    best=$r
    echo "$r calls/s: pass ($(grep '^calls:' "$out/summary.txt"))"
  else
    echo "$r calls/s: FAIL ($(grep -h '^calls:\|^verdict' "$out/summary.txt" 2>/dev/null | tr '\n' ' '); log $out.log)"
    break
  fi
done
echo "saturation: $best calls/s or more below the first failing step ($secs s steps; $(nproc) CPUs)"
[ "$best" -gt 0 ] && echo "soak at half: make soak SOAK_RATE=$((best / 2))"
