//! Helpers shared by the binary's end-to-end tests: etcdctl, ports, HTTP, stopping.
// Each test binary uses a different subset.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the shared helpers"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// The body of a GET, whatever the status; empty when nothing answers.
pub fn http_get(url: &str) -> String {
    match ureq::get(url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => r.into_string().unwrap_or_default(),
        Err(ureq::Error::Status(_, r)) => r.into_string().unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// SIGTERM, then waits for a clean exit.
pub fn stop(child: &mut Child, what: &str) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            assert!(code.success(), "{what}: exit status {code}");
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts this crate's `meshfilter` binary with `args`, its output discarded.
pub fn spawn_meshfilter(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_meshfilter"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start meshfilter")
}

/// Waits until the role serving `addr` answers `/readyz` with `ready`; panics with `what`
/// after 30 s.
pub fn wait_ready(addr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&format!("http://{addr}/readyz")) != "ready" {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Target directory for crates made by `meshfilter filter new`, kept between runs (under
/// the shared `CARGO_TARGET_DIR` when set) so the SDK's dependencies compile once.
pub fn filter_new_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("filter-new")
}

/// Runs this crate's `meshfilter` binary in `cwd` and collects its output.
pub fn meshfilter_in(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshfilter"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run meshfilter")
}

/// Stdout and stderr of a finished process, as one text.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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
