#!/usr/bin/env bash
# Private, throw-away instances of the services sipvane talks to, for tests and
# the demo. Everything listens on 127.0.0.1 only, on private ports, with its
# data, sockets, logs and pid under one directory that `stop` removes.
#
# Usage:
#   scripts/services.sh start NAME [DIR]   start NAME (idempotent), wait until it
#                                          answers, print its KEY=VALUE settings
#   scripts/services.sh stop NAME [DIR]    stop it and remove DIR
#   scripts/services.sh env NAME [DIR]     print the KEY=VALUE settings again
#   scripts/services.sh status [NAME [DIR]]
#   scripts/services.sh stop-all           stop everything under the base dir and
#                                          the test harness's target/tmp/services
#
# NAME: redis | postgres | mariadb | rtpengine   (mysql = mariadb)
# DIR:  default $SIPVANE_SERVICES_DIR/NAME, base default <repo>/.tmp/services
#
# Ports (environment overrides):
#   SIPVANE_TEST_REDIS_PORT=16379        redis://127.0.0.1:16379
#   SIPVANE_TEST_PG_PORT=15432           postgres://sipvane:sipvane@127.0.0.1:15432/sipvane
#   SIPVANE_TEST_MYSQL_PORT=13306        mysql://sipvane:sipvane@127.0.0.1:13306/sipvane
#   SIPVANE_TEST_RTPENGINE_PORT=22222    ng control on udp 127.0.0.1:22222
#   SIPVANE_TEST_RTP_PORT_MIN=30000 / SIPVANE_TEST_RTP_PORT_MAX=30999  media ports
#
# `start` prints lines such as
#   SIPVANE_TEST_REDIS_URL=redis://127.0.0.1:16379
# that a caller can `eval` or parse. Database `sipvane` is owned by user
# `sipvane` with password `sipvane` in both PostgreSQL and MariaDB.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="${SIPVANE_SERVICES_DIR:-$repo/.tmp/services}"
READY_TIMEOUT="${SIPVANE_SERVICES_TIMEOUT:-30}"   # seconds to wait for readiness

die() { echo "services.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: run \`make deps\` (or apt-get install $2)"; }

canon() {
  case "$1" in
    redis|postgres|mariadb|rtpengine) echo "$1" ;;
    mysql) echo mariadb ;;
    pg|postgresql) echo postgres ;;
    *) die "unknown service '$1' (redis, postgres, mariadb, rtpengine)" ;;
  esac
}

# A pid is alive if it exists and is not a zombie (daemons are reparented to
# an init that may reap them late; kill -0 succeeds on zombies).
alive() {
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  local st; st="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
  [ "$st" != Z ]
}

# Wait until "$@" succeeds, at most READY_TIMEOUT seconds.
wait_for() {
  local what="$1"; shift
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}

# Send SIGTERM to a pid, wait up to $2 seconds, then SIGKILL.
term_wait() {
  local pid="$1" grace="${2:-10}"
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + grace))
  while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  while alive "$pid"; do sleep 0.05; done
}

pg_bindir() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [ -n "$d" ] && [ -x "$d/postgres" ] || die "postgres not found: run \`make deps\` (or apt-get install postgresql)"
  echo "$d"
}

# Run a command as the postgres user when we are root (postgres refuses root).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# ---------------------------------------------------------------- redis
redis_ping() { redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG; }

start_redis() {
  local dir="$1" port="${SIPVANE_TEST_REDIS_PORT:-16379}"
  need redis-server redis-server; need redis-cli redis-tools
  redis-server --port "$port" --bind 127.0.0.1 --protected-mode yes --save '' \
    --appendonly no --daemonize yes --dir "$dir" --pidfile "$dir/redis.pid" \
    --logfile "$dir/redis.log" --unixsocket '' >/dev/null
  wait_for redis redis_ping "$port" || { tail -20 "$dir/redis.log" >&2; return 1; }
  cat "$dir/redis.pid" > "$dir/pid"
  echo "SIPVANE_TEST_REDIS_URL=redis://127.0.0.1:$port" > "$dir/env"
  echo "SIPVANE_TEST_REDIS_PORT=$port" >> "$dir/env"
}

stop_redis() {
  local dir="$1"
  term_wait "$(cat "$dir/pid" 2>/dev/null || cat "$dir/redis.pid" 2>/dev/null || true)" 10
}

# ---------------------------------------------------------------- postgres
pg_ready() { "$1/pg_isready" -h 127.0.0.1 -p "$2" -q; }

