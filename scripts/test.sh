#!/usr/bin/env bash
# Runs every test of the project: unit, property and integration tests of each crate, and the
# end-to-end tests against real peers (mosquitto, pymodbus, ffmpeg). Installs the peers first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-peers.sh
cargo nextest run --workspace --no-fail-fast "$@"
# The PostgreSQL series store's feature (decision 0026) is on in the workspace build: the hub's
# cluster mode enables it, so its conformance tests run above.
# nextest does not run doc tests.
cargo test --workspace --doc --quiet
