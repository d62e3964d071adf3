#!/usr/bin/env bash
# make soak: a long, steady, moderate load through sipvane with every
# dependency on, sampled, and a verdict on memory. Loopback only, bounded in
# calls and time.
#
#   scripts/soak.sh            SOAK_MINUTES (default 30) of load
#
# What runs (all on 127.0.0.1, private ports from SOAK_PORT):
#   - sipvane (2 workers, defaults otherwise: probing every 5 s, fr_timer 2 s)
#     with media anchoring through a private RTPEngine, call events to a private
#     Redis, accounting (acc, missed_calls, acc_cdrs) to a private PostgreSQL,
#     HEPv3 of every message to a UDP sink (socat), and the registrar
#     (subscriber/location in the same PostgreSQL);
#   - two SIPp UAS backends, round-robin;
#   - a SIPp UAC offering SOAK_RATE calls/s (default 50), each held SOAK_HOLD_MS
#     (3000), for the whole run; a SIPp client REGISTERing one user (digest auth)
#     SOAK_REG_RATE times a second (default 2).
#
# Every SOAK_SAMPLE_S seconds (default 10) one CSV row goes to target/soak/samples.csv:
# sipvane's RSS and PSS (KiB), open fds, threads, transactions_open, dialogs_active,
# the calls counters and every sipvane_* error counter (failed calls, timeouts,
# table/dialogs full, overload rejects, event/HEP/acc drops, RTPEngine timeouts),
# Redis list length and the SIPp UAC's successful/failed calls.
#
# At the end (load stopped, dialogs and transactions drained): failed calls, RSS
# start / after warm-up / end / max, and whether call events (Redis) and acc rows
# (PostgreSQL) match the calls answered. Verdict: PASS unless a call failed, an
# event or row is missing, something was dropped, or RSS grew after warm-up
# (the first SOAK_WARMUP_PCT % of the run, default 50) by more than
# SOAK_RSS_BOUND_PCT % (default 5; the issue's "flat within ±5 %"). Exit status 1
# on FAIL. The summary is also written to target/soak/summary.txt, and
# target/soak/soak.svg plots RSS, PSS, fds, transactions and dialogs over time.
#
# Why the warm-up is long: each worker's transaction and dialog tables reserve
# their hash index for max_transactions / max_dialogs (262,144 each) at start,
# and the kernel maps a page of it the first time a key hashes into it. Keys are
# random, so RSS climbs towards the whole index (~25 MiB per table per worker)
# with a time constant of minutes at 50 calls/s, then stays flat
# (docs/reliability.md, "Soak").
#
# Environment: SOAK_MINUTES (30), SOAK_SECONDS (overrides minutes), SOAK_RATE (50),
# SOAK_HOLD_MS (3000), SOAK_REG_RATE (2), SOAK_SAMPLE_S (10), SOAK_WARMUP_PCT (50),
# SOAK_RSS_BOUND_PCT (5), SOAK_PORT (first of a run of free ports, default 27060),
# SIPVANE_BIN (default target/release/sipvane, else target/ci/sipvane), SOAK_OUT
# (output directory, default target/soak), SOAK_SERVICES_DIR (the services' data,
# default a directory in /dev/shm, removed at the end).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
secs="${SOAK_SECONDS:-$(( ${SOAK_MINUTES:-30} * 60 ))}"
rate="${SOAK_RATE:-50}"
hold="${SOAK_HOLD_MS:-3000}"
reg_rate="${SOAK_REG_RATE:-2}"
every="${SOAK_SAMPLE_S:-10}"
warm_pct="${SOAK_WARMUP_PCT:-50}"
bound_pct="${SOAK_RSS_BOUND_PCT:-5}"
port0="${SOAK_PORT:-27060}"

die() { echo "soak.sh: $*" >&2; exit 1; }
for t in sipp jq curl socat psql redis-cli; do
  command -v "$t" >/dev/null || die "$t not found: run \`make deps\`"
