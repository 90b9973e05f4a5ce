//! The `meshfilter filter` commands, run as a user runs them.

use std::process::Command;

use meshfilter_tests::meshfilter_binary;

fn meshfilter(args: &[&str]) -> (bool, String, String) {
    meshfilter_binary!().run_split(args)
}

fn cases() -> String {
    format!(
        "{}/../../filters/cfp-scope/cases.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn filter_check_validates_a_shipped_module() {
    let (ok, stdout, stderr) = meshfilter(&["filter", "check", "builtin:cfp-scope"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("filter     cfp-scope"), "{stdout}");
    assert!(
        stdout.contains("interface  meshfilter:filter@0.2.0"),
        "{stdout}"
    );
}

#[test]
fn filter_check_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.wasm");
    std::fs::write(&bad, b"\0asm garbage").unwrap();
    let (ok, stdout, _) = meshfilter(&["filter", "check", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stdout.contains("broken.wasm") && stdout.contains("FAIL"),
        "{stdout}"
    );
    let (ok, stdout, _) = meshfilter(&[
        "filter",
        "check",
        "builtin:cfp-scope",
        "--config",
        "{default: sometimes}",
    ]);
    assert!(!ok);
    assert!(
        stdout.contains("rejected its config") && stdout.contains("default"),
        "{stdout}"
    );
}

#[test]
fn filter_test_prints_and_checks_the_table() {
    let (ok, stdout, stderr) = meshfilter(&[
        "filter",
        "test",
        "builtin:cfp-scope",
        "--endpoints",
        &cases(),
    ]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("9 passed, 0 failed"), "{stdout}");
    assert!(
        stdout.contains("regional endpoint from region us-east-1"),
        "reasons are printed: {stdout}"
    );
}

#[test]
fn filter_test_fails_on_an_unmet_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.yaml");
    std::fs::write(
        &file,
        "cases:\n  - hook: export\n    endpoint: {namespace: a, podName: b, ip: 10.0.0.1}\n    expect: sync\n",
    )
    .unwrap();
    let (ok, stdout, _) = meshfilter(&[
        "filter",
        "test",
        "builtin:cfp-scope",
        "--endpoints",
        file.to_str().unwrap(),
    ]);
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
}

/// A module built for the tests (`misbehave`) or shipped, as a file.
fn test_module(name: &str) -> String {
    format!("{}/{name}.wasm", env!("MESHFILTER_TEST_MODULES"))
}

/// Whether a line of `stdout` holds every one of `parts`.
fn has_row(stdout: &str, parts: &[&str]) -> bool {
    stdout.lines().any(|l| parts.iter().all(|p| l.contains(p)))
}

/// Writes `cases` into `dir/cases.yaml` and returns its path.
fn cases_file(dir: &std::path::Path, cases: &str) -> String {
    let file = dir.join("cases.yaml");
    std::fs::write(&file, cases).unwrap();
    file.to_str().unwrap().to_string()
}

#[test]
fn filter_test_fails_a_panicking_module_with_its_panic_message() {
    let dir = tempfile::tempdir().unwrap();
    // Without the fix, the trap became keep-last-decision, then `otherwise: open`, which
    // is exactly the `sync:global` expected here: a passing run.
    let cases = cases_file(
        dir.path(),
        "cases:\n  - name: panics\n    hook: export\n    endpoint: {namespace: a, podName: b, ip: 10.0.0.1, labels: {boom: x}}\n    expect: sync:global\n\
         \x20 - name: behaves\n    hook: export\n    endpoint: {namespace: a, podName: c, ip: 10.0.0.2}\n    expect: sync:global\n",
    );
    let (ok, stdout, stderr) = meshfilter(&[
        "filter",
        "test",
        &test_module("misbehave"),
        "--config",
        "{onExport: 'trap-if-label:boom'}",
        "--endpoints",
        &cases,
    ]);
    assert!(!ok, "a panicking module fails the run: {stdout}{stderr}");
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
    let failed = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("failed:"))
        .unwrap_or_else(|| panic!("no failure line: {stdout}"));
    assert!(
        failed.contains("misbehave.wasm trapped")
            && failed.contains("misbehave: trap as configured")
            && failed.contains("panicked at"),
        "the failure carries the panic message: {failed}"
    );
    assert!(has_row(&stdout, &["panics", "FAILED"]), "{stdout}");

    // The same in JSON, and a deadline is a failure too.
    let (ok, stdout, _) = meshfilter(&[
        "filter",
        "test",
        &test_module("misbehave"),
        "--config",
        "{onExport: 'loop-if-label:boom'}",
        "--endpoints",
        &cases,
        "--json",
    ]);
    assert!(!ok, "{stdout}");
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["decision"], "FAILED", "{first}");
    assert_eq!(first["ok"], false);
    assert!(
        first["failure"].as_str().unwrap().contains("deadline"),
        "{first}"
    );
}

#[test]
fn filter_test_shows_an_abstaining_module_as_abstain() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases_file(
        dir.path(),
        "cases:\n  - hook: export\n    endpoint: {namespace: a, podName: b, ip: 10.0.0.1}\n    expect: abstain\n\
         \x20 - hook: import\n    endpoint: {namespace: a, podName: b, ip: 10.0.0.1}\n    expect: keep\n",
    );
    let (ok, stdout, _) = meshfilter(&[
        "filter",
        "test",
        &test_module("misbehave"),
        "--config",
        "{onExport: abstain}",
        "--endpoints",
        &cases,
    ]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");
    assert!(has_row(&stdout, &["export", "abstain"]), "{stdout}");
}

