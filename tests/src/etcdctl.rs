//! etcd as operators see it: `etcdctl`, and the sync canaries clustermesh-apiserver
//! writes.

use std::process::Command;

/// Runs etcdctl (v3 API) against `endpoint`; panics with its stderr on failure.
pub fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes the sync canaries clustermesh-apiserver writes once `cluster`'s initial lists
/// are in its etcd (endpoints, identities, nodes, legacy services): meshfilter lists a
/// remote only once they exist.
pub fn put_canaries(endpoint: &str, cluster: &str) {
    for resource in ["ip", "identities", "nodes", "services"] {
        etcdctl(
            endpoint,
            &[
                "put",
                &format!("cilium/synced/{cluster}/cilium/state/{resource}/v1"),
                "2026-11-30T00:00:00Z",
            ],
        );
    }
}
