#!/usr/bin/env bash
# `make bench`, the comparison part: the same ladder of offered loads through
# sipvane, sipvane with HEP capture of every message, sipvane writing accounting
# rows to PostgreSQL (Kamailio's acc tables), and Kamailio, in one run
# (sipvane-bench compare; table on stdout, JSON and SVG in target/bench/).
# The PostgreSQL is a private one on loopback (scripts/services.sh), stopped
# when this script ends.
#
# Then, on each proxy started afresh, BENCH_HOLD_CALLS (20000) calls held up at once:
# memory per active call.
#
# Then the same ladder with the callers over TCP (SIPp, one connection, as a
# trunk) through sipvane and Kamailio, backends on UDP: BENCH_TCP_RATES.
#
# Environment: BENCH_RATES (e.g. 500,1000,2000), BENCH_STEP_MS, BENCH_HOLD_CALLS, BIN_DIR (where
# sipvane and sipvane-bench are; default target/release), BENCH_PROXIES.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bin="${BIN_DIR:-target/release}"
rates="${BENCH_RATES:-500,1000,2000,5000,10000,20000}"
step="${BENCH_STEP_MS:-3000}"
proxies="${BENCH_PROXIES:-sipvane,sipvane-hep,sipvane-acc,kamailio}"
pgdir="$repo/.tmp/bench/postgres"
mkdir -p target/bench

trap 'bash scripts/services.sh stop postgres "$pgdir" >/dev/null 2>&1 || true' EXIT
url=$(bash scripts/services.sh start postgres "$pgdir" | sed -n 's/^SIPVANE_TEST_PG_URL=//p')
[ -n "$url" ] || { echo "bench.sh: PostgreSQL did not start" >&2; exit 1; }
schema=/usr/share/kamailio/postgres
for f in standard-create.sql acc-create.sql; do
  [ -f "$schema/$f" ] || { echo "bench.sh: $schema/$f missing: run \`make deps\`" >&2; exit 1; }
done
psql "$url" -q -v ON_ERROR_STOP=1 -c "DROP TABLE IF EXISTS version, acc, missed_calls, acc_cdrs, sipvane_acc_spool" \
  -f "$schema/standard-create.sql" -f "$schema/acc-create.sql" >/dev/null

"$bin/sipvane-bench" compare --sipvane "$bin/sipvane" --rates "$rates" --step-ms "$step" \
  --proxies "$proxies" --acc-db-url "$url" \
  --hold-calls "${BENCH_HOLD_CALLS:-20000}" --hold-rate "${BENCH_HOLD_RATE:-2000}" \
  --json target/bench/compare.json --svg target/bench/compare.svg
rows=$(psql "$url" -tA -c "SELECT COUNT(*) FROM acc")
echo "bench.sh: the sipvane-acc run wrote $rows acc rows"
case ",$proxies," in *,sipvane-acc,*) [ "$rows" -gt 0 ] || { echo "bench.sh: no acc row written" >&2; exit 1; } ;; esac

case ",$proxies," in
  *,kamailio,*) tcp_proxies=sipvane,kamailio ;;
  *) tcp_proxies=sipvane ;;
esac
"$bin/sipvane-bench" compare --sipvane "$bin/sipvane" --generator sipp --transport tcp \
  --rates "${BENCH_TCP_RATES:-500,1000}" --step-ms "$step" --proxies "$tcp_proxies" \
  --json target/bench/compare-tcp.json