#[test]
fn filter_test_rejects_unknown_keys_and_expectations() {
    let dir = tempfile::tempdir().unwrap();
    for (cases, want) in [
        (
            "cases:\n  - hook: export\n    endpoint: {namespace: a, podName: b, ip: c, annotation: {x: y}}\n",
            "unknown field `annotation`",
        ),
        (
            "cases:\n  - hook: export\n    endpoint: {namespace: a, podName: b, ip: c}\n    expect: synced\n",
            "invalid expect \"synced\"",
        ),
        (
            "cases:\n  - name: web\n    hook: import\n    endpoint: {namespace: a, podName: b, ip: c}\n    expect: sync\n",
            "case 0 (\"web\"): expect \"sync\" is not a decision of the import hook",
        ),
    ] {
        let file = cases_file(dir.path(), cases);
        let (ok, stdout, stderr) =
            meshfilter(&["filter", "test", "builtin:cfp-scope", "--endpoints", &file]);
        assert!(!ok, "{stdout}");
        assert!(stderr.contains(want), "want {want:?} in: {stderr}");
    }
}

#[test]
fn filter_test_runs_a_manifest_chain() {
    let dir = tempfile::tempdir().unwrap();
    let filters = dir.path().join("filters");
    std::fs::create_dir(&filters).unwrap();
    for module in ["misbehave", "cfp-scope"] {
        std::fs::copy(test_module(module), filters.join(format!("{module}.wasm"))).unwrap();
    }
    std::fs::write(
        filters.join("filters.yaml"),
        "export:\n  otherwise: closed\n  chain:\n    - module: misbehave.wasm\n      config: {onExport: abstain}\n    - module: cfp-scope.wasm\n\
         import:\n  otherwise: open\n  chain:\n    - module: misbehave.wasm\n      config: {onImport: abstain}\n",
    )
    .unwrap();
    let cases = cases_file(
        dir.path(),
        "local: {cluster: c1, region: eu-west-1}\ncases:\n\
         \x20 - name: opted in\n    hook: export\n    endpoint: {namespace: a, podName: b, ip: 10.0.0.1, labels: {clustermesh.cilium.io/sync: 'true'}}\n    expect: sync:global\n\
         \x20 - name: every filter abstains\n    hook: import\n    endpoint: {namespace: a, podName: b, ip: 10.0.0.1}\n    expect: keep\n",
    );
    let manifest = filters.to_str().unwrap();
    let run = |cases: &str| {
        meshfilter(&[
            "filter",
            "test",
            "--manifest",
            manifest,
            "--endpoints",
            cases,
        ])
    };
    let (ok, stdout, stderr) = run(&cases);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");
    assert!(
        has_row(&stdout, &["opted in", "[cfp-scope.wasm#1"]),
        "the row names the module that decided: {stdout}"
    );
    assert!(
        has_row(&stdout, &["every filter abstains", "[otherwise:open]"]),
        "{stdout}"
    );
    // `abstain` cannot be expected of a chain.
    let cases = cases_file(
        dir.path(),
        "cases:\n  - hook: import\n    endpoint: {namespace: a, podName: b, ip: 10.0.0.1}\n    expect: abstain\n",
    );
    let (ok, _, stderr) = run(&cases);
    assert!(!ok);
    assert!(stderr.contains("run as a chain"), "{stderr}");
}

fn node_config(dir: &std::path::Path, body: &str) -> String {
    let path = dir.join("node.yaml");
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_string()
}

const NODE_CONFIG: &str = "cluster: {name: cluster-a}\ninterfaces:\n- {interface: lo, direction: ingress}\nmeshApi: http://127.0.0.1:9\n";

#[test]
fn node_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "cluster: {name: cluster-a}\ninterfaces: []\nmeshApi: http://x\n",
            "interfaces:",
        ),
        (
            "cluster: {name: Cluster_A}\ninterfaces: [{interface: lo, direction: ingress}]\nmeshApi: http://x\n",
            "cluster.name",
        ),
        (
            "cluster: {name: a}\ninterfaces: [{interface: lo, direction: ingress}]\n",
            "localEtcd, meshApi",
        ),
        (
            "cluster: {name: a}\ninterfaces: [{interface: lo, direction: sideways}]\nmeshApi: http://x\n",
            "sideways",
        ),
        (
            "cluster: {name: a}\ninterfaces: [{interface: lo, direction: ingress}]\nmeshApi: http://x\nmode: cilium\n",
            "localEtcd: cilium mode",
        ),
        (
            "cluster: {name: a}\ninterfaces: [{interface: lo, direction: ingress}]\nmeshApi: ftp://x\n",
            "meshApi",
        ),
    ];
    for (body, expected) in cases {
        let (ok, _, err) = meshfilter(&["node", "--config", &node_config(dir.path(), body)]);
        assert!(!ok && err.contains(expected), "{expected}: {err}");
    }
}

/// Without CAP_BPF/CAP_NET_ADMIN (dropped from the bounding set, so even root lacks them
/// after exec) the agent refuses to start and says what it needs.
#[test]
fn node_without_capabilities_says_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let config = node_config(dir.path(), NODE_CONFIG);
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-bpf,-net_admin,-sys_admin", "--"])
        .arg(env!("CARGO_BIN_EXE_meshfilter"))
        .args(["node", "--config", &config])
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("missing capabilities CAP_BPF, CAP_NET_ADMIN"),
        "{err}"
    );
}