done
schema=/usr/share/kamailio/postgres
for f in standard-create.sql acc-create.sql auth_db-create.sql usrloc-create.sql; do
  [ -f "$schema/$f" ] || die "$schema/$f missing: run \`make deps\`"
done

out="${SOAK_OUT:-$repo/target/soak}"
rm -rf "$out"; mkdir -p "$out"
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
# A copy: a rebuild during a long run must not change what runs.
cp "$bin" "$out/sipvane"

sv_port=$port0 priv=$((port0 + 1)) mgmt="127.0.0.1:$((port0 + 5))"
a_addr="127.0.0.1:$((port0 + 10))" b_addr="127.0.0.1:$((port0 + 11))"
hep_port=$((port0 + 12)) reg_port=$((port0 + 13))
# The services' data and logs (PostgreSQL, Redis, RTPEngine) live in RAM: on a
# VM whose disk other jobs keep busy, writeback throttling stalled RTPEngine's
# synchronous log writes for seconds (ng timeouts, calls rejected) and
# PostgreSQL's commits (rows spooled). The soak measures sipvane, not the disk.
svc="${SOAK_SERVICES_DIR:-/dev/shm/sipvane-soak-$$}"
export SIPVANE_TEST_REDIS_PORT=$((port0 + 20)) SIPVANE_TEST_PG_PORT=$((port0 + 21))
export SIPVANE_TEST_RTPENGINE_PORT=$((port0 + 22))
# Room for ~4 000 calls held at once (4 ports each: RTP + RTCP on both legs),
# below the kernel's ephemeral range (32768-60999) so that the engine never takes
# a port another program was just given, and clear of the SIP ports above.
export SIPVANE_TEST_RTP_PORT_MIN=10000 SIPVANE_TEST_RTP_PORT_MAX=26999
events_list="sipvane:soak:events"

pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
  for s in rtpengine redis postgres; do
    bash scripts/services.sh stop "$s" "$svc/$s" >/dev/null 2>&1 || true
  done
  # Keep RTPEngine's log with the results; the rest of the RAM copy goes.
  cp "$svc/rtpengine/rtpengine.log" "$out/" 2>/dev/null || true
  [ -n "${SOAK_SERVICES_DIR:-}" ] || rm -rf "$svc"
}
trap cleanup EXIT

env_of() { sed -n "s/^$2=//p" <<<"$1"; }
redis_env=$(bash scripts/services.sh start redis "$svc/redis") || die "Redis did not start"
pg_env=$(bash scripts/services.sh start postgres "$svc/postgres") || die "PostgreSQL did not start"
rtp_env=$(bash scripts/services.sh start rtpengine "$svc/rtpengine") || die "RTPEngine did not start"
redis_url=$(env_of "$redis_env" SIPVANE_TEST_REDIS_URL)
pg_url=$(env_of "$pg_env" SIPVANE_TEST_PG_URL)
rtpengine=$(env_of "$rtp_env" SIPVANE_TEST_RTPENGINE)
psql "$pg_url" -q -v ON_ERROR_STOP=1 \
  -f "$schema/standard-create.sql" -f "$schema/acc-create.sql" \
  -f "$schema/auth_db-create.sql" -f "$schema/usrloc-create.sql" \
  -c "INSERT INTO subscriber (username, domain, password) VALUES ('6001', 'soak.test', 'soakpw')" \
  >/dev/null

socat -u "UDP-RECV:$hep_port,bind=127.0.0.1" /dev/null &
pids+=($!)
sipp-scenarios/run.sh uas "$a_addr" >"$out/uas-a.log" 2>&1 &
pids+=($!)
sipp-scenarios/run.sh uas "$b_addr" >"$out/uas-b.log" 2>&1 &
pids+=($!)

