#!/usr/bin/env bash
# make chaos: one fault at a time during steady SIPp load through sipvane, and a
# table of what it cost. Loopback only, bounded in calls and time.
#
#   scripts/chaos.sh [SCENARIO...]     default: kill9 stop 503 rtpengine redis db
#
#   kill9      backend B is killed (-9) at FAULT_AT s and started again at RESTORE_AT s
#   stop       backend B is frozen (SIGSTOP) at FAULT_AT s and resumed (SIGCONT) at RESTORE_AT s
#   503        backend B is replaced by one answering every INVITE 503 at FAULT_AT s,
#              and the normal backend comes back at RESTORE_AT s
#   rtpengine  media anchored through two RTPEngines (A, B); B is killed (-9) at
#              FAULT_AT s and started again (empty: its sessions are gone) at RESTORE_AT s
#   redis      call events to a Redis (AOF, fsync always); it is killed (-9) at
#              FAULT_AT s and started again on its data at RESTORE_AT s
#   db         destinations read from PostgreSQL's dispatcher table (every 2 s) and
#              accounting to the same PostgreSQL; it is stopped at FAULT_AT s and
#              started again DB_DOWN_S (30) s later; the run lasts 12 s past that
#   db-mysql   the same with MariaDB
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
#   lost                   dependency scenarios: events (redis: call_start, call_answered,
#                          call_end) or acc rows (db: INVITE, BYE, CDR) sipvane built but
#                          the service does not hold once recovered; "-" otherwise
#   RSS before / after     sipvane's resident memory when the load starts and ends (KiB)
# For the dependency scenarios "out after" / "back after" are the time until sipvane
# sees the dependency down / up again (rtpengine: /status engine up; redis:
# sipvane_events_connected; db, db-mysql: sipvane_acc_db_up), and a line of detail follows
# the table (counters: rejected calls, timeouts, spooled and replayed rows, ...).
#
# The behaviours the table illustrates are asserted by tests, not by this script:
# control/tests/proxy_sipp.rs (failover_on_503_loses_no_call,
# failover_on_dead_destination_via_timeout), control/tests/probe_sipp.rs, and
# control/tests/chaos.rs (a frozen backend is avoided and used again once resumed; a
# killed RTPEngine costs no call), control/tests/events_redis.rs and acc_db.rs (Redis
# and the accounting database down and back: nothing lost).
# Environment: CHAOS_RATE (default 50), CHAOS_SECONDS (40), FAULT_AT (8),
# RESTORE_AT (20), DB_DOWN_S (30), CHAOS_PORT (first of a run of free ports, default 26060).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
rate="${CHAOS_RATE:-50}"
secs="${CHAOS_SECONDS:-40}"
fault_at="${FAULT_AT:-8}"
restore_at="${RESTORE_AT:-20}"
db_down="${DB_DOWN_S:-30}"
port0="${CHAOS_PORT:-26060}"
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(kill9 stop 503 rtpengine redis db db-mysql)

die() { echo "chaos.sh: $*" >&2; exit 1; }
command -v sipp >/dev/null || die "sipp not found: run \`make deps\`"
command -v jq >/dev/null || die "jq not found: run \`make deps\`"
command -v curl >/dev/null || die "curl not found: run \`make deps\`"
command -v redis-server >/dev/null || die "redis-server not found: run \`make deps\`"
command -v psql >/dev/null || die "psql not found: run \`make deps\`"
command -v mariadbd >/dev/null || die "mariadbd not found: run \`make deps\`"

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

