#!/usr/bin/env bash
# `make bench-registrar`: REGISTER/s per core of sipvane's registrar next to
# Kamailio's (registrar + usrloc db_mode 2 + auth_db, config written here) on
# the same private PostgreSQL with Kamailio's schema, the same BENCH_REG_USERS
# (10000) subscriber rows and the same SIPp run: every user registers once
# with digest authentication (REGISTER -> 401 -> REGISTER -> 200) offered at
# BENCH_REG_RATE (2000) per second. One sipvane worker, one Kamailio UDP
# receiver. "per core" = successful REGISTERs / CPU seconds the proxy used
# (all its processes, until every binding is written to `location`), next to
# REGISTERs per wall-clock second.
# Records numbers only (target/bench/registrar.txt); asserts nothing about speed.
#
# Environment: BIN_DIR (where sipvane is; default target/release),
# BENCH_REG_USERS, BENCH_REG_RATE, BENCH_REG_PROXIES (sipvane,kamailio).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bin="${BIN_DIR:-target/release}"
users="${BENCH_REG_USERS:-10000}"
rate="${BENCH_REG_RATE:-2000}"
proxies="${BENCH_REG_PROXIES:-sipvane,kamailio}"
work="$repo/.tmp/bench/registrar"
pgdir="$repo/.tmp/bench/postgres-registrar"
port=25160
scen="$repo/sipp-scenarios/register_users.xml"
mkdir -p target/bench
rm -rf "$work"; mkdir -p "$work"
command -v sipp >/dev/null || { echo "bench_registrar: sipp not found: run \`make deps\`" >&2; exit 1; }
[ -x "$bin/sipvane" ] || { echo "bench_registrar: $bin/sipvane missing (BIN_DIR)" >&2; exit 1; }

proxy_pid=""
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  bash scripts/services.sh stop postgres "$pgdir" >/dev/null 2>&1 || true
}
trap cleanup EXIT
export PGOPTIONS="-c client_min_messages=warning"
export SIPVANE_TEST_PG_PORT="${SIPVANE_TEST_PG_PORT:-15442}"
url=$(bash scripts/services.sh start postgres "$pgdir" | sed -n 's/^SIPVANE_TEST_PG_URL=//p')
[ -n "$url" ] || { echo "bench_registrar: PostgreSQL did not start" >&2; exit 1; }
schema=/usr/share/kamailio/postgres
for f in standard-create.sql auth_db-create.sql usrloc-create.sql; do
  [ -f "$schema/$f" ] || { echo "bench_registrar: $schema/$f missing: run \`make deps\`" >&2; exit 1; }
done
psql "$url" -q -v ON_ERROR_STOP=1 -c "DROP TABLE IF EXISTS version, subscriber, location, location_attrs" \
  -f "$schema/standard-create.sql" -f "$schema/auth_db-create.sql" -f "$schema/usrloc-create.sql" >/dev/null
first=60000; last=$((first + users - 1))
psql "$url" -q -v ON_ERROR_STOP=1 -c "INSERT INTO subscriber (username, domain, password, ha1) \
  SELECT u::text, 'example.com', '', md5(u::text || ':example.com:pw-' || u::text) \
  FROM generate_series($first, $last) AS u" >/dev/null
{
  echo SEQUENTIAL
  for u in $(seq "$first" "$last"); do echo "$u;[authentication username=$u password=pw-$u]"; done
} > "$work/users.csv"

# CPU ticks (user + system) of a process and its children processes.
ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

