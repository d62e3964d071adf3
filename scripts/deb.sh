#!/usr/bin/env bash
# Builds the Debian package: target/debian/sipvane_<version>_<arch>.deb.
#
#   scripts/deb.sh                      release build, then the package
#   scripts/deb.sh --profile ci --no-build
#                                       package the binaries `cargo test --profile ci`
#                                       already built (target/debian/ci/...; `make test`)
#
# A plain `dpkg-deb --build` around files kept in packaging/debian rather than
# cargo-deb: dpkg-deb ships with dpkg on every Debian system, while cargo-deb
# would be compiled from source (minutes on a small machine) on every fresh
# one, and the parts that matter here (maintainer scripts with the systemd
# snippets, the unit, conffiles) would be written by hand either way.
#
# The default /etc/sipvane/sipvane.toml is sipvane.example.toml with the
# example-only values undone and the package's own defaults applied (loopback
# SIP and API, the dispatcher.list, the snapshot in /var/lib/sipvane); each
# edit is checked, so a change to the example that breaks it stops the build.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=${2:?--profile needs a name}; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

for tool in dpkg-deb dpkg-shlibdeps objcopy; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "deb.sh: $tool not found: run make deps (or apt-get install dpkg-dev)" >&2; exit 1; }
done

version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "deb.sh: no [workspace.package] version in Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)
bins=(sipvane sipvane-bench)

if [ "$build" -eq 1 ]; then
  nice "${CARGO:-cargo}" build --profile "$profile" -p control -p bench --bins
fi
bindir=target/$profile
for b in "${bins[@]}"; do
  [ -x "$bindir/$b" ] || { echo "deb.sh: $bindir/$b not built" >&2; exit 1; }
done

out=target/debian
[ "$profile" = release ] || out=target/debian/$profile
name=sipvane_${version}_${arch}
root=$out/stage/$name
rm -rf "$root"
mkdir -p "$out"
install -d -m 0755 "$root"/DEBIAN "$root"/usr/bin "$root"/etc/sipvane \
  "$root"/lib/systemd/system "$root"/usr/share/doc/sipvane

# Binaries without DWARF (the symbol table stays, for backtraces).
for b in "${bins[@]}"; do
  objcopy --strip-debug "$bindir/$b" "$root/usr/bin/$b"
  chmod 0755 "$root/usr/bin/$b"
done

install -m 0644 packaging/debian/sipvane.service "$root"/lib/systemd/system/sipvane.service
install -m 0644 packaging/debian/dispatcher.list "$root"/etc/sipvane/dispatcher.list
install -m 0644 packaging/debian/copyright "$root"/usr/share/doc/sipvane/copyright
install -m 0644 README.md docs/deployment.md docs/configuration.md sipvane.example.toml \
  "$root"/usr/share/doc/sipvane/

# /etc/sipvane/sipvane.toml from the example.
conf=$root/etc/sipvane/sipvane.toml
{
  cat <<'EOF'
# /etc/sipvane/sipvane.toml — the configuration of the sipvane service.
#
# Every key is optional and shown with its default, except those marked "PACKAGE":
# this package listens on loopback until you set [proxy] listen (and advertise) to
# the public address, reads /etc/sipvane/dispatcher.list, and keeps the database
# snapshot in /var/lib/sipvane. Unknown keys are errors.
#
# Check:   sipvane check-config /etc/sipvane/sipvane.toml
# Apply:   systemctl restart sipvane   (destinations only: systemctl reload sipvane)
# Every key explained: /usr/share/doc/sipvane/sipvane.example.toml, configuration.md
EOF
  # Drop the example's header (up to the first section) and its routing rules
  # (from their "CHANGED" comment to the next section); undo the example engine.
  awk '
    /^\[proxy\]$/ { body = 1 }
    !body { next }
    /^# CHANGED \(default: none\)$/ { skip = 1; next }
    skip && /^\[rtpengine\]$/ { skip = 0; print ""; print "" }
    skip { next }
    /^# CHANGED/ { next }
    { print }
  ' sipvane.example.toml \
  | sed -e 's|^listen = "0\.0\.0\.0:5060"$|# PACKAGE (default: "0.0.0.0:5060")\nlisten = "127.0.0.1:5060"|' \
        -e 's|^list = "/etc/sipvane/dispatcher\.list"$|# PACKAGE (default: unset)\n&|' \
        -e 's|^snapshot_path = ""$|# PACKAGE (default: "")\nsnapshot_path = "/var/lib/sipvane/dispatcher.snapshot"|' \
        -e 's|^engines = \["udp:127\.0\.0\.1:22222"\]$|engines = []|'
} > "$conf"
chmod 0644 "$conf"
for want in '^listen = "127.0.0.1:5060"$' '^list = "/etc/sipvane/dispatcher.list"$' \
            '^snapshot_path = "/var/lib/sipvane/dispatcher.snapshot"$' '^engines = \[\]$' \
            '^listen = "127.0.0.1:9060"$' '^token = ""$'; do
  grep -q "$want" "$conf" || { echo "deb.sh: $conf lacks $want (sipvane.example.toml changed?)" >&2; exit 1; }
done
for unwanted in 'CHANGED' 'dispatcher.rules' '22222' '^listen = "0.0.0.0'; do
  if grep -q "$unwanted" "$conf"; then
    echo "deb.sh: $conf still has $unwanted (sipvane.example.toml changed?)" >&2; exit 1
  fi
done

# Maintainer scripts and metadata.
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root"/DEBIAN/
printf '/etc/sipvane/sipvane.toml\n/etc/sipvane/dispatcher.list\n' > "$root"/DEBIAN/conffiles

# Shared-library dependencies, as dh_shlibdeps computes them.
shl=$(mktemp -d)
trap 'rm -rf "$shl"' EXIT
mkdir -p "$shl"/debian
printf 'Source: sipvane\n\nPackage: sipvane\nArchitecture: any\n' > "$shl"/debian/control
abs=$(cd "$root" && pwd)
shlibs=$(cd "$shl" && dpkg-shlibdeps -O "${bins[@]/#/-e$abs/usr/bin/}" 2>/dev/null \
  | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "deb.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root"/DEBIAN/control <<EOF
Package: sipvane
Version: $version
Architecture: $arch
Maintainer: sipvane developers <sipvane@localhost>
Installed-Size: $size
Depends: $shlibs, adduser
Recommends: systemd
Section: net
Priority: optional
Description: SIP load balancer and stateful proxy
 sipvane spreads SIP calls over pools of Asterisk/FreeSWITCH servers the way
 Kamailio's dispatcher and tm modules do: Kamailio dispatcher.list files and
 database tables, OPTIONS probing, failover, RTPEngine media anchoring, call
 events to Redis, a management HTTP API and Prometheus metrics, on
 thread-per-core io_uring workers.
 .
 This package runs it as the systemd service sipvane.service (Type=notify,
 watchdog, hardened) under the sipvane system user; sipvane-bench is its load
 generator.
EOF

deb=$out/$name.deb
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
rm -rf "$out"/stage
echo "$deb"