metrics() { curl -s -m 2 "http://$mgmt/metrics" || true; }
# sum of every sample of metric $2 (all label sets) in the exposition $1
metric() { awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d", s + 0 }' <<<"$1"; }

# ---- the dependency scenarios' services (private, loopback, under $dir)
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_start_again() { # the data directory services.sh made, same options
  local data; data=$(cat "$dir/pg/datadir")
  as_pg "$(pg_bin)/pg_ctl" -D "$data" -l "$(dirname "$data")/postgres.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $(dirname "$data") -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >>"$dir/pg_ctl.log" 2>&1
}
pg_stop() { as_pg "$(pg_bin)/pg_ctl" -D "$(cat "$dir/pg/datadir")" -m fast -w -t 30 stop >>"$dir/pg_ctl.log" 2>&1; }
my_sql() { mariadb --no-defaults -h 127.0.0.1 -P "$my_port" -usipvane -psipvane sipvane "$@"; }
my_stop() { # a clean shutdown (SIGTERM), waited for
  local pid; pid=$(cat "$dir/my/pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}
my_start_again() { # the data directory services.sh made, same options
  local user; user="$(id -un)"
  setsid mariadbd --no-defaults --datadir="$dir/my/data" --socket="$dir/my/mysqld.sock" \
    --port="$my_port" --bind-address=127.0.0.1 --user="$user" --pid-file="$dir/my/mariadbd.pid" \
    --log-error="$dir/my/mariadbd.err" --skip-name-resolve --skip-log-bin \
    --innodb-buffer-pool-size=32M --innodb-flush-log-at-trx-commit=0 \
    --max-connections=200 </dev/null >/dev/null 2>&1 &
  echo $! >"$dir/my/pid"
  for _ in $(seq 300); do my_sql -e 'SELECT 1' >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
redis_start() { # AOF with fsync always: what Redis acknowledged survives kill -9
  redis-server --port "$redis_port" --bind 127.0.0.1 --protected-mode yes --save '' \
    --appendonly yes --appendfsync always --dir "$dir/redis" --unixsocket '' \
    --logfile "$dir/redis/redis.log" >/dev/null 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  for _ in $(seq 100); do
    redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  die "redis did not start (see $dir/redis/redis.log)"
}
services_stop() {
  [ -n "${svc_dirs:-}" ] || return 0
  local d
  for d in $svc_dirs; do bash scripts/services.sh stop "${d%%:*}" "${d#*:}" >/dev/null 2>&1 || true; done
  svc_dirs=""
}
svc_start() { # NAME DIR: services.sh start, remembered for services_stop
  svc_dirs="${svc_dirs:-} $1:$2"
  bash scripts/services.sh start "$1" "$2" >"$2.env" || die "$1 did not start (logs in $2)"
}

# The dependency's state as sipvane sees it: true (up) / false / ?
dep_up() {
  case $sc in
    rtpengine)
      curl -s -m 2 "http://$mgmt/status" |
        jq -r --arg a "$rtp_b" '[.rtpengine[] | select(.address == $a) | .up][0] | if . == null then "?" else tostring end' 2>/dev/null || echo "?" ;;
    redis) case "$(metric "$(metrics)" sipvane_events_connected)" in 1) echo true ;; 0) echo false ;; *) echo "?" ;; esac ;;
    db|db-mysql) case "$(metric "$(metrics)" sipvane_acc_db_up)" in 1) echo true ;; 0) echo false ;; *) echo "?" ;; esac ;;
    *) b_usable ;;
  esac
}
# "out" is reached when the broken element is seen down, "back" when seen up.
is_out() { case $sc in kill9|stop|503) [ "$(b_usable)" = false ] ;; *) [ "$(dep_up)" = false ] ;; esac; }
is_back() { case $sc in kill9|stop|503) [ "$(b_usable)" = true ] ;; *) [ "$(dep_up)" = true ] ;; esac; }

