//! The `meshfilter filter` commands, run as a user runs them.

use std::process::Command;

fn meshfilter(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshfilter"))
        .args(args)
        .output()
        .expect("run meshfilter");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
        stdout.contains("interface  meshfilter:filter@0.1.0"),
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
