#!/usr/bin/env bash
# Runs every fuzz target for a while (default 30 s each). Needs cargo-fuzz; the stable toolchain
# is told to accept the sanitizer flags with RUSTC_BOOTSTRAP, as this machine has no nightly.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-30}; shift || true
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
for t in "${targets[@]}"; do
  echo "== $t ($secs s)"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=4096 2>&1 | grep -E "^(#[0-9]+.*DONE|Done|==|SUMMARY|thread)" || true
done
