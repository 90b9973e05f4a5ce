//! Cargo runs of crates a test makes (with `meshfilter filter new`), outside this
//! workspace's build.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::process::output_text;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the workspace root")
}

/// Target directory for crates made by `meshfilter filter new`, kept between runs (under
/// the shared `CARGO_TARGET_DIR` when set) so the SDK's dependencies compile once.
pub fn filter_new_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("filter-new")
}

/// `cargo <args>` in `dir` into [`filter_new_target`], without the outer `cargo test`'s
/// settings (they are for this workspace); panics with the output on failure.
pub fn cargo_in(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(dir)
        .args(args)
        .arg("--target-dir")
        .arg(filter_new_target());
    meshfilter_filter_build::clear_outer_cargo_env(&mut cmd);
    let out = cmd.output().expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} failed:\n{}",
        output_text(&out)
    );
    out
}
