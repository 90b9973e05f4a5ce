//! `meshfilter filter new`: the crate it writes builds to a module that passes
//! `filter check` and `filter test`, and its native tests pass, untouched.

use meshfilter_tests::cargo::{cargo_in as cargo, filter_new_target, workspace};
use meshfilter_tests::meshfilter_binary;
use meshfilter_tests::process::output_text as text;

fn meshfilter(args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    meshfilter_binary!().run_in(args, cwd)
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
    let module = filter_new_target().join("wasm32-wasip2/release/team_web.wasm");
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
