//! Builds the eBPF program with aya-build and leaves the object at
//! `$OUT_DIR/meshfilter-ebpf` for `include_bytes_aligned!`.
//!
//! The toolchain is pinned because bpf-linker must share rustc's LLVM major version; the
//! setup script installs this nightly and a bpf-linker built against its libLLVM.

/// The eBPF toolchain (rustc 1.101.0-nightly, LLVM 23). Change it together with the
/// bpf-linker recipe in `scripts/setup.sh`.
#[cfg(feature = "ebpf")]
const EBPF_TOOLCHAIN: &str = "nightly-2026-10-30";

fn main() {
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let object = out_dir.join("meshfilter-ebpf");
    #[cfg(feature = "ebpf")]
    {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ebpf/program");
        let package = aya_build::Package {
            name: "meshfilter-ebpf",
            root_dir: root,
            ..Default::default()
        };
        println!(
            "cargo:rerun-if-changed={}",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../ebpf/common")
        );
        if let Err(e) =
            aya_build::build_ebpf([package], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
        {
            panic!(
                "building the eBPF program failed: {e:#}\n\
                 run scripts/setup.sh (installs {EBPF_TOOLCHAIN} with rust-src and bpf-linker), \
                 or build without it: --no-default-features"
            );
        }
    }
    // Without the program (feature off, or AYA_BUILD_SKIP=1) embed an empty object: the
    // loader then reports that this build has no eBPF program.
    if !object.exists() {
        std::fs::write(&object, b"").expect("write placeholder object");
    }
    println!(
        "cargo:rustc-env=MESHFILTER_EBPF_OBJECT={}",
        object.display()
    );
}