start_postgres() {
  local dir="$1" port="${SIPVANE_TEST_PG_PORT:-15432}" bin
  bin="$(pg_bindir)"
  need psql postgresql-client
  local data="$dir/data"
  if [ "$(id -u)" -eq 0 ]; then
    # The postgres user must reach the data dir; when the checkout lives
    # somewhere it cannot traverse, keep the data in a private dir under /tmp.
    chown postgres: "$dir"
    if ! runuser -u postgres -- test -w "$dir"; then
      data="$(mktemp -d /tmp/sipvane-pg.XXXXXX)"
      chown postgres: "$data"
      chmod 700 "$data"
      data="$data/data"
    fi
  fi
  echo "$data" > "$dir/datadir"
  as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1 \
    || { tail -20 "$dir/initdb.log" >&2; return 1; }
  as_pg "$bin/pg_ctl" -D "$data" -l "$(dirname "$data")/postgres.log" -w -t "$READY_TIMEOUT" \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $(dirname "$data") -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >"$dir/pg_ctl.log" 2>&1 \
    || { cat "$dir/pg_ctl.log" "$(dirname "$data")/postgres.log" >&2 2>/dev/null; return 1; }
  wait_for postgres pg_ready "$bin" "$port" || return 1
  head -1 "$data/postmaster.pid" > "$dir/pid"
  as_pg psql -q -v ON_ERROR_STOP=1 -h "$(dirname "$data")" -p "$port" -U postgres -d postgres \
    -c "CREATE ROLE sipvane LOGIN PASSWORD 'sipvane'" \
    -c "CREATE DATABASE sipvane OWNER sipvane" >/dev/null
  {
    echo "SIPVANE_TEST_PG_URL=postgres://sipvane:sipvane@127.0.0.1:$port/sipvane"
    echo "SIPVANE_TEST_PG_PORT=$port"
  } > "$dir/env"
}

stop_postgres() {
  local dir="$1" data bin
  data="$(cat "$dir/datadir" 2>/dev/null || echo "$dir/data")"
  if [ -f "$data/postmaster.pid" ]; then
    bin="$(pg_bindir)"
    as_pg "$bin/pg_ctl" -D "$data" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
  fi
  term_wait "$(cat "$dir/pid" 2>/dev/null || true)" 5
  case "$data" in /tmp/sipvane-pg.*/data) rm -rf "$(dirname "$data")" ;; esac
}

# ---------------------------------------------------------------- mariadb
my_ping() { mariadb-admin --no-defaults --socket="$1/mysqld.sock" -uroot ping; }

start_mariadb() {
  local dir="$1" port="${SIPVANE_TEST_MYSQL_PORT:-13306}"
  need mariadbd mariadb-server; need mariadb-install-db mariadb-server; need mariadb mariadb-client
  local user; user="$(id -un)"
  mariadb-install-db --no-defaults --datadir="$dir/data" --user="$user" \
    --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve \
    >"$dir/install.log" 2>&1 || { tail -20 "$dir/install.log" >&2; return 1; }
  # setsid: its own session, so it survives this script and ignores a Ctrl-C in the shell.
  setsid mariadbd --no-defaults --datadir="$dir/data" --socket="$dir/mysqld.sock" \
    --port="$port" --bind-address=127.0.0.1 --user="$user" --pid-file="$dir/mariadbd.pid" \
    --log-error="$dir/mariadbd.err" --skip-name-resolve --skip-log-bin \
    --innodb-buffer-pool-size=32M --innodb-flush-log-at-trx-commit=0 \
    --max-connections=200 </dev/null >/dev/null 2>&1 &
  echo $! > "$dir/pid"
  if ! wait_for mariadb my_ping "$dir"; then
    tail -20 "$dir/mariadbd.err" >&2
    return 1
  fi
  mariadb --no-defaults --socket="$dir/mysqld.sock" -uroot -e "
    CREATE DATABASE IF NOT EXISTS sipvane;
    CREATE USER IF NOT EXISTS 'sipvane'@'127.0.0.1' IDENTIFIED BY 'sipvane';
    CREATE USER IF NOT EXISTS 'sipvane'@'localhost' IDENTIFIED BY 'sipvane';
    GRANT ALL PRIVILEGES ON sipvane.* TO 'sipvane'@'127.0.0.1';
    GRANT ALL PRIVILEGES ON sipvane.* TO 'sipvane'@'localhost';"
  {
    echo "SIPVANE_TEST_MYSQL_URL=mysql://sipvane:sipvane@127.0.0.1:$port/sipvane"
    echo "SIPVANE_TEST_MYSQL_PORT=$port"
  } > "$dir/env"
}

stop_mariadb() {
  term_wait "$(cat "$1/pid" 2>/dev/null || cat "$1/mariadbd.pid" 2>/dev/null || true)" 20
}

