//! Builds filter crates to WebAssembly components from a build script.
//!
//! The host embeds the default filter and the tests load every shipped filter, so both
//! need `.wasm` files built from this workspace's sources. As eBPF build helpers do,
//! this runs a nested `cargo build --target wasm32-wasip2` into its own target directory
//! (so it never waits on the outer build's lock) and copies the components to `OUT_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target filter modules are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// Builds `packages` (crate names) in release mode and returns the directory holding
/// `<package>.wasm` for each. Call from `build.rs` only: it reads `OUT_DIR` and prints
/// `cargo:rerun-if-changed` lines.
pub fn build_filters(packages: &[&str]) -> Result<PathBuf, String> {
    let out_dir =
        PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set: call from build.rs")?);
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?,
    );
    let workspace = find_workspace(&manifest_dir)?;
    for dir in [
        "guest-sdk",
        "filters",
        "tests/filters",
        "ebpf/common",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = workspace.join("target").join("filters");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    // The outer build's settings are for the host target; none of them apply here.
    clear_outer_cargo_env(&mut cmd);
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("may not be installed")
            || stderr.contains("can't find crate for `core`")
        {
            format!(
                "\nhint: the {TARGET} target is missing; run scripts/setup.sh or `rustup target add {TARGET}`"
            )
        } else {
            String::new()
        };
        return Err(format!("building filter modules failed:\n{stderr}{hint}"));
    }
    let dest = out_dir.join("filters");
    std::fs::create_dir_all(&dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    for p in packages {
        let built = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", p.replace('-', "_")));
        let to = dest.join(format!("{p}.wasm"));
        std::fs::copy(&built, &to)
            .map_err(|e| format!("copying {} to {}: {e}", built.display(), to.display()))?;
    }
    Ok(dest)
}

/// Removes from `cmd` the settings an outer cargo (a build script's, or `cargo test`'s)
/// passes down for its own build, so a nested cargo builds as if started by hand.
pub fn clear_outer_cargo_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key == "RUSTFLAGS"
            || key.starts_with("RUSTC_")
        {
            cmd.env_remove(&*key);
        }
    }
}

fn find_workspace(start: &Path) -> Result<PathBuf, String> {
    let mut dir = Some(start);
    while let Some(d) = dir {
        let manifest = d.join("Cargo.toml");
        if std::fs::read_to_string(&manifest).is_ok_and(|t| t.contains("[workspace]")) {
            return Ok(d.to_path_buf());
        }
        dir = d.parent();
    }
    Err(format!("no workspace Cargo.toml above {}", start.display()))
}
