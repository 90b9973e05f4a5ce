//! `meshfilter filter new`: the crate it writes builds to a module that passes
//! `filter check` and `filter test`, and its native tests pass, untouched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn meshfilter(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshfilter"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run meshfilter")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `cargo <args>` in `dir`, into a target directory kept between runs (under the shared
/// `CARGO_TARGET_DIR` when set) so the SDK's dependencies are compiled once. The outer
/// `cargo test`'s settings are for this workspace and are removed.
fn cargo(dir: &Path, args: &[&str]) -> Output {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("filter-new");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(dir)
        .args(args)
        .arg("--target-dir")
        .arg(&target);
    meshfilter_filter_build::clear_outer_cargo_env(&mut cmd);
    let out = cmd.output().expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} failed:\n{}",
        text(&out)
    );
    out
}

#[test]
fn a_new_filter_builds_checks_and_passes_its_tests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("team-web");
    // Run from inside the repository: the SDK is found by walking up.
    let out = meshfilter(
        &["filter", "new", "team-web", "--dir", dir.to_str().unwrap()],
        &workspace().join("host"),
    );
    assert!(out.status.success(), "{}", text(&out));
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "config.json",
        "cases.yaml",
        "README.md",
    ] {
        assert!(dir.join(file).is_file(), "{file} written");
    }
    // Pin the dependency versions the workspace builds with, so the build needs no
    // registry access.
    std::fs::copy(workspace().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    cargo(
        &dir,
        &[
            "build",
            "--release",
            "--offline",
            "--target",
            "wasm32-wasip2",
        ],
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("filter-new");
    let module = target.join("wasm32-wasip2/release/team_web.wasm");
    let module = module.to_str().unwrap();
    let config = format!("@{}", dir.join("config.json").display());

    let out = meshfilter(&["filter", "check", module], &dir);
    assert!(out.status.success(), "check without config: {}", text(&out));
    let out = meshfilter(&["filter", "check", module, "--config", &config], &dir);
    assert!(out.status.success(), "check: {}", text(&out));
    assert!(text(&out).contains("filter     team-web"), "{}", text(&out));

    let cases = dir.join("cases.yaml");
    let out = meshfilter(
        &[
            "filter",
            "test",
            module,
            "--config",
            &config,
            "--endpoints",
            cases.to_str().unwrap(),
        ],
        &dir,
    );
    assert!(out.status.success(), "filter test: {}", text(&out));
    assert!(text(&out).contains("6 passed, 0 failed"), "{}", text(&out));

    let out = cargo(&dir, &["test", "--release", "--offline"]);
    let report = text(&out);
    assert!(
        report.contains("test result: ok. 4 passed"),
        "native tests: {report}"
    );
}

#[test]
fn without_an_sdk_in_sight_new_asks_for_sdk() {
    let tmp = tempfile::tempdir().unwrap();
    let out = meshfilter(&["filter", "new", "lonely"], tmp.path());
    assert!(!out.status.success());
    assert!(
        text(&out).contains("give its path with --sdk PATH"),
        "{}",
        text(&out)
    );
    assert!(!tmp.path().join("lonely").exists(), "nothing written");

    let out = meshfilter(
        &[
            "filter",
            "new",
            "lonely",
            "--sdk",
            tmp.path().to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no meshfilter-guest-sdk crate there"),
        "{}",
        text(&out)
    );

    let sdk = workspace().join("guest-sdk");
    let out = meshfilter(
        &["filter", "new", "lonely", "--sdk", sdk.to_str().unwrap()],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let manifest = std::fs::read_to_string(tmp.path().join("lonely/Cargo.toml")).unwrap();
    assert!(
        manifest.contains("meshfilter-guest-sdk = { path = \""),
        "{manifest}"
    );

    let out = meshfilter(&["filter", "new", "lonely"], tmp.path());
    assert!(
        !out.status.success(),
        "an existing crate is not overwritten"
    );
    assert!(text(&out).contains("is not empty"), "{}", text(&out));
}
