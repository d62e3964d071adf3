#!/usr/bin/env bash
# Fuzzes the SIP parser (target `parse_message`), the RTPEngine ng reply
# decoder (target `ng_reply`), the TCP stream framer (`stream_framer`) and the
# proxy core fed sequences of datagrams and time advances (`proxy_core`), each
# for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]        default 60 per target
#
# Installs cargo-fuzz if it is missing. Exits non-zero when libFuzzer finds a
# crash, a panic or a per-input timeout (an unbounded loop); the input that
# triggered it is left in fuzz/artifacts/<target>/. See docs/fuzzing.md.
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

run_target() { # TARGET SEEDS...
  local target=$1; shift
  local corpus=fuzz/corpus/$target
  mkdir -p "$corpus"
  echo "fuzz.sh: $target for ${secs}s" >&2
  cargo fuzz run -O --sanitizer "$sanitizer" "$target" "$corpus" "$@" -- \
    -max_total_time="$secs" -max_len=8192 -timeout=10 -print_final_stats=1
}

# The RFC 4475 torture messages seed the SIP parser; new inputs go to the corpus only.
run_target parse_message dataplane/tests/torture
# RTPEngine ng replies (cookie + bencode dict) come from the network too.
seeds=fuzz/seeds/ng_reply
run_target ng_reply "$seeds"
# TCP byte streams: framing by Content-Length with keep-alives, whole vs chunked.
run_target stream_framer fuzz/seeds/stream_framer
# The proxy core: programs of requests, responses, ng replies, replays and
# time steps (fuzz/fuzz_targets/proxy_core.rs); no seeds, the corpus grows.
run_target proxy_core
