#!/usr/bin/env bash
# make chaos: one fault at a time during steady SIPp load through sipvane, and a
# table of what it cost. Loopback only, bounded in calls and time.
#
#   scripts/chaos.sh [SCENARIO...]     default: kill9 stop 503
#
#   kill9  backend B is killed (-9) at FAULT_AT s and started again at RESTORE_AT s
#   stop   backend B is frozen (SIGSTOP) at FAULT_AT s and resumed (SIGCONT) at RESTORE_AT s
#   503    backend B is replaced by one answering every INVITE 503 at FAULT_AT s,
#          and the normal backend comes back at RESTORE_AT s
#
# Each scenario: sipvane (2 workers, default settings: fr_timer 2 s, probing every
# 5 s, failure_threshold 3) in front of two SIPp UAS backends A and B, round-robin;
# a SIPp UAC offers CHAOS_RATE calls/s (1 s hold) for CHAOS_SECONDS. The table:
#   calls / failed         SIPp UAC's own count (only calls in flight on B when it
#                          broke may fail: established calls whose BYE cannot reach it)
#   out after              seconds from the fault until /dispatcher shows B not usable
#                          (new calls avoid it; before that, an attempt to B fails over
#                          to A after fr_timer or at once on 503)
#   back after             seconds from the restore until B is usable again
#   failovers              sipvane's failovers counter
#   RSS before / after     sipvane's resident memory when the load starts and ends (KiB)
#
# The behaviours the table illustrates are asserted by tests, not by this script:
# control/tests/proxy_sipp.rs (failover_on_503_loses_no_call,
# failover_on_dead_destination_via_timeout), control/tests/probe_sipp.rs, and
# control/tests/chaos.rs (a frozen backend is avoided and used again once resumed).
# Environment: CHAOS_RATE (default 50), CHAOS_SECONDS (40), FAULT_AT (8),
# RESTORE_AT (20), CHAOS_PORT (first of a run of free UDP ports, default 26060).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
rate="${CHAOS_RATE:-50}"
secs="${CHAOS_SECONDS:-40}"
fault_at="${FAULT_AT:-8}"
restore_at="${RESTORE_AT:-20}"
port0="${CHAOS_PORT:-26060}"
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(kill9 stop 503)

die() { echo "chaos.sh: $*" >&2; exit 1; }
command -v sipp >/dev/null || die "sipp not found: run \`make deps\`"
command -v jq >/dev/null || die "jq not found: run \`make deps\`"
command -v curl >/dev/null || die "curl not found: run \`make deps\`"

bin="${SIPVANE_BIN:-}"
if [ -z "$bin" ]; then
  for b in target/release/sipvane target/ci/sipvane; do
    [ -x "$b" ] && { bin="$b"; break; }
  done
fi
if [ -z "$bin" ]; then
  cargo build --profile ci -p control --bin sipvane
  bin=target/ci/sipvane
fi

out="$repo/target/chaos"
mkdir -p "$out"
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill -CONT "$p" 2>/dev/null || true
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo "?"; }

# usable of backend B in /dispatcher: true / false / ? (API not answering)
b_usable() {
  curl -s -m 2 "http://$mgmt/dispatcher" |
    jq -r --arg uri "sip:$b_addr" '[.sets[].destinations[] | select(.uri == $uri) | .usable][0] | if . == null then "?" else tostring end' 2>/dev/null || echo "?"
}

start_uas() { # ROLE ADDR; sets uas_pid
  sipp-scenarios/run.sh "$1" "$2" >>"$dir/uas-$1-${2##*:}.log" 2>&1 &
  uas_pid=$!
  pids+=("$uas_pid")
}

stat_col() { # CSV COLUMN: last row's value of a SIPp -trace_stat column
  awk -F';' -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
                         { v = $c } END { print v + 0 }' "$1"
}