rows=()
details=()
run() {
  local sc=$1 i=$2
  dir="$out/$sc"
  rm -rf "$dir"; mkdir -p "$dir"
  local base=$((port0 + i * 20))
  local sv_port=$base priv=$((base + 1)) a_addr="127.0.0.1:$((base + 10))"
  b_addr="127.0.0.1:$((base + 11))"
  mgmt="127.0.0.1:$((base + 5))"
  redis_port=$((base + 12)) pg_port=$((base + 13)) my_port=$((base + 16)) rtp_b=""
  local run_secs=$secs fault=$fault_at restore=$restore_at extra=""
  printf '1 sip:%s\n1 sip:%s\n' "$a_addr" "$b_addr" >"$dir/dispatcher.list"
  local source="list = \"$dir/dispatcher.list\""
  case $sc in
    rtpengine)
      local e n
      for n in 0 1; do
        e=$([ $n = 0 ] && echo a || echo b)
        SIPVANE_TEST_RTPENGINE_PORT=$((base + 14 + n)) \
        SIPVANE_TEST_RTP_PORT_MIN=$((42000 + i * 1000 + n * 500)) \
        SIPVANE_TEST_RTP_PORT_MAX=$((42000 + i * 1000 + n * 500 + 499)) \
          svc_start rtpengine "$dir/rtp-$e"
      done
      rtp_b="127.0.0.1:$((base + 15))"
      extra="[rtpengine]
engines = [\"udp:127.0.0.1:$((base + 14))\", \"udp:$rtp_b\"]" ;;
    redis)
      mkdir -p "$dir/redis"; redis_start
      extra="[events]
redis_url = \"redis://127.0.0.1:$redis_port\"
list = \"sipvane:chaos\"" ;;
    db)
      SIPVANE_TEST_PG_PORT=$pg_port svc_start postgres "$dir/pg"
      local url; url=$(sed -n 's/^SIPVANE_TEST_PG_URL=//p' "$dir/pg.env")
      local schema=/usr/share/kamailio/postgres
      psql "$url" -q -v ON_ERROR_STOP=1 -f "$schema/standard-create.sql" -f "$schema/acc-create.sql" \
        -f "$schema/dispatcher-create.sql" \
        -c "INSERT INTO dispatcher (setid, destination) VALUES (1, 'sip:$a_addr'), (1, 'sip:$b_addr')" \
        >/dev/null || die "db: schema not loaded"
      source="source = \"$url\"
reload_interval_s = 2
snapshot_path = \"$dir/dispatcher.snapshot\""
      extra="[acc]
db_url = \"$url\"
spool_dir = \"$dir/spool\"
cdrs = true"
      restore=$((fault + db_down))
      [ "$run_secs" -ge $((restore + 12)) ] || run_secs=$((restore + 12)) ;;
    db-mysql)
      SIPVANE_TEST_MYSQL_PORT=$my_port svc_start mariadb "$dir/my"
      local url; url=$(sed -n 's/^SIPVANE_TEST_MYSQL_URL=//p' "$dir/my.env")
      local schema=/usr/share/kamailio/mysql
      cat "$schema/standard-create.sql" "$schema/acc-create.sql" "$schema/dispatcher-create.sql" |
        my_sql || die "db-mysql: schema not loaded"
      my_sql -e "INSERT INTO dispatcher (setid, destination) VALUES (1, 'sip:$a_addr'), (1, 'sip:$b_addr')" ||
        die "db-mysql: dispatcher rows not loaded"
      source="source = \"$url\"
reload_interval_s = 2
snapshot_path = \"$dir/dispatcher.snapshot\""
      extra="[acc]
db_url = \"$url\"
spool_dir = \"$dir/spool\"
cdrs = true"
      restore=$((fault + db_down))
      [ "$run_secs" -ge $((restore + 12)) ] || run_secs=$((restore + 12)) ;;
  esac
  cat >"$dir/sipvane.toml" <<EOT
