#!/usr/bin/env bash
set -euo pipefail
./target/release/siphon --version || ./target/release/siphon