rows=()
run() {
  local sc=$1 i=$2
  dir="$out/$sc"
  rm -rf "$dir"; mkdir -p "$dir"
  local base=$((port0 + i * 20))
  local sv_port=$base priv=$((base + 1)) a_addr="127.0.0.1:$((base + 10))"
  b_addr="127.0.0.1:$((base + 11))"
  mgmt="127.0.0.1:$((base + 5))"
  printf '1 sip:%s\n1 sip:%s\n' "$a_addr" "$b_addr" >"$dir/dispatcher.list"
  cat >"$dir/sipvane.toml" <<EOF
[proxy]
listen = "127.0.0.1:$sv_port"
workers = 2
private_port_base = $priv
[mgmt]
listen = "$mgmt"
[dispatcher]
list = "$dir/dispatcher.list"
algorithm = "round-robin"
EOF
  local a_pid b_pid
  start_uas uas "$a_addr"; a_pid=$uas_pid
  start_uas uas "$b_addr"; b_pid=$uas_pid
  "$bin" run -c "$dir/sipvane.toml" >"$dir/sipvane.log" 2>&1 &
  local sv_pid=$!
  pids+=("$sv_pid")
  for _ in $(seq 100); do
    [ "$(b_usable)" = true ] && break
    sleep 0.1
  done
  [ "$(b_usable)" = true ] || die "$sc: sipvane did not come up (see $dir/sipvane.log)"

  local calls=$((rate * secs))
  local rss0; rss0=$(rss "$sv_pid")
  sipp-scenarios/run.sh uac "127.0.0.1:$sv_port" -r "$rate" -m "$calls" -d 1000 \
    -timeout "$((secs + 60))" -timeout_error -trace_stat -stf "$dir/uac.csv" -fd 1 \
    >"$dir/uac.log" 2>&1 &
  local uac=$!
  pids+=("$uac")
  local t0; t0=$(now)
  local t_fault="" t_restore="" out_after="-" back_after="-" faulted=0 restored=0
  while kill -0 "$uac" 2>/dev/null; do
    local el; el=$(since "$t0")
    if [ $faulted = 0 ] && awk -v e="$el" -v f="$fault_at" 'BEGIN { exit !(e >= f) }'; then
      faulted=1; t_fault=$(now)
      case $sc in
        kill9) kill -9 "$b_pid"; wait "$b_pid" 2>/dev/null || true ;;
        stop) kill -STOP "$b_pid" ;;
        503) kill -INT "$b_pid"; wait "$b_pid" 2>/dev/null || true; start_uas uas_503 "$b_addr"; b_pid=$uas_pid ;;
      esac
    fi
    if [ $faulted = 1 ] && [ "$out_after" = - ] && [ "$(b_usable)" = false ]; then
      out_after=$(since "$t_fault")
    fi
    if [ $restored = 0 ] && awk -v e="$el" -v r="$restore_at" 'BEGIN { exit !(e >= r) }'; then
      restored=1; t_restore=$(now)
      case $sc in
        kill9) wait "$b_pid" 2>/dev/null || true; start_uas uas "$b_addr"; b_pid=$uas_pid ;;
        stop) kill -CONT "$b_pid" ;;
        503) kill -INT "$b_pid"; wait "$b_pid" 2>/dev/null || true; start_uas uas "$b_addr"; b_pid=$uas_pid ;;
      esac
    fi
    if [ $restored = 1 ] && [ "$back_after" = - ] && [ "$(b_usable)" = true ]; then
      back_after=$(since "$t_restore")
    fi
    sleep 0.2
  done
  wait "$uac" 2>/dev/null || true
  local rss1; rss1=$(rss "$sv_pid")
  local failovers
  failovers=$(curl -s -m 2 "http://$mgmt/metrics" | awk '$1 == "sipvane_failovers_total" { print $2 + 0 }')
  local ok failed
  ok=$(stat_col "$dir/uac.csv" "SuccessfulCall(C)")
  failed=$(stat_col "$dir/uac.csv" "FailedCall(C)")
  kill -TERM "$sv_pid" 2>/dev/null || true
  wait "$sv_pid" 2>/dev/null || true
  cleanup
  rows+=("| $sc | $calls | $ok | $failed | $out_after | $back_after | ${failovers:-?} | $rss0 | $rss1 |")
  echo "chaos.sh: $sc done: $ok ok, $failed failed (logs in $dir)" >&2
}

i=0
for sc in "${scenarios[@]}"; do
  case $sc in kill9|stop|503) ;; *) die "unknown scenario '$sc' (kill9, stop, 503)" ;; esac
  run "$sc" "$i"
  i=$((i + 1))
done

{
  echo "chaos: ${rate} calls/s for ${secs} s through sipvane, fault on backend B at ${fault_at} s, restored at ${restore_at} s ($(date -u +%F))"
  echo
  echo "| scenario | calls | completed | failed | out after (s) | back after (s) | failovers | RSS before (KiB) | RSS after (KiB) |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
} | tee "$out/table.md"
