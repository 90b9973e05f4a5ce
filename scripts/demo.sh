#!/usr/bin/env bash
# The main job: installs what is missing, builds meshfilter and runs its demo (the default
# cfp-scope filter deciding, for four clusters in three regions, what each exports and
# imports, and why). Extra arguments go to `meshfilter demo`.
#
# The demo loads no eBPF program, so it builds meshfilter without the classifier
# (`--no-default-features` drops the `ebpf` feature) and needs neither the pinned nightly
# nor bpf-linker. `cargo run` finds the binary wherever CARGO_TARGET_DIR puts it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --no-ebpf
exec cargo run --release -p meshfilter --no-default-features -- demo "$@"
