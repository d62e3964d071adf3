#!/usr/bin/env bash
# Fuzzes the SIP parser (target `parse_message`) for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]        default 60
#
# Installs cargo-fuzz if it is missing. Exits non-zero when libFuzzer finds a
# crash, a panic or a per-input timeout (an unbounded loop); the input that
# triggered it is left in fuzz/artifacts/parse_message/. See docs/fuzzing.md.
set -euo pipefail

secs="${1:-60}"
sanitizer="${FUZZ_SANITIZER:-address}"   # or "none" for ~3x more executions
cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes nightly-only flags (-Zsanitizer, sancov passes); this
# lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1

corpus=fuzz/corpus/parse_message
mkdir -p "$corpus"
# The RFC 4475 torture messages seed the run; new inputs go to $corpus only.
exec cargo fuzz run -O --sanitizer "$sanitizer" parse_message "$corpus" dataplane/tests/torture -- \
  -max_total_time="$secs" -max_len=8192 -timeout=10 -print_final_stats=1
