# Shared by perf/record.sh and perf/stat.sh: build, then run two
# sipvane-bench responders and one sipvane on loopback ports, all stopped when
# the calling script exits. Not meant to be run by itself.
#
# Environment: PROFILE (cargo profile, default "release": symbols for
# flamegraphs), WORKERS (sipvane workers, default 1), IO (uring | epoll,
# default auto), EXTRA_TOML (appended to sipvane's configuration, e.g. a
# [hep] section to measure capture), PROXY_TOML (more keys of its [proxy]
# section).

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${PROFILE:-release}"
WORKERS="${WORKERS:-1}"
IO="${IO:-auto}"
case "$PROFILE" in dev) bindir="$repo/target/debug" ;; *) bindir="$repo/target/$PROFILE" ;; esac
bench="$bindir/sipvane-bench"
work="$(mktemp -d /tmp/sipvane-perf.XXXXXX)"
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

build() {
  (cd "$repo" && cargo build -q --profile "$PROFILE" -p control -p bench)
}

# A port nobody listens on (UDP or TCP), and with $1 = n the n ports after it.
free_port() {
  local n="${1:-0}" p i ok
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 40000)); ok=1
    for i in $(seq 0 "$n"); do
      if ss -Hlntu "sport = :$((p + i))" | grep -q .; then ok=0; break; fi
    done
    [ $ok -eq 1 ] && { echo "$p"; return; }
  done
  echo "perf: no free port" >&2; exit 1
}

# start_backends: two sipvane-bench responders, listed in $work/dispatcher.list
# (once per script; later calls do nothing).
start_backends() {
  [ -f "$work/dispatcher.list" ] && return 0
  local a b
  a="127.0.0.1:$(free_port)"; b="127.0.0.1:$(free_port)"
  "$bench" uas --listen "$a" --max-seconds 3600 >"$work/uas-a.log" 2>&1 & pids+=($!)
  "$bench" uas --listen "$b" --max-seconds 3600 >"$work/uas-b.log" 2>&1 & pids+=($!)
  "$bench" ping "$a" >/dev/null && "$bench" ping "$b" >/dev/null
  printf '1 sip:%s\n1 sip:%s\n' "$a" "$b" >"$work/dispatcher.list"
}

# start_lab [wrapper...]: backends + sipvane (run under the wrapper command,
# e.g. valgrind). Sets TARGET (host:port) and SIPVANE_PID.
start_lab() {
  local port
  start_backends
  port="$(free_port "$WORKERS")"
  cat >"$work/sipvane.toml" <<TOML
[proxy]
listen = "127.0.0.1:$port"
workers = $WORKERS
io = "$IO"
private_port_base = $((port + 1))
${PROXY_TOML:-}
[dispatcher]
list = "$work/dispatcher.list"
[mgmt]
listen = "127.0.0.1:$(free_port)"
${EXTRA_TOML:-}
TOML
  "$@" "$bindir/sipvane" run -c "$work/sipvane.toml" >"$work/sipvane.log" 2>&1 & SIPVANE_PID=$!
  pids+=("$SIPVANE_PID")
  TARGET="127.0.0.1:$port"
  if ! "$bench" ping "$TARGET" --timeout-ms 60000 >/dev/null; then
    echo "perf: sipvane did not come up; log:" >&2; tail -20 "$work/sipvane.log" >&2; exit 1
  fi
}

# start_kamailio [wrapper...]: backends + Kamailio with bench/kamailio/kamailio.cfg
# (tm + rr + dispatcher, one UDP receiver, TLSF), run under the wrapper command.
# Sets TARGET and KAMAILIO_PID (the main process; its children do the work).
start_kamailio() {
  local port dir="$work/kamailio"
  command -v kamailio >/dev/null || { echo "perf: kamailio not found (scripts/deps.sh)" >&2; exit 1; }
  start_backends
  mkdir -p "$dir"
  port="$(free_port)"
  "$@" kamailio -f "$repo/bench/kamailio/kamailio.cfg" -DD -E -x tlsf -m 256 -M 16 -n 1 \
    -l "udp:127.0.0.1:$port" -Y "$dir" -P "$dir/kamailio.pid" -w "$dir" \
    -A "DS_LIST=\"$work/dispatcher.list\"" >"$dir/kamailio.log" 2>&1 & KAMAILIO_PID=$!
  pids+=("$KAMAILIO_PID")
  TARGET="127.0.0.1:$port"
  if ! "$bench" ping "$TARGET" --timeout-ms 60000 >/dev/null; then
    echo "perf: kamailio did not come up; log:" >&2; tail -20 "$dir/kamailio.log" >&2; exit 1
  fi
}

# Completed calls from a `sipvane-bench uac --json` output file.
ok_calls() { sed -n 's/^ *"ok": \([0-9]*\),*$/\1/p' "$1" | head -1; }
