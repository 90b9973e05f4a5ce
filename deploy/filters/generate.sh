#!/usr/bin/env bash
# Writes the filter modules shipped in meshfilter into deploy/filters/modules/ (what the
# meshfilter-filters ConfigMap carries) and pins each one by sha256 in the roles' configs
# (deploy/{mesh,export,node}/*.yaml, `filters.pins`), so a role refuses a module that is not
# the one built here. Then `kubectl apply -k deploy/filters` (or render it with
# `kubectl kustomize deploy/filters`).
#
# Uses $MESHFILTER when set (a meshfilter binary), else builds one with cargo (without the
# eBPF program, which writing modules does not need).
set -euo pipefail
deploy="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${MESHFILTER:-}" ]; then
  meshfilter=("$MESHFILTER")
else
  meshfilter=(cargo run --release --quiet --manifest-path "$deploy/../Cargo.toml" -p meshfilter --no-default-features --)
fi
pins=$("${meshfilter[@]}" filter get --all "$deploy/filters/modules")
while read -r sha file; do
  # Lines `<indent><file>: <64 hex digits>` under `filters.pins`.
  sed -i -E "s/^([[:space:]]+${file//./\\.}: )[0-9a-f]{64}\$/\\1${sha}/" \
    "$deploy/mesh/mesh.yaml" "$deploy/export/export.yaml" "$deploy/node/node.yaml"
done <<<"$pins"
printf '%s\n' "$pins"