[proxy]
listen = "127.0.0.1:$sv_port"
workers = 2
private_port_base = $priv
[mgmt]
listen = "$mgmt"
[dispatcher]
$source
algorithm = "round-robin"
$extra
EOT
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
  # (The acc writer connects when the first rows come: db is checked under load.)
  if [ "$sc" = rtpengine ] || [ "$sc" = redis ]; then
    for _ in $(seq 100); do [ "$(dep_up)" = true ] && break; sleep 0.1; done
    [ "$(dep_up)" = true ] || die "$sc: sipvane does not see the dependency up (see $dir/sipvane.log)"
  fi

  local calls=$((rate * run_secs))
  local rss0; rss0=$(rss "$sv_pid")
  sipp-scenarios/run.sh uac "127.0.0.1:$sv_port" -r "$rate" -m "$calls" -d 1000 \
    -timeout "$((run_secs + 60))" -timeout_error -trace_stat -stf "$dir/uac.csv" -fd 1 \
    >"$dir/uac.log" 2>&1 &
  local uac=$!
  pids+=("$uac")
  local t0; t0=$(now)
  local t_fault="" t_restore="" out_after="-" back_after="-" faulted=0 restored=0
  while kill -0 "$uac" 2>/dev/null; do
    local el; el=$(since "$t0")
    if [ $faulted = 0 ] && awk -v e="$el" -v f="$fault" 'BEGIN { exit !(e >= f) }'; then
      faulted=1; t_fault=$(now)
      case $sc in
        kill9) kill -9 "$b_pid"; wait "$b_pid" 2>/dev/null || true ;;
        stop) kill -STOP "$b_pid" ;;
        503) kill -INT "$b_pid"; wait "$b_pid" 2>/dev/null || true; start_uas uas_503 "$b_addr"; b_pid=$uas_pid ;;
        rtpengine) kill -9 "$(cat "$dir/rtp-b/pid")" ;;
        redis) kill -9 "$redis_pid"; wait "$redis_pid" 2>/dev/null || true ;;
        db) pg_stop || die "db: PostgreSQL did not stop (see $dir/pg_ctl.log)" ;;
        db-mysql) my_stop || die "db-mysql: MariaDB did not stop" ;;
      esac
    fi
    if [ $faulted = 1 ] && [ "$out_after" = - ] && is_out; then
      out_after=$(since "$t_fault")
    fi
    if [ $restored = 0 ] && awk -v e="$el" -v r="$restore" 'BEGIN { exit !(e >= r) }'; then
      restored=1; t_restore=$(now)
      case $sc in
        kill9) wait "$b_pid" 2>/dev/null || true; start_uas uas "$b_addr"; b_pid=$uas_pid ;;
        stop) kill -CONT "$b_pid" ;;
        503) kill -INT "$b_pid"; wait "$b_pid" 2>/dev/null || true; start_uas uas "$b_addr"; b_pid=$uas_pid ;;
        rtpengine)
          SIPVANE_TEST_RTPENGINE_PORT=$((base + 15)) \
          SIPVANE_TEST_RTP_PORT_MIN=$((42000 + i * 1000 + 500)) \
          SIPVANE_TEST_RTP_PORT_MAX=$((42000 + i * 1000 + 999)) \
            bash scripts/services.sh start rtpengine "$dir/rtp-b" >/dev/null || die "rtpengine did not restart" ;;
        redis) redis_start ;;
        db) pg_start_again || die "db: PostgreSQL did not start again (see $dir/pg_ctl.log)" ;;
        db-mysql) my_start_again || die "db-mysql: MariaDB did not start again (see $dir/my/mariadbd.err)" ;;
      esac
    fi
    if [ $restored = 1 ] && [ "$back_after" = - ] && is_back; then
      back_after=$(since "$t_restore")
    fi
    sleep 0.2
  done
  wait "$uac" 2>/dev/null || true
  local rss1; rss1=$(rss "$sv_pid")
  # Recovered: every dialog ended, the exporter / acc writer caught up.
  local x
  for _ in $(seq 60); do
    x=$(metrics)
    [ "$(metric "$x" sipvane_dialogs_active)" = 0 ] && break
    sleep 0.5
  done
  local lost="-" detail=""
  case $sc in
    rtpengine)
      detail="$(metric "$x" sipvane_rtpengine_offers_total) offers, $(metric "$x" sipvane_rtpengine_timeouts_total) ng requests timed out, $(metric "$x" sipvane_rtpengine_errors_total) errors, $(metric "$x" sipvane_rtpengine_rejected_calls_total) calls rejected 503, $(metric "$x" sipvane_rtpengine_passthrough_calls_total) passed through unanchored" ;;
    redis)
      for _ in $(seq 30); do
        x=$(metrics)
        [ "$(metric "$x" sipvane_events_buffered)" = 0 ] && [ "$(metric "$x" sipvane_event_queue_depth)" = 0 ] && break
        sleep 0.5
      done
      local want got
      want=$(( $(metric "$x" sipvane_initial_invites_total) + 2 * $(metric "$x" sipvane_calls_answered_total) ))
      got=$(redis-cli -p "$redis_port" --raw LRANGE sipvane:chaos 0 -1 | grep -c '"type":"call_' || true)
      lost=$((want - got))
      detail="$got call events in Redis of $want built; $(metric "$x" sipvane_events_redis_errors_total) Redis errors, $(metric "$x" sipvane_events_reconnects_total) reconnects, dropped $(metric "$x" sipvane_events_dropped_buffer_full_total) (buffer full) + $(metric "$x" sipvane_event_queue_dropped_total) (queue full)" ;;
    db|db-mysql)
      for _ in $(seq 60); do
        x=$(metrics)
        [ "$(metric "$x" sipvane_acc_spool_rows)" = 0 ] && [ "$(metric "$x" sipvane_acc_pending_rows)" = 0 ] && break
        sleep 0.5
      done
      local rows_db answered
      answered=$(metric "$x" sipvane_calls_answered_total)
      local count="SELECT (SELECT COUNT(*) FROM acc) + (SELECT COUNT(*) FROM acc_cdrs) + (SELECT COUNT(*) FROM missed_calls)"
      if [ "$sc" = db ]; then
        rows_db=$(psql "$(sed -n 's/^SIPVANE_TEST_PG_URL=//p' "$dir/pg.env")" -tA -c "$count")
      else
        rows_db=$(my_sql -N -e "$count")
      fi
      lost=$(( $(metric "$x" sipvane_acc_rows_total) - rows_db ))
      detail="$rows_db acc/CDR/missed rows in the database of $(metric "$x" sipvane_acc_rows_total) built ($answered answered calls); $(metric "$x" sipvane_acc_rows_spooled_total) spooled, $(metric "$x" sipvane_acc_rows_replayed_total) replayed, $(metric "$x" sipvane_acc_rows_dropped_total) dropped; destinations kept while the dispatcher table was unreachable ($(metric "$x" sipvane_no_destination_total) calls without one)" ;;
  esac
  local failovers
  failovers=$(metric "$x" sipvane_failovers_total)
  local ok failed
  ok=$(stat_col "$dir/uac.csv" "SuccessfulCall(C)")
  failed=$(stat_col "$dir/uac.csv" "FailedCall(C)")
  kill -TERM "$sv_pid" 2>/dev/null || true
  wait "$sv_pid" 2>/dev/null || true
  cleanup
  services_stop
  rows+=("| $sc | $calls | $ok | $failed | $out_after | $back_after | ${failovers:-?} | $lost | $rss0 | $rss1 |")
  [ -z "$detail" ] || details+=("- $sc: $detail")
  echo "chaos.sh: $sc done: $ok ok, $failed failed (logs in $dir)${detail:+; $detail}" >&2
}
trap 'cleanup; services_stop' EXIT

i=0
for sc in "${scenarios[@]}"; do
  case $sc in kill9|stop|503|rtpengine|redis|db|db-mysql) ;; *) die "unknown scenario '$sc' (kill9, stop, 503, rtpengine, redis, db, db-mysql)" ;; esac
  run "$sc" "$i"
  i=$((i + 1))
done

{
  echo "chaos: ${rate} calls/s (1 s each) for ${secs} s through sipvane, fault at ${fault_at} s, repaired at ${restore_at} s (db: ${db_down} s later) ($(date -u +%F))"
  echo
  echo "| scenario | calls | completed | failed | out after (s) | back after (s) | failovers | lost | RSS before (KiB) | RSS after (KiB) |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  if [ ${#details[@]} -gt 0 ]; then
    echo
    printf '%s\n' "${details[@]}"
  fi
} | tee "$out/table.md"