# Runs the SIPp registration round against 127.0.0.1:$port; prints
# "REGISTERs wall_s cpu_s".
round() {
  local t0 c0 t1 c1 ok
  t0=$(date +%s.%N); c0=$(ticks "$proxy_pid")
  (cd "$work" && sipp -sf "$scen" -inf users.csv -key contact 127.0.0.1:9 -key expires 3600 \
    -i 127.0.0.1 -p $((port + 50)) -m "$users" -r "$rate" -l 4000 -nostdin \
    -timeout 300s -trace_stat -stf "$1.csv" -fd 1 "127.0.0.1:$port" >/dev/null 2>&1) || true
  t1=$(date +%s.%N)
  # Successful calls: the SuccessfulCall(C) column of the last stat line.
  ok=$(awk -F';' 'NR==1 { for (i = 1; i <= NF; i++) if ($i == "SuccessfulCall(C)") col = i }
                  END { print $col + 0 }' "$work/$1.csv")
  # The CPU of writing the bindings to `location` counts too: wait (at most
  # 120 s) until every one is there.
  for _ in $(seq 240); do
    [ "$(psql "$url" -tA -c "SELECT COUNT(*) FROM location")" -ge "$ok" ] && break
    sleep 0.5
  done
  c1=$(ticks "$proxy_pid")
  awk -v ok="$ok" -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { print ok, t1 - t0, (c1 - c0) / hz }'
}

results=()
report() { # name ok wall cpu
  local line
  line=$(awk -v n="$1" -v ok="$2" -v w="$3" -v c="$4" -v u="$users" \
    'BEGIN { printf "%-9s %6d/%-6d %8.0f %10.0f %8.2f\n", n, ok, u, ok / w, (c > 0 ? ok / c : 0), c }')
  results+=("$line")
}

case ",$proxies," in *,sipvane,*)
  cat > "$work/dispatcher.list" <<EOF
1 sip:127.0.0.1:9
EOF
  cat > "$work/sipvane.toml" <<EOF
[proxy]
listen = "127.0.0.1:$port"
workers = 1
private_port_base = $((port + 10))
[mgmt]
listen = "127.0.0.1:$((port + 20))"
handover_socket = "$work/handover.sock"
[dispatcher]
list = "$work/dispatcher.list"
ping_interval_s = 0
[registrar]
domain = "example.com"
db_url = "$url"
prefixes = ["6"]
EOF
  "$bin/sipvane" run -c "$work/sipvane.toml" > "$work/sipvane.log" 2>&1 &
  proxy_pid=$!
  for _ in $(seq 100); do grep -q "sipvane is running" "$work/sipvane.log" && break; sleep 0.1; done
  grep -q "sipvane is running" "$work/sipvane.log" || { cat "$work/sipvane.log"; exit 1; }
  read -r ok wall cpu < <(round sipvane)
  report sipvane "$ok" "$wall" "$cpu"
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=""
  psql "$url" -q -c "DELETE FROM location" >/dev/null
;; esac

case ",$proxies," in *,kamailio,*)
  command -v kamailio >/dev/null || { echo "bench_registrar: kamailio not found: run \`make deps\`" >&2; exit 1; }
  cat > "$work/kamailio.cfg" <<EOF
#!KAMAILIO
debug=0
log_stderror=yes
disable_tcp=yes
auto_aliases=no
dns=no
rev_dns=no
loadmodule "sl.so"
loadmodule "maxfwd.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "db_postgres.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
modparam("usrloc", "db_url", "$url")
modparam("usrloc", "db_mode", 2)
# Write back every second (default 60), as sipvane's write_back_ms = 1000.
modparam("usrloc", "timer_interval", 1)
modparam("usrloc", "use_domain", 1)
modparam("auth_db", "db_url", "$url")
modparam("auth_db", "calculate_ha1", 0)
modparam("auth_db", "password_column", "ha1")
modparam("auth_db", "use_domain", 1)
request_route {
  if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
  if (!is_method("REGISTER")) { sl_send_reply("405", "Method Not Allowed"); exit; }
  if (!www_authorize("example.com", "subscriber")) { www_challenge("example.com", "0"); exit; }
  if (!save("location")) { sl_reply_error(); }
  exit;
}
EOF
  kamailio -f "$work/kamailio.cfg" -DD -E -x tlsf -m 256 -M 16 -n 1 -l "udp:127.0.0.1:$port" \
    -Y "$work" -P "$work/kamailio.pid" -w "$work" > "$work/kamailio.log" 2>&1 &
  proxy_pid=$!
  sleep 2
  kill -0 "$proxy_pid" 2>/dev/null || { cat "$work/kamailio.log"; exit 1; }
  read -r ok wall cpu < <(round kamailio)
  report kamailio "$ok" "$wall" "$cpu"
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=""
;; esac

{
  echo "registrar benchmark: $users users, each REGISTER -> 401 -> REGISTER -> 200, offered at $rate/s"
  echo "proxy     ok/users   REG/s  REG/core-s    cpu_s"
  printf '%s\n' "${results[@]}"
} | tee target/bench/registrar.txt
