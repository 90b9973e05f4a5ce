#!/usr/bin/env bash
# The main job: installs what is missing, builds meshfilter and runs its demo (the default
# cfp-scope filter deciding, for four clusters in three regions, what each exports and
# imports, and why). Extra arguments go to `meshfilter demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p meshfilter
exec ./target/release/meshfilter demo "$@"
