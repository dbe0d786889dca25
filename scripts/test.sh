#!/usr/bin/env bash
# Runs every test of the project: unit, property and integration tests of each crate, and the
# end-to-end tests against real peers (mosquitto, pymodbus, ffmpeg). Installs the peers first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-peers.sh
cargo nextest run --workspace --no-fail-fast "$@"
# The PostgreSQL series store is behind a feature the workspace build leaves off (decision 0026).
cargo nextest run -p series-store --features postgres --test pg_conformance --no-fail-fast "$@"
# nextest does not run doc tests.
cargo test --workspace --doc --quiet