printf '1 sip:%s\n1 sip:%s\n' "$a_addr" "$b_addr" >"$out/dispatcher.list"
cat >"$out/sipvane.toml" <<EOF
[proxy]
listen = "127.0.0.1:$sv_port"
workers = 2
private_port_base = $priv
[mgmt]
listen = "$mgmt"
[dispatcher]
list = "$out/dispatcher.list"
algorithm = "round-robin"
[rtpengine]
engines = ["$rtpengine"]
[events]
redis_url = "$redis_url"
list = "$events_list"
[acc]
db_url = "$pg_url"
spool_dir = "$out/spool"
cdrs = true
[hep]
collector = "udp:127.0.0.1:$hep_port"
[registrar]
db_url = "$pg_url"
domain = "soak.test"
authenticate_calls = false
EOF
"$out/sipvane" run -c "$out/sipvane.toml" >"$out/sipvane.log" 2>&1 &
sv_pid=$!
pids+=("$sv_pid")

metrics() { curl -s -m 5 "http://$mgmt/metrics" || true; }
# sum of every sample of metric $2 (all label sets) in the exposition $1
m() { awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d", s + 0 }' <<<"$1"; }
usable_all() {
  curl -s -m 2 "http://$mgmt/dispatcher" |
    jq -e '[.sets[].destinations[].usable] | length == 2 and all' >/dev/null 2>&1
}
for _ in $(seq 150); do usable_all && break; sleep 0.2; done
usable_all || die "sipvane did not come up (see $out/sipvane.log)"

calls=$((rate * secs))
regs=$((reg_rate * secs))
t0=$(date +%s)
sipp-scenarios/run.sh uac "127.0.0.1:$sv_port" -r "$rate" -m "$calls" -d "$hold" \
  -timeout "$((secs + 120))" -timeout_error -trace_stat -stf "$out/uac.csv" -fd 5 \
  >"$out/uac.log" 2>&1 &
uac=$!
pids+=("$uac")
SIPP_LOCAL_PORT=$reg_port sipp-scenarios/run.sh register_auth "127.0.0.1:$sv_port" \
  -s 6001 -au 6001 -ap soakpw -key contact "127.0.0.1:$reg_port" -key expires 300 \
  -r "$reg_rate" -m "$regs" -timeout "$((secs + 120))" -timeout_error \
  -trace_stat -stf "$out/register.csv" -fd 5 >"$out/register.log" 2>&1 &
reg=$!
pids+=("$reg")

stat_col() { # CSV COLUMN: last row's value of a SIPp -trace_stat column
  [ -f "$1" ] || { echo 0; return; }
  awk -F';' -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
                         { v = $c } END { print v + 0 }' "$1"
}
counters=(calls_answered calls_failed timeouts failovers table_full dialogs_full overload_rejects
          no_destination parse_errors event_queue_dropped events_dropped_buffer_full events_redis_errors
          worker_event_drops hep_sent hep_dropped
          acc_rows acc_rows_written acc_rows_spooled acc_rows_dropped rtpengine_timeouts
          rtpengine_errors rtpengine_rejected)
echo "t_s,rss_kib,pss_kib,fds,threads,transactions_open,dialogs_active,$(IFS=,; echo "${counters[*]}"),redis_llen,uac_ok,uac_failed,reg_ok,reg_failed" \
  >"$out/samples.csv"
sample() {
  local x t rss pss fds thr
  x=$(metrics)
  t=$(( $(date +%s) - t0 ))
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$sv_pid/status" 2>/dev/null || echo 0)
  pss=$(awk '/^Pss:/ { print $2 }' "/proc/$sv_pid/smaps_rollup" 2>/dev/null || echo 0)
  fds=$(ls "/proc/$sv_pid/fd" 2>/dev/null | wc -l)
  thr=$(awk '/^Threads:/ { print $2 }' "/proc/$sv_pid/status" 2>/dev/null || echo 0)
  local row="$t,$rss,$pss,$fds,$thr,$(m "$x" sipvane_transactions_open),$(m "$x" sipvane_dialogs_active)"
  local c v
  for c in "${counters[@]}"; do
    case $c in
      rtpengine_rejected) v=$(m "$x" sipvane_rtpengine_rejected_calls_total) ;;
      event_queue_dropped) v=$(m "$x" sipvane_event_queue_dropped_total) ;;
      acc_rows_dropped) v=$(m "$x" sipvane_acc_rows_dropped_total) ;;
      *) v=$(m "$x" "sipvane_${c}_total") ;;
    esac
    row+=",$v"
  done
  row+=",$(redis-cli -u "$redis_url" --raw LLEN "$events_list" 2>/dev/null || echo 0)"
  row+=",$(stat_col "$out/uac.csv" 'SuccessfulCall(C)'),$(stat_col "$out/uac.csv" 'FailedCall(C)')"
  row+=",$(stat_col "$out/register.csv" 'SuccessfulCall(C)'),$(stat_col "$out/register.csv" 'FailedCall(C)')"
  echo "$row" >>"$out/samples.csv"
}

