#!/usr/bin/env bash
# make demo: sipvane in front of two SIPp backends, real calls from two SIPp
# callers, one backend killed halfway through, and a summary table.
# Everything runs on 127.0.0.1 and stops by itself (bounded calls and time).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sipvane="$root/target/release/sipvane"
scen="$root/sipp-scenarios"
work="$root/.tmp/demo"
CALLS="${DEMO_CALLS:-3000}"     # in all, split over two callers
RATE="${DEMO_RATE:-300}"        # calls per second, in all
HOLD_MS="${DEMO_HOLD_MS:-200}"  # how long each call stays up
KILL_AFTER_S="${DEMO_KILL_AFTER_S:-4}"
BASE="${DEMO_PORT:-25060}"      # sipvane; +1,+2 private; +11,+12 backends; +20 management API

command -v sipp >/dev/null || { echo "demo: sipp not found: run 'make deps'" >&2; exit 1; }
[ -x "$sipvane" ] || { echo "demo: $sipvane missing: run 'make build'" >&2; exit 1; }

rm -rf "$work"; mkdir -p "$work"; cd "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

a_port=$((BASE + 11)); b_port=$((BASE + 12))
cat > dispatcher.list <<EOF
# setid destination
1 sip:127.0.0.1:$a_port
1 sip:127.0.0.1:$b_port
EOF
cat > sipvane.toml <<EOF
[proxy]
listen = "127.0.0.1:$BASE"
workers = 2

[mgmt]
# Next to the demo's ports rather than the default 9060 another sipvane may hold.
listen = "127.0.0.1:$((BASE + 20))"

[dispatcher]
list = "$work/dispatcher.list"
algorithm = "round-robin"
fr_timer_ms = 500
# A backend that dies after ringing is given up on after 3 s (default 120 s).
fr_inv_timer_ms = 3000
failure_threshold = 3
hold_down_s = 60
EOF

start_uas() { # name port
  sipp -sf "$scen/uas.xml" -i 127.0.0.1 -p "$2" -cp $(( $2 + 100 )) -bg -trace_stat -stf "$1.csv" \
       -fd 1 -timeout 120s >/dev/null 2>&1
  pgrep -n -f "sipp -sf $scen/uas.xml -i 127.0.0.1 -p $2 " || true
}
pids+=("$(start_uas backend-a "$a_port")")
pids+=("$(start_uas backend-b "$b_port")")

"$sipvane" run -c sipvane.toml > sipvane.log 2>&1 &
pids+=($!)
sipvane_pid=$!
for _ in $(seq 50); do grep -q "sipvane is running" sipvane.log 2>/dev/null && break; sleep 0.1; done
grep -q "sipvane is running" sipvane.log || { cat sipvane.log; echo "demo: sipvane did not start" >&2; exit 1; }

echo "sipvane on 127.0.0.1:$BASE -> backends :$a_port and :$b_port"
echo "placing $CALLS calls at $RATE calls/s (two callers); backend B is killed after ${KILL_AFTER_S}s ..."
half=$((CALLS / 2)); rate_half=$((RATE / 2))
for i in 1 2; do
  sipp -sf "$scen/uac.xml" -i 127.0.0.1 -p $((BASE + 20 + i)) -cp $((BASE + 120 + i)) \
       "127.0.0.1:$BASE" -m "$half" -r "$rate_half" -d "$HOLD_MS" -l 2000 \
       -timeout 60s -timeout_error -trace_stat -stf "caller-$i.csv" -fd 1 ${DEMO_SIPP_TRACE:-} >/dev/null 2>&1 &
  eval "uac$i=\$!"
done
sleep "$KILL_AFTER_S"
pkill -9 -f "sipp -sf $scen/uas.xml -i 127.0.0.1 -p $b_port " || true
echo "backend B killed"
wait "$uac1" || true; wait "$uac2" || true
sleep 1
kill -TERM "$sipvane_pid"; wait "$sipvane_pid" || true
pkill -INT -f "sipp -sf $scen/uas.xml -i 127.0.0.1 -p $a_port " || true
sleep 0.5

# Column of a SIPp statistics CSV (last row).
col() { # file column
  awk -F';' -v want="$2" 'NR==1{for(i=1;i<=NF;i++) if($i==want) c=i; next} {v=$c} END{print v+0}' "$1"
}
counter() { grep '^sipvane: counters' sipvane.log | tr ' ' '\n' | awk -F= -v k="$1" '$1==k{print $2}'; }

ok=$(( $(col caller-1.csv 'SuccessfulCall(C)') + $(col caller-2.csv 'SuccessfulCall(C)') ))
failed=$(( $(col caller-1.csv 'FailedCall(C)') + $(col caller-2.csv 'FailedCall(C)') ))
a_calls=$(col backend-a.csv 'TotalCallCreated')
# B was killed, so its own counters are stale; every answered call is a
# dialog sipvane created, and A's count is exact (it exits cleanly).
b_calls=$(( $(counter dialogs_created) - a_calls ))

printf '\n%-44s %10s\n' "sipvane demo" "value"
printf '%-44s %10s\n' "--------------------------------------------" "----------"
printf '%-44s %10d\n' "calls placed" "$CALLS"
printf '%-44s %10d\n' "calls succeeded" "$ok"
printf '%-44s %10d\n' "calls failed" "$failed"
printf '%-44s %10d\n' "calls answered by backend A" "$a_calls"
printf '%-44s %10d\n' "calls answered by backend B (killed)" "$b_calls"
printf '%-44s %10d\n' "failovers (sipvane)" "$(counter failovers)"
printf '%-44s %10d\n' "destination timeouts (sipvane)" "$(counter timeouts)"
printf '%-44s %10d\n' "dialogs created (sipvane)" "$(counter dialogs_created)"
printf '%-44s %10d\n' "dialogs ended by BYE (sipvane)" "$(counter dialogs_ended)"
echo
echo "Calls that were up on backend B when it died cannot finish their BYE and"
echo "count as failed; new calls fail over to A. Logs: $work"
