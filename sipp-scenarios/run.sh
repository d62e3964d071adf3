#!/usr/bin/env bash
# Run one of sipvane's SIPp scenarios on loopback.
#
# Usage: run.sh ROLE ADDR [sipp options...]
#
#   Client roles (ADDR = where to send, host:port):
#     uac          INVITE/SDP -> [100] [180] 200 -> ACK -> pause(-d ms) -> BYE -> 200;
#                  ACK/BYE follow Record-Route (so they traverse a record-routing proxy)
#     uac_cancel   INVITE -> 180 -> CANCEL -> 200 + 487 -> ACK
#     options      OPTIONS -> 200 (one per "call": -m N sends N)
#     register     REGISTER -> 200
#     register_auth REGISTER -> 401 -> REGISTER with digest (-au USER -ap PASSWORD) -> 200;
#                  -s USER, -key contact HOST:PORT, -key expires SECONDS
#   Server roles (ADDR = where to listen, ip:port):
#     uas          INVITE -> 100, 180, 200/SDP -> ACK; BYE -> 200; echoes Record-Route
#     uas_503      INVITE -> 503 -> ACK
#     uas_486      INVITE -> 486 Busy Here -> ACK
#     uas_slow     like uas but answers after -d MS (passed to SIPp as -recv_timeout,
#                  because SIPp cannot take a CANCEL during a pause); CANCEL -> 200 + 487
#     uas_cancel   rings forever; CANCEL -> 200 + 487 -> ACK
#   Every server role answers out-of-dialog OPTIONS (health probes) with 200.
#
# Examples:
#   run.sh uas 127.0.0.1:5070                              # answer calls on 5070
#   run.sh uas 127.0.0.1:5070 -trace_stat -stf uas.csv     # ... and count them
#   run.sh uac 127.0.0.1:5060 -r 100 -m 1000               # 1000 calls at 100 cps
#   run.sh uac 127.0.0.1:5060 -r 50 -m 500 -d 2000 -l 200  # 2 s calls, <= 200 at once
#   run.sh uac 127.0.0.1:5060 -s 5070 -m 10                # R-URI user part "5070"
#   run.sh uas_slow 127.0.0.1:5072 -d 3000                 # answer after 3 s
#   run.sh uas_503 127.0.0.1:5074
#   run.sh uac_cancel 127.0.0.1:5060 -m 10 -r 10
#   run.sh options 127.0.0.1:5060 -m 1
#   run.sh uac '[::1]:5060' -m 10                          # IPv6 loopback
#
# Against a running sipvane (two SIPp backends; sipvane relays, record-routes,
# fails over from the 503 backend to the other one):
#   printf '1 sip:127.0.0.1:5070\n1 sip:127.0.0.1:5074\n' > /tmp/dispatcher.list
#   run.sh uas 127.0.0.1:5070 &  run.sh uas_503 127.0.0.1:5074 &
#   target/release/sipvane run --listen 127.0.0.1:5060 --dispatcher-list /tmp/dispatcher.list &
#   run.sh uac 127.0.0.1:5060 -r 100 -m 1000 -timeout 60s  # ACK/BYE via sipvane's Record-Route
#   run.sh uac_cancel 127.0.0.1:5060 -m 10 -timeout 30s    # needs a ringing backend:
#   run.sh uas_cancel 127.0.0.1:5070 &                     #   (instead of uas above)
#   run.sh options 127.0.0.1:5060 -m 1                     # sipvane answers OPTIONS itself
#   run.sh register 127.0.0.1:5060 -m 1                    # relayed to a backend
# sipvane-bench (bench/) generates the same calls faster: see docs/benchmarks.md.
#
# Anything after ADDR goes to sipp unchanged (e.g. -m, -r, -l, -d, -s, -timeout 30s,
# -trace_stat, -trace_msg). Client roles stop by themselves only with -m or -timeout.
#
# Environment: SIPP (sipp binary, default "sipp"), SIPP_LOCAL_IP (client source
# address, default the loopback of ADDR's family), SIPP_LOCAL_PORT (client source
# port, default chosen by sipp).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sipp="${SIPP:-sipp}"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 2 ] || usage
role="$1"; addr="$2"; shift 2

if ! command -v "$sipp" >/dev/null 2>&1; then
  echo "run.sh: sipp not found: run \`make deps\` (or apt-get install sip-tester)" >&2
  exit 127
fi

# Split ADDR into host and port; "[v6]:port" or "v4:port".
case "$addr" in
  \[*\]:*) host="${addr%]:*}"; host="${host#[}"; port="${addr##*]:}" ;;
  *:*)     host="${addr%:*}"; port="${addr##*:}" ;;
  *)       echo "run.sh: ADDR must be host:port, got '$addr'" >&2; exit 2 ;;
esac
case "$host" in *:*) loop="::1" ;; *) loop="127.0.0.1" ;; esac

common=(-ci "$loop")                # the control socket stays on loopback too
[ -t 0 ] || common+=(-nostdin)      # no keyboard when run from scripts/CI

case "$role" in
  uac|uac_cancel|options|register|register_auth)
    local_ip="${SIPP_LOCAL_IP:-$loop}"
    extra=(-i "$local_ip" -bind_local)
    [ -n "${SIPP_LOCAL_PORT:-}" ] && extra+=(-p "$SIPP_LOCAL_PORT")
    exec "$sipp" -sf "$here/$role.xml" "$addr" "${extra[@]}" "${common[@]}" "$@"
    ;;
  uas|uas_503|uas_486|uas_slow|uas_cancel)
    args=()
    while [ $# -gt 0 ]; do
      if [ "$role" = uas_slow ] && [ "$1" = -d ] && [ $# -ge 2 ]; then
        args+=(-recv_timeout "$2"); shift 2
      else
        args+=("$1"); shift
      fi
    done
    exec "$sipp" -sf "$here/$role.xml" -i "$host" -p "$port" -bind_local -aa \
      "${common[@]}" ${args[@]+"${args[@]}"}
    ;;
  -h|--help|help) usage ;;
  *) echo "run.sh: unknown role '$role'" >&2; usage ;;
esac