echo "soak.sh: $rate calls/s held ${hold} ms and $reg_rate REGISTER/s for ${secs} s through $bin (samples in $out/samples.csv)" >&2
sample
next=$((t0 + every))
while kill -0 "$uac" 2>/dev/null; do
  sleep 1
  if [ "$(date +%s)" -ge $next ]; then
    sample
    next=$((next + every))
  fi
done
wait "$uac" 2>/dev/null || true
wait "$reg" 2>/dev/null || true
# Drained: every dialog ended, every transaction expired (wait_timer 5 s).
for _ in $(seq 60); do
  x=$(metrics)
  [ "$(m "$x" sipvane_dialogs_active)" = 0 ] && [ "$(m "$x" sipvane_transactions_open)" = 0 ] && break
  sleep 1
done
sleep 2 # the acc writer and the event exporter flush every 100 ms / 10 ms
sample
x=$(metrics)
kill -TERM "$sv_pid" 2>/dev/null || true
wait "$sv_pid" 2>/dev/null || true

last() { tail -1 "$out/samples.csv" | cut -d, -f"$1"; }
col() { head -1 "$out/samples.csv" | tr , '\n' | grep -nx "$1" | cut -d: -f1; }
get() { last "$(col "$1")"; }
answered=$(get calls_answered)
uac_ok=$(get uac_ok) uac_failed=$(get uac_failed)
reg_ok=$(get reg_ok) reg_failed=$(get reg_failed)
ev_answered=$(redis-cli -u "$redis_url" --raw LRANGE "$events_list" 0 -1 | grep -c '"type":"call_answered"' || true)
ev_end=$(redis-cli -u "$redis_url" --raw LRANGE "$events_list" 0 -1 | grep -c '"type":"call_end"' || true)
acc_inv=$(psql "$pg_url" -tA -c "SELECT COUNT(*) FROM acc WHERE method = 'INVITE'")
acc_bye=$(psql "$pg_url" -tA -c "SELECT COUNT(*) FROM acc WHERE method = 'BYE'")
cdrs=$(psql "$pg_url" -tA -c "SELECT COUNT(*) FROM acc_cdrs")
missed=$(psql "$pg_url" -tA -c "SELECT COUNT(*) FROM missed_calls")
rss_col=$(col rss_kib) t_col=$(col t_s)
read -r rss0 rss_warm rss_end rss_max t_warm < <(awk -F, -v rc="$rss_col" -v tc="$t_col" -v w="$((secs * warm_pct / 100))" '
  NR == 1 { next }
  NR == 2 { first = $rc }
  $tc >= w && !warm { warm = $rc; tw = $tc }
  { last = $rc; if ($rc > max) max = $rc; if (warm && $rc > wmax) wmax = $rc }
  END { print first, warm, last, max, tw }' "$out/samples.csv")
fds0=$(sed -n 2p "$out/samples.csv" | cut -d, -f"$(col fds)")
fds_end=$(get fds)
drops=0
for c in table_full dialogs_full event_queue_dropped events_dropped_buffer_full worker_event_drops hep_dropped acc_rows_dropped; do
  drops=$((drops + $(get "$c")))
done

# soak.svg: one panel per series (each scaled to its own maximum), time on x.
plot() {
  awk -F, '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    { n++; t[n] = $col["t_s"]
      for (k = 1; k <= 5; k++) { v[k, n] = $col[name[k]]; if (v[k, n] > mx[k]) mx[k] = v[k, n] } }
    BEGIN { split("rss_kib pss_kib fds transactions_open dialogs_active", name, " ")
            split("RSS (KiB),PSS (KiB),open fds,transactions open,dialogs active", label, ",") }
    END {
      W = 720; H = 110; L = 60
      printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"11\">\n", W + L + 20, 5 * (H + 30) + 30
      for (k = 1; k <= 5; k++) {
        y0 = 20 + (k - 1) * (H + 30); top = mx[k] ? mx[k] : 1
        printf "<text x=\"%d\" y=\"%d\">%s: max %d, end %d (0 .. %d s)</text>\n", L, y0 - 4, label[k], mx[k], v[k, n], t[n]
        printf "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#ccc\"/>\n", L, y0, W, H
        printf "<text x=\"2\" y=\"%d\">%d</text><text x=\"2\" y=\"%d\">0</text>\n", y0 + 10, top, y0 + H
        printf "<polyline fill=\"none\" stroke=\"#1f77b4\" points=\""
        for (i = 1; i <= n; i++)
          printf "%.1f,%.1f ", L + (t[n] ? t[i] * W / t[n] : 0), y0 + H - v[k, i] * H / top
        printf "\"/>\n"
      }
      print "</svg>"
    }' "$1"
}

