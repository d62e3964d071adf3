#!/usr/bin/env bash
# Overload benchmark: the built-in generator (sipvane-bench uac) offers three
# times what one worker sustains, and we read what sipvane does with it.
#
# One worker; its CPU is capped with a cgroup (cpu.cfs_quota_us, v1, or
# cpu.max, v2) at QUOTA_PCT % of a core, so that the generator — which shares
# this machine's cores with it — can offer three times the worker's capacity.
#   1. capacity C (default settings): a short ladder of offered rates; C is
#      the highest at which ≥ 99 % of calls completed;
#   2. overload, for each policy (backlog shedding at 100 ms, then off — the default —
#      each on a fresh sipvane): 3 × C offered for OVERLOAD_S seconds while
#      OPTIONS and GET /health are sampled every 0.5 s and the RSS is read;
#   3. recovery: right after, C / 2 offered in 1-second windows; the time from
#      the end of the overload to the first window without a failed call.
# Bounded: every step offers at most rate × seconds calls. Needs root (the
# cgroup). Prints a table and writes it to target/bench/overload.txt.
#
# Usage: perf/overload.sh          QUOTA_PCT=20 OVERLOAD_S=10 LADDER="..." perf/overload.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
QUOTA_PCT="${QUOTA_PCT:-20}"
OVERLOAD_S="${OVERLOAD_S:-10}"
LADDER="${LADDER:-250 500 1000 1500 2000 3000 4000 6000 8000}"
WORKERS=1
# shellcheck source=perf/lib.sh
. "$here/lib.sh"
out_dir="$repo/target/bench"
mkdir -p "$out_dir"
build

cg=""
cg_make() {
  local name="sipvane-overload-$$"
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    cg="/sys/fs/cgroup/$name"
    mkdir "$cg"
    echo "$((QUOTA_PCT * 1000)) 100000" >"$cg/cpu.max"
  elif [ -d /sys/fs/cgroup/cpu ]; then
    cg="/sys/fs/cgroup/cpu/$name"
    mkdir "$cg"
    echo 100000 >"$cg/cpu.cfs_period_us"
    echo "$((QUOTA_PCT * 1000))" >"$cg/cpu.cfs_quota_us"
  else
    echo "overload: no cpu cgroup controller here" >&2; exit 1
  fi
}
cg_remove() {
  [ -n "$cg" ] || return 0
  local root; root="$(dirname "$cg")"
  if [ -f "$cg/cgroup.procs" ]; then
    while read -r p; do echo "$p" >"$root/cgroup.procs" 2>/dev/null || true; done <"$cg/cgroup.procs"
  fi
  rmdir "$cg" 2>/dev/null || true
  cg=""
}
trap 'cleanup; cg_remove' EXIT