# ---------------------------------------------------------------- rtpengine
# ng "ping" over UDP (bencode): "<cookie> d7:command4:pinge" -> "<cookie> d6:result4:ponge".
ng_ping() {
  local port="$1" reply=""
  exec 3<>"/dev/udp/127.0.0.1/$port" || return 1
  printf 'svc_ping d7:command4:pinge' >&3
  # dd, not bash's read: read takes one byte per read(2), which on a UDP
  # socket consumes (and truncates) the whole datagram.
  reply="$(timeout 0.5 dd bs=4096 count=1 <&3 2>/dev/null || true)"
  exec 3<&- 3>&-
  [[ "$reply" == *pong* ]]
}

start_rtpengine() {
  local dir="$1" port="${SIPVANE_TEST_RTPENGINE_PORT:-22222}"
  local pmin="${SIPVANE_TEST_RTP_PORT_MIN:-30000}" pmax="${SIPVANE_TEST_RTP_PORT_MAX:-30999}"
  need rtpengine rtpengine-daemon
  # Userspace forwarding only (--table=-1: no kernel module, no firewall rules);
  # --config-file=none: ignore /etc/rtpengine/rtpengine.conf.
  setsid rtpengine --config-file=none --table=-1 --interface=127.0.0.1 \
    --listen-ng="127.0.0.1:$port" --port-min="$pmin" --port-max="$pmax" \
    --foreground --log-stderr --log-level=5 --pidfile="$dir/rtpengine.pid" \
    --num-threads=2 --delete-delay=0 </dev/null >"$dir/rtpengine.log" 2>&1 &
  echo $! > "$dir/pid"
  if ! wait_for rtpengine ng_ping "$port"; then
    tail -20 "$dir/rtpengine.log" >&2
    return 1
  fi
  {
    echo "SIPVANE_TEST_RTPENGINE=udp:127.0.0.1:$port"
    echo "SIPVANE_TEST_RTPENGINE_PORT=$port"
  } > "$dir/env"
}

stop_rtpengine() {
  term_wait "$(cat "$1/pid" 2>/dev/null || true)" 10
}

# ---------------------------------------------------------------- commands
running() {  # running DIR -> true if the recorded pid is alive
  local pid; pid="$(cat "$1/pid" 2>/dev/null || true)"
  alive "$pid"
}

cmd_start() {
  local name dir; name="$(canon "$1")"; dir="${2:-$base/$name}"
  if [ -f "$dir/env" ] && running "$dir"; then
    cat "$dir/env"; return 0
  fi
  [ -d "$dir" ] && cmd_stop "$name" "$dir"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  echo "$name" > "$dir/name"
  if ! "start_$name" "$dir"; then
    echo "services.sh: $name did not start; logs in $dir" >&2
    "stop_$name" "$dir" || true
    exit 1
  fi
  cat "$dir/env"
}

cmd_stop() {
  local name dir; name="$(canon "$1")"; dir="${2:-$base/$name}"
  [ -d "$dir" ] || return 0
  "stop_$name" "$dir" || true
  rm -rf "$dir"
}

cmd_env() {
  local name dir; name="$(canon "$1")"; dir="${2:-$base/$name}"
  [ -f "$dir/env" ] && running "$dir" || die "$name is not running (in $dir)"
  cat "$dir/env"
}

cmd_status() {
  local d n
  if [ $# -ge 1 ]; then
    n="$(canon "$1")"; d="${2:-$base/$n}"
    if running "$d"; then echo "$n: running (pid $(cat "$d/pid"), $d)"; else echo "$n: stopped"; return 1; fi
    return 0
  fi
  for d in "$base"/*/; do
    [ -f "$d/name" ] || continue
    n="$(cat "$d/name")"
    if running "$d"; then echo "$n: running (pid $(cat "$d/pid"), ${d%/})"; else echo "$n: stale (${d%/})"; fi
  done
}

cmd_stop_all() {
  local d
  # Also the per-test instances of the Rust harness (control/tests/support).
  for d in "$base"/*/ "$repo"/target/tmp/services/*/; do
    [ -f "$d/name" ] || continue
    cmd_stop "$(cat "$d/name")" "${d%/}" &
  done
  wait
  return 0
}

case "${1:-}" in
  start)    [ $# -ge 2 ] || die "usage: services.sh start NAME [DIR]"; cmd_start "$2" "${3:-}" ;;
  stop)     [ $# -ge 2 ] || die "usage: services.sh stop NAME [DIR]"; cmd_stop "$2" "${3:-}" ;;
  env)      [ $# -ge 2 ] || die "usage: services.sh env NAME [DIR]"; cmd_env "$2" "${3:-}" ;;
  status)   shift; cmd_status "$@" ;;
  stop-all) cmd_stop_all ;;
  *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
