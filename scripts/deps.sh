#!/usr/bin/env bash
# Installs the system packages sipvane's tests, demo, benchmarks and Debian
# package (make deb: dpkg-dev; its test: systemd-analyze, strace, setpriv) use.
# make chaos reads the management API with curl and jq; make soak sinks HEP with socat.
# Idempotent: does nothing when everything is present. Services that Debian
# would start on install (redis, postgres, mariadb, rtpengine, haproxy) are kept from
# starting on their default ports: the test harness starts private copies on
# loopback and stops them when it ends.
set -euo pipefail
# kamailio-{postgres,mysql}-modules ship Kamailio's schema files
# (/usr/share/kamailio/{postgres,mysql}/*-create.sql) the accounting tests load.
# kamailio-tls-modules: Kamailio as a TLS destination (control/tests/transport_tls_out.rs).
# openssl (the CLI) and python3: certificates and the independent TLS peers of the TLS tests.
# sngrep (HEP/EEP listener) and tshark (SIP dissector) are the second HEP decoder
# of control/tests/hep_sngrep.rs.

want=(sip-tester dnsmasq-base redis-server redis-tools postgresql postgresql-client mariadb-server \
      mariadb-client rtpengine-daemon kamailio kamailio-extra-modules \
      kamailio-postgres-modules kamailio-mysql-modules kamailio-tls-modules clang pkg-config \
      libssl-dev openssl python3 procps iproute2 valgrind jq curl socat \
      dpkg-dev adduser systemd init-system-helpers strace util-linux haproxy sngrep tshark)
case "${1:-}" in
  --minimal) want=(sip-tester procps) ;;
  --deb) want=(dpkg-dev) ;;
esac

if ! command -v cargo >/dev/null 2>&1; then
  echo "deps.sh: warning: cargo not found; install a Rust toolchain (rustup), Debian's is too old" >&2
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "deps.sh: missing packages: ${missing[*]}; run as root or install them" >&2
  exit 1
fi

echo "deps.sh: installing ${missing[*]}" >&2
# Keep maintainer scripts from starting daemons on public/default ports.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1
fi
trap '[ $made_policy -eq 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
# Wait for a dpkg lock held by another apt run instead of failing at once.
apt=(apt-get -y -q -o DPkg::Lock::Timeout=300)
# A fresh machine may have no (or stale) package lists: update only if needed.
if ! "${apt[@]}" install --no-install-recommends "${missing[@]}" >/tmp/sipvane-apt.log 2>&1; then
  "${apt[@]}" update >/tmp/sipvane-apt-update.log 2>&1 || { tail -20 /tmp/sipvane-apt-update.log >&2; exit 1; }
  "${apt[@]}" install --no-install-recommends "${missing[@]}" >/tmp/sipvane-apt.log 2>&1 \
    || { tail -20 /tmp/sipvane-apt.log >&2; exit 1; }
fi
echo "deps.sh: installed ${missing[*]}" >&2