json_num() { sed -n "s/^ *\"$2\": \([0-9.]*\),*\$/\1/p" "$1" | head -1; }
json_reason() { sed -n "s/^ *\"$2\": \([0-9]*\),*\$/\1/p" "$1" | head -1; }
metric() { curl -s "http://$mgmt/metrics" | sed -n "s/^$1 \([0-9.e+]*\)\$/\1/p" | head -1; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$SIPVANE_PID/status"; }

# uac RATE MS OUT_JSON [TIMEOUT_MS]
uac() {
  "$bench" uac "$TARGET" --rate "$1" --duration-ms "$2" --concurrency 40000 \
    --timeout-ms "${4:-2000}" --quiet --json >"$3" || true
}

results=()
cap=0
run_policy() { # NAME PROXY_TOML
  local name="$1"
  PROXY_TOML="$2" start_lab
  mgmt="$(sed -n '/^\[mgmt\]/{n;s/^listen = "\(.*\)"/\1/p}' "$work/sipvane.toml")"
  cg_make
  echo "$SIPVANE_PID" >"$cg/cgroup.procs"
  echo "overload [$name]: sipvane ($SIPVANE_PID, $(wc -l <"$cg/tasks") threads) capped at $QUOTA_PCT % of a core in $cg" >&2
  "$bench" uac "$TARGET" --rate 200 --calls 400 --duration-ms 2000 --quiet >/dev/null || true

  # 1. capacity, once
  local r ok started
  [ "$cap" -eq 0 ] && for r in $LADDER; do
    uac "$r" 3000 "$work/ladder-$name-$r.json"
    ok="$(json_num "$work/ladder-$name-$r.json" ok)"; started="$(json_num "$work/ladder-$name-$r.json" started)"
    echo "overload [$name]: offered $r/s for 3 s: $ok of $started completed" >&2
    if [ "${started:-0}" -gt 0 ] && [ $((ok * 100)) -ge $((started * 99)) ]; then cap="$r"; else break; fi
    sleep 6   # let the finished transactions expire (wait_timer_ms)
  done
  [ "$cap" -gt 0 ] || { echo "overload [$name]: no capacity measured" >&2; exit 1; }
  sleep 6

  # 2. overload at 3 x C, sampling OPTIONS, /health and RSS
  local offered=$((cap * 3)) pings=0 pongs=0 health=0 healthy=0 rss0 rssmax
  rss0="$(rss_kib)"; rssmax="$rss0"
  local shed0; shed0="$(metric sipvane_backlog_rejects_total)"
  uac "$offered" $((OVERLOAD_S * 1000)) "$work/over-$name.json" 4000 &
  local gen=$!
  local until=$((SECONDS + OVERLOAD_S))
  while [ $SECONDS -lt $until ]; do
    pings=$((pings + 1))
    if timeout 2 "$bench" ping "$TARGET" --timeout-ms 1000 >/dev/null 2>&1; then pongs=$((pongs + 1)); fi
    health=$((health + 1))
    if curl -s -m 1 "http://$mgmt/health" | grep -q '"ok"'; then healthy=$((healthy + 1)); fi
    local rss; rss="$(rss_kib)"; [ "$rss" -gt "$rssmax" ] && rssmax="$rss"
    sleep 0.5
  done
  wait "$gen" || true
  local over_end=$SECONDS

  # 3. recovery: C / 2 in 1-second windows
  local rec="> 10 s" w f
  for w in 1 2 3 4 5 6 7 8 9 10; do
    local t0=$SECONDS
    uac $((cap / 2)) 1000 "$work/rec-$name-$w.json" 1000
    f="$(json_num "$work/rec-$name-$w.json" failed)"
    if [ "${f:-1}" -eq 0 ]; then rec="$((t0 - over_end)) s (window $w)"; break; fi
  done

  local o="$work/over-$name.json"
  local o_ok o_started o_503 o_to shed1
  o_ok="$(json_num "$o" ok)"; o_started="$(json_num "$o" started)"
  o_503="$(json_reason "$o" 503)"; o_to="$(json_reason "$o" timeout)"
  shed1="$(metric sipvane_backlog_rejects_total)"
  results+=("| $name | ${QUOTA_PCT} % | $cap | $offered | $o_started | $o_ok ($((o_ok / OVERLOAD_S))/s) | ${o_503:-0} | ${o_to:-0} | $(awk -v a="${shed1:-0}" -v b="${shed0:-0}" 'BEGIN { printf "%d", a - b }') | $pongs/$pings | $healthy/$health | $((rss0 / 1024)) → $((rssmax / 1024)) MiB | $rec |")
  echo "overload [$name]: throttled $(sed -n 's/^nr_throttled //p' "$cg/cpu.stat" 2>/dev/null || echo '?') periods" >&2
  cleanup; pids=(); cg_remove
  rm -f "$work/dispatcher.list"
}

run_policy "backlog shedding (100 ms)" "shed_backlog_ms = 100"
run_policy "shedding off (default)" "shed_backlog_ms = 0"

{
  echo "| policy | CPU cap | capacity C (calls/s, ≥ 99 % ok) | offered 3×C | calls started | completed | 503 | timed out | backlog_rejects | OPTIONS answered | /health ok | RSS | back to 0 % failed at C/2 |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${results[@]}"
} | tee "$out_dir/overload.txt"
