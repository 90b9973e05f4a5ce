#!/usr/bin/env bash
# Installs what building and testing meshfilter needs, when it is missing. Idempotent:
# a second run does nothing but check. Needs root (or sudo) for apt.
# `--no-ebpf` skips the eBPF toolchain (pinned nightly and bpf-linker): what the demo uses,
# as it builds meshfilter without the classifier.
set -euo pipefail
with_ebpf=1
[ "${1:-}" = "--no-ebpf" ] && with_ebpf=0

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

# kubectl (with its built-in kustomize): the deploy tests render deploy/ with it. Not a
# Debian package; the release binary from the Kubernetes download site.
if [ "$with_ebpf" -eq 1 ] && ! command -v kubectl >/dev/null; then
  KUBECTL_VERSION=v1.32.4
  arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
  log "installing kubectl $KUBECTL_VERSION"
  command -v curl >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }
  tmp=$(mktemp)
  curl -fsSL -o "$tmp" "https://dl.k8s.io/release/$KUBECTL_VERSION/bin/linux/$arch/kubectl"
  as_root install -m 0755 "$tmp" /usr/local/bin/kubectl
  rm -f "$tmp"
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

# --- eBPF toolchain -----------------------------------------------------------------------
# The classifier in ebpf/program is Rust built for bpfel-unknown-none by aya-build (from
# host/node's build script). That needs a nightly with rust-src (build-std=core) and
# bpf-linker built against the same LLVM major version as that nightly's rustc. A plain
# `cargo install bpf-linker` links against whatever llvm-config is on PATH and fails, so
# point LLVM_PREFIX at the nightly's own libLLVM. Keep EBPF_TOOLCHAIN in step with
# host/node/build.rs.
EBPF_TOOLCHAIN=nightly-2026-10-30
if [ "$with_ebpf" -eq 0 ]; then
  log "ready: $(etcd --version | head -1), $(protoc --version), $(rustc --version) (eBPF toolchain not needed)"
  exit 0
fi
if ! rustup run "$EBPF_TOOLCHAIN" rustc --print sysroot >/dev/null 2>&1 ||
   [ ! -d "$(rustup run "$EBPF_TOOLCHAIN" rustc --print sysroot)/lib/rustlib/src/rust/library" ]; then
  log "installing $EBPF_TOOLCHAIN with rust-src (the eBPF program's toolchain)"
  rustup toolchain install "$EBPF_TOOLCHAIN" --profile minimal --component rust-src
fi
if ! bpf-linker --version >/dev/null 2>&1; then
  sysroot=$(rustup run "$EBPF_TOOLCHAIN" rustc --print sysroot)
  llvm_so=$(ls "$sysroot"/lib/libLLVM.so.* | head -1)
  llvm_major=$(rustup run "$EBPF_TOOLCHAIN" rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
  llvm_dir="${XDG_DATA_HOME:-$HOME/.local/share}/bpf-linker-llvm"
  mkdir -p "$llvm_dir/lib"
  ln -sf "$llvm_so" "$llvm_dir/lib/libLLVM.so"                 # -lLLVM at link time
  ln -sf "$llvm_so" "$llvm_dir/lib/$(basename "$llvm_so")"     # SONAME, found via RUNPATH
  log "building bpf-linker 0.13.0 against $(basename "$llvm_so") (about a minute)"
  LLVM_PREFIX="$llvm_dir" cargo install bpf-linker --version =0.13.0 --locked \
    --no-default-features --features "llvm-$llvm_major"
fi
log "ready: $(etcd --version | head -1), $(protoc --version), $(rustc --version), $(bpf-linker --version)"
