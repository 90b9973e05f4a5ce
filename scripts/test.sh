#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test (unit, integration,
# end-to-end against real etcd and real Wasm modules), then lints.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --release
