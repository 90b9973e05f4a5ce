#!/usr/bin/env bash
# Helm post-renderer: applies the meshfilter mesh Component to Cilium's rendered chart.
#   helm upgrade cilium cilium/cilium -n kube-system --reuse-values \
#     --set clustermesh.apiserver.kvstoremesh.enabled=true \
#     --post-renderer deploy/mesh/post-render.sh
# Helm passes the rendered manifests on stdin and applies what this prints.
set -euo pipefail
component="$(cd "$(dirname "$0")" && pwd)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/cilium.yaml"
cp -r "$component" "$work/mesh"
cp -r "$component/../filters" "$work/filters"
cat >"$work/kustomization.yaml" <<KUSTOMIZATION
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [cilium.yaml, filters]
components: [mesh]
KUSTOMIZATION
kubectl kustomize "$work"
