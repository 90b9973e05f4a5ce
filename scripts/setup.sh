#!/usr/bin/env bash
# Installs what building and testing meshfilter needs, when it is missing. Idempotent:
# a second run does nothing but check. Needs root (or sudo) for apt.
set -euo pipefail

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; exit 1; fi
}

# --- Debian packages -------------------------------------------------------------------
# etcd-server/etcd-client: the tests and the demo start real etcd servers.
# protobuf-compiler: etcd-client compiles etcd's .proto files at build time.
# bpftool, iproute2: eBPF tests read maps with bpftool and build namespaces with ip.
need_pkgs=()
command -v etcd >/dev/null || need_pkgs+=(etcd-server)
command -v etcdctl >/dev/null || need_pkgs+=(etcd-client)
command -v protoc >/dev/null || need_pkgs+=(protobuf-compiler)
command -v bpftool >/dev/null || need_pkgs+=(bpftool)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v openssl >/dev/null || need_pkgs+=(openssl)   # the mTLS tests make certificates
# On a fresh machine this amounts to:
#   apt-get install -y etcd-server etcd-client protobuf-compiler bpftool iproute2 openssl
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# --- Rust ---------------------------------------------------------------------------------
if ! command -v cargo >/dev/null; then
  log "cargo not found: install Rust (rustup) first"; exit 1
fi
# Filter modules are WebAssembly components.
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  log "adding the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi
log "ready: $(etcd --version | head -1), $(protoc --version), $(rustc --version)"
