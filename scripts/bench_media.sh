#!/usr/bin/env bash
# Media anchoring benchmark: SIPp UAC (INVITE with SDP) -> sipvane -> SIPp UAS,
# at a fixed, bounded call rate, once with RTPEngine anchoring every call and
# once without, on loopback. Reports calls/s achieved and CPU per call of
# sipvane and (separately) of RTPEngine, from /proc/PID/stat (utime + stime)
# read before and after the run.
#
# Usage: scripts/bench_media.sh [CALLS] [RATE]     (default 3000 calls at 300/s)
# Needs: sipp, rtpengine (make deps) and a built sipvane
#        (cargo build --profile ci -p control; SIPVANE=path overrides).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
calls="${1:-3000}"
rate="${2:-300}"
sipvane="${SIPVANE:-$repo/target/ci/sipvane}"
[ -x "$sipvane" ] || { echo "build sipvane first: cargo build --profile ci -p control" >&2; exit 1; }
command -v sipp >/dev/null || { echo "sipp missing: make deps" >&2; exit 1; }

work="$(mktemp -d /tmp/sipvane-bench-media.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  SIPVANE_SERVICES_DIR="$work" bash "$repo/scripts/services.sh" stop rtpengine "$work/rtpengine" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# A free UDP port from the kernel (python3), else a random one in 20000-29999.
free_port() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 10000))
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, clock ticks
hz="$(getconf CLK_TCK)"

ng_port="$(free_port)"
SIPVANE_TEST_RTPENGINE_PORT="$ng_port" SIPVANE_TEST_RTP_PORT_MIN=40000 SIPVANE_TEST_RTP_PORT_MAX=49999 \
  bash "$repo/scripts/services.sh" start rtpengine "$work/rtpengine" >/dev/null
rtpe_pid="$(cat "$work/rtpengine/pid")"

uas_port="$(free_port)"
(cd "$work" && exec sipp -sf "$repo/sipp-scenarios/uas.xml" -i 127.0.0.1 -p "$uas_port" \
   -nostdin >/dev/null 2>&1) &
pids+=("$!")
sleep 0.5

# Column of a SIPp stat CSV, by header name, from the last row.
stat_col() {
  awk -F';' -v name="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i }
    END { print (c ? $c : 0) }' "$1"
}

run_once() {  # run_once LABEL ENGINES_TOML
  local label="$1" engines="$2" port cfg log
  port="$(free_port)"
  cfg="$work/$label.toml"
  printf '1 sip:127.0.0.1:%s\n' "$uas_port" > "$work/dispatcher.list"
  cat > "$cfg" <<EOF
[proxy]
listen = "127.0.0.1:$port"
workers = 1
private_port_base = $((port + 1))
[dispatcher]
list = "$work/dispatcher.list"
ping_interval_s = 0
[rtpengine]
engines = [$engines]
ping_interval_s = 5
EOF
  log="$work/$label.log"
  "$sipvane" run -c "$cfg" >"$log" 2>&1 &
  local sp=$!
  pids+=("$sp")
  sleep 1
  local s0 r0 t0 s1 r1 t1
  s0="$(ticks "$sp")"; r0="$(ticks "$rtpe_pid")"; t0="$(date +%s.%N)"
  (cd "$work" && sipp -sf "$repo/sipp-scenarios/uac.xml" -i 127.0.0.1 -p "$(free_port)" \
     -m "$calls" -r "$rate" -l 2000 -timeout 120s -timeout_error -nostdin \
     -trace_stat -stf "$label.csv" 127.0.0.1:"$port" >/dev/null 2>&1) || true
  t1="$(date +%s.%N)"; s1="$(ticks "$sp")"; r1="$(ticks "$rtpe_pid")"
  kill "$sp"; wait "$sp" 2>/dev/null || true
  local ok failed
  ok="$(stat_col "$work/$label.csv" 'SuccessfulCall(C)')"
  failed="$(stat_col "$work/$label.csv" 'FailedCall(C)')"
  awk -v l="$label" -v ok="$ok" -v f="$failed" -v s="$((s1 - s0))" -v r="$((r1 - r0))" \
      -v hz="$hz" -v t0="$t0" -v t1="$t1" 'BEGIN {
    el = t1 - t0; n = (ok > 0 ? ok : 1)
    printf "%-12s calls ok %5d failed %3d  %6.1f calls/s  sipvane %7.1f us CPU/call  rtpengine %7.1f us CPU/call\n",
      l, ok, f, ok / el, s / hz * 1e6 / n, r / hz * 1e6 / n }'
  grep -o 'rtpengine0_[a-z]*=[0-9]*' "$log" | tr '\n' ' '; echo
}

echo "calls=$calls rate=$rate/s workers=1 (sipvane), rtpengine userspace --num-threads=2"
run_once anchored "\"udp:127.0.0.1:$ng_port\""
run_once plain ""
