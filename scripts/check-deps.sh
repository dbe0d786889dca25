#!/usr/bin/env bash
# Dependencies the project decided against (docs/decisions/0001, 0002) must not creep back in.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(grep -E '^name = "(bincode|sled)"$' Cargo.lock || true)
if [ -n "$bad" ]; then
  echo "check-deps: refused dependencies in Cargo.lock:"; echo "$bad"; exit 1
fi
echo "check-deps: ok"