verdict=PASS why=()
[ "$uac_failed" = 0 ] || why+=("$uac_failed calls failed")
[ "$reg_failed" = 0 ] || why+=("$reg_failed REGISTERs failed")
[ "$uac_ok" = "$calls" ] || why+=("$uac_ok of $calls calls completed")
[ "$ev_answered" = "$answered" ] && [ "$ev_end" = "$answered" ] ||
  why+=("events: $ev_answered call_answered, $ev_end call_end for $answered answered calls")
[ "$acc_inv" = "$answered" ] && [ "$acc_bye" = "$answered" ] && [ "$cdrs" = "$answered" ] ||
  why+=("acc: $acc_inv INVITE, $acc_bye BYE rows, $cdrs CDRs for $answered answered calls")
[ "$drops" = 0 ] || why+=("$drops dropped (table/dialogs full, events, HEP, acc)")
growth_pct=$(awk -v a="$rss_warm" -v b="$rss_end" 'BEGIN { printf "%.1f", a ? (b - a) * 100 / a : 0 }')
awk -v g="$growth_pct" -v b="$bound_pct" 'BEGIN { exit !(g > b) }' &&
  why+=("RSS grew ${growth_pct} % after warm-up (bound ${bound_pct} %): leak")
[ ${#why[@]} -eq 0 ] || verdict=FAIL

{
  echo "soak: $rate calls/s (held $((hold / 1000)) s) + $reg_rate REGISTER/s for $secs s through sipvane with RTPEngine, Redis events, PostgreSQL acc, HEP, registrar ($(date -u +%F))"
  echo "calls: $calls offered, $uac_ok completed, $uac_failed failed; REGISTERs: $reg_ok ok, $reg_failed failed"
  echo "answered (sipvane): $answered; events: $ev_answered call_answered, $ev_end call_end; acc: $acc_inv INVITE + $acc_bye BYE rows, $cdrs acc_cdrs, $missed missed_calls"
  echo "RSS (KiB): start $rss0, after warm-up (${t_warm} s) $rss_warm, end $rss_end, max $rss_max; growth after warm-up ${growth_pct} % (bound ${bound_pct} %)"
  echo "fds: start $fds0, end $fds_end; drops: $drops; counters at stop: $(grep 'sipvane: counters' "$out/sipvane.log" | tail -1 | cut -c1-400)"
  echo "verdict: $verdict${why[*]:+ (${why[*]})}"
} | tee "$out/summary.txt"
plot "$out/samples.csv" >"$out/soak.svg"
[ "$verdict" = PASS ]
