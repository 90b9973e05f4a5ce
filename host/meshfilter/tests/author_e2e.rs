//! A filter's whole life, as the author guide walks it, on real etcd and real modules:
//! `filter new`, an edit, native tests, `filter check` and `filter test` in the engine, a
//! snapshot of the running mesh and `filter diff` against the running filters, then the
//! rollout: shadow, canary, promotion to full, and an automatic rollback when the next
//! version starts failing.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use meshfilter_local_etcd::EtcdServer;

use meshfilter_tests::cargo::{cargo_in, filter_new_target, workspace};
use meshfilter_tests::etcdctl::{etcdctl, put_canaries};
use meshfilter_tests::process::{http_get, output_text, stop, wait_ready};
use meshfilter_tests::{free_port, meshfilter_binary};

/// Endpoints of the remote cluster, all on its node in us-east-1, all exported globally.
const ENDPOINTS: usize = 40;

/// The edit: a `panicInRegion` setting that makes the import hook panic for endpoints of
/// one region (a stand-in for a bug that ships).
fn edit(lib: &Path) {
    let mut src = std::fs::read_to_string(lib).unwrap();
    let mut replace = |from: &str, to: &str| {
        assert!(
            src.contains(from),
            "the template changed: {from:?} not found"
        );
        src = src.replacen(from, to, 1);
    };
    replace(
        "    #[serde(default)]\n    blocked_regions: Vec<Region>,\n}",
        "    #[serde(default)]\n    blocked_regions: Vec<Region>,\n    /// Panic on endpoints of this region.\n    #[serde(default)]\n    panic_in_region: Option<Region>,\n}",
    );
    replace(
        "    blocked_regions: Vec<Region>,\n}\n\nimpl Filter",
        "    blocked_regions: Vec<Region>,\n    panic_in_region: Option<Region>,\n}\n\nimpl Filter",
    );
    replace(
        "            blocked_regions: settings.blocked_regions,\n",
        "            blocked_regions: settings.blocked_regions,\n            panic_in_region: settings.panic_in_region,\n",
    );
    replace(
        "    fn import(&self, endpoint: &Endpoint) -> ImportDecision {\n",
        "    fn import(&self, endpoint: &Endpoint) -> ImportDecision {\n        if let Some(p) = &self.panic_in_region {\n            match endpoint.origin().region {\n                Some(region) if *p == *region => panic!(\"told to fail in {region}\"),\n                _ => {}\n            }\n        }\n",
    );
    std::fs::write(lib, src).unwrap();
}

/// Runs `meshfilter`, asserting success; returns its output.
fn run_ok(args: &[&str], cwd: &Path) -> String {
    let out = meshfilter_binary!().run_in(args, cwd);
    assert!(
        out.status.success(),
        "meshfilter {args:?}: {}",
        output_text(&out)
    );
    output_text(&out)
}

/// Replaces the files of `dir` with `files`, the manifest last, so a reload never sees
/// a manifest naming a module not yet written.
fn put_filters(dir: &Path, files: &[(&str, &[u8])], manifest: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    let tmp = dir.join(".filters.yaml.tmp");
    std::fs::write(&tmp, manifest).unwrap();
    std::fs::rename(&tmp, dir.join("filters.yaml")).unwrap();
}

fn cached(local: &str) -> usize {
    etcdctl(
        local,
        &[
            "get",
            "--prefix",
            "--keys-only",
            "cilium/cache/ip/v1/remote1/",
        ],
    )
    .lines()
    .filter(|l| !l.is_empty())
    .count()
}

fn status(addr: &str) -> serde_json::Value {
    serde_json::from_str(&http_get(&format!("http://{addr}/status"))).unwrap_or_default()
}

fn wait_for(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    assert!(
        meshfilter_tests::wait_for(timeout, done),
        "timed out waiting for {what}"
    );
}

struct Mesh {
    child: Child,
    addr: String,
    config: PathBuf,
}

impl Mesh {
    fn start(dir: &Path, local: &str, clusters: &Path, filters: &Path, extra: &str) -> Mesh {
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.join(format!("mesh-{}.yaml", addr.replace([':', '.'], "-")));
        std::fs::write(
            &config,
            format!(
                "cluster: {{name: local, zone: eu-west-1a, region: eu-west-1}}\nlocalEtcd:\n  endpoints: [{local}]\nclustersDir: {}\nlisten: {addr}\nfilters:\n  directory: {}\n{extra}",
                clusters.display(),
                filters.display()
            ),
        )
        .unwrap();
        let child = meshfilter_binary!().spawn(&["mesh", "--config", config.to_str().unwrap()]);
        wait_ready(&addr, "mesh did not sync");
        Mesh {
            child,
            addr,
            config,
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        stop(&mut self.child, "mesh");
    }
}

#[test]
fn a_filter_goes_from_filter_new_through_canary_to_production_and_rolls_back_by_itself() {
    let tmp = tempfile::tempdir().unwrap();

    // 1. Create, edit, test natively, build, check and test in the engine.
    let krate = tmp.path().join("region-guard");
    run_ok(
        &[
            "filter",
            "new",
            "region-guard",
            "--dir",
            krate.to_str().unwrap(),
        ],
        &workspace().join("host"),
    );
    edit(&krate.join("src/lib.rs"));
    std::fs::copy(workspace().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    let native = output_text(&cargo_in(&krate, &["test", "--release", "--offline"]));
    assert!(native.contains("test result: ok."), "{native}");
    cargo_in(
        &krate,
        &[
            "build",
            "--release",
            "--offline",
            "--target",
            "wasm32-wasip2",
        ],
    );
    let module: PathBuf = filter_new_target().join("wasm32-wasip2/release/region_guard.wasm");
    let m = module.to_str().unwrap();
    run_ok(
        &[
            "filter",
            "check",
            m,
            "--config",
            r#"{"blockedRegions": ["us-east-1"]}"#,
        ],
        &krate,
    );
    let config = format!("@{}", krate.join("config.json").display());
    let cases = krate.join("cases.yaml");
    run_ok(
        &[
            "filter",
            "test",
            m,
            "--config",
            &config,
            "--endpoints",
            cases.to_str().unwrap(),
        ],
        &krate,
    );
    let guard = std::fs::read(&module).unwrap();

    // 2. A remote cluster in us-east-1 on real etcd; this cluster in eu-west-1.
    let local = EtcdServer::start("local");
    let remote = EtcdServer::start("remote1");
    let r = remote.endpoint();
    etcdctl(
        &r,
        &[
            "put",
            "cilium/cluster-config/remote1",
            r#"{"id":7,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#,
        ],
    );
    etcdctl(
        &r,
        &[
            "put",
            "cilium/state/nodes/v1/remote1/n1",
            r#"{"Name":"n1","Cluster":"remote1","IPAddresses":[{"Type":"InternalIP","IP":"172.30.0.1"}],"ClusterID":7,"Labels":{"topology.kubernetes.io/region":"us-east-1"}}"#,
        ],
    );
    etcdctl(
        &r,
        &[
            "put",
            "cilium/state/identities/v1/id/459009",
            "k8s:app=web;k8s:io.kubernetes.pod.namespace=shop;",
        ],
    );
    for i in 0..ENDPOINTS {
        let ip = format!("10.7.0.{}", i + 10);
        etcdctl(
            &r,
            &[
                "put",
                &format!("cilium/state/ip/v1/default/{ip}"),
                &format!(
                    r#"{{"IP":"{ip}","HostIP":"172.30.0.1","ID":459009,"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"web-{i}","SyncScope":"global"}}"#
                ),
            ],
        );
    }
    put_canaries(&r, "remote1");
    let clusters = tmp.path().join("clustermesh");
    std::fs::create_dir(&clusters).unwrap();
    std::fs::write(clusters.join("remote1"), format!("endpoints:\n- {r}\n")).unwrap();

    // The filters running now (cfp-scope) and the new ones (region-guard first).
    let shipped = tmp.path().join("cfp-scope.wasm");
    run_ok(
        &[
            "filter",
            "get",
            "cfp-scope",
            "-o",
            shipped.to_str().unwrap(),
        ],
        tmp.path(),
    );
    let cfp = std::fs::read(&shipped).unwrap();
    let stable_manifest = "import:\n  chain:\n    - module: cfp-scope.wasm\n";
    let new_manifest = "import:\n  chain:\n    - module: region-guard.wasm\n      config: {blockedRegions: [us-east-1]}\n    - module: cfp-scope.wasm\n";
    let failing_manifest = "import:\n  chain:\n    - module: region-guard.wasm\n      config: {panicInRegion: us-east-1}\n    - module: cfp-scope.wasm\n";
    let stable = tmp.path().join("stable");
    put_filters(&stable, &[("cfp-scope.wasm", &cfp)], stable_manifest);
    let new = tmp.path().join("new");
    put_filters(
        &new,
        &[("cfp-scope.wasm", &cfp), ("region-guard.wasm", &guard)],
        new_manifest,
    );
    let live = tmp.path().join("live");
    put_filters(&live, &[("cfp-scope.wasm", &cfp)], stable_manifest);

    // 3. A mesh on the running filters; a snapshot of what they see; the diff.
    let l = local.endpoint();
    {
        let mesh = Mesh::start(tmp.path(), &l, &clusters, &live, "");
        assert_eq!(
            cached(&l),
            ENDPOINTS,
            "cfp-scope keeps every global endpoint"
        );
        let config = &mesh.config;
        let snap = tmp.path().join("snapshot.json");
        run_ok(
            &[
                "snapshot",
                "--mesh-config",
                config.to_str().unwrap(),
                "-o",
                snap.to_str().unwrap(),
            ],
            tmp.path(),
        );
        let report: serde_json::Value = serde_json::from_str(&run_ok(
            &[
                "filter",
                "diff",
                stable.to_str().unwrap(),
                new.to_str().unwrap(),
                "--snapshot",
                snap.to_str().unwrap(),
                "--json",
            ],
            tmp.path(),
        ))
        .unwrap();
        let consumer = report["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cluster"] == "local")
            .expect("this cluster is a consumer in the snapshot")
            .clone();
        assert_eq!(consumer["entriesBefore"], ENDPOINTS);
        assert_eq!(consumer["entriesAfter"], 0);
        assert_eq!(report["hooks"]["import"]["stopped"], ENDPOINTS);
        assert!(
            report["changes"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("us-east-1"),
            "{report}"
        );
        // The same diff as a CI gate.
        let gate = meshfilter_binary!().run_in(
            &[
                "filter",
                "diff",
                stable.to_str().unwrap(),
                new.to_str().unwrap(),
                "--snapshot",
                snap.to_str().unwrap(),
                "--max-removed",
                "10",
            ],
            tmp.path(),
        );
        assert_eq!(gate.status.code(), Some(1), "{}", output_text(&gate));
        assert!(output_text(&gate).contains("GATE FAILED"));
    }

    // 4. Shadow: the new filters decide and are counted; nothing is removed.
    put_filters(
        &live,
        &[("cfp-scope.wasm", &cfp), ("region-guard.wasm", &guard)],
        new_manifest,
    );
    {
        let mesh = Mesh::start(tmp.path(), &l, &clusters, &live, "  shadow: [import]\n");
        assert_eq!(cached(&l), ENDPOINTS, "shadow mode removes nothing");
        let s = status(&mesh.addr);
        let would_skip: u64 = s["remotes"][0]["endpoints"]["skipped"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(would_skip as usize, ENDPOINTS, "{s}");
    }

    // 5. Canary, then full: back to the running filters, then the new ones as a canary.
    put_filters(&live, &[("cfp-scope.wasm", &cfp)], stable_manifest);
    let rollout = "  rollout: {canaryPercent: 50, promoteAfter: 12s, maxChanged: 1000, minDecisions: 5, maxFailureRatio: 0.1}\n";
    let mesh = Mesh::start(tmp.path(), &l, &clusters, &live, rollout);
    wait_for("all entries back", Duration::from_secs(30), || {
        cached(&l) == ENDPOINTS
    });
    put_filters(
        &live,
        &[("cfp-scope.wasm", &cfp), ("region-guard.wasm", &guard)],
        new_manifest,
    );
    wait_for(
        "the canary to decide its share",
        Duration::from_secs(10),
        || {
            let n = cached(&l);
            !status(&mesh.addr)["filters"]["rollout"]["candidate"].is_null()
                && n > 0
                && n < ENDPOINTS
        },
    );
    let s = status(&mesh.addr);
    assert_eq!(s["filters"]["rollout"]["candidate"]["canaryPercent"], 50.0);
    wait_for("promotion", Duration::from_secs(30), || {
        status(&mesh.addr)["filters"]["rollout"]["promotions"] == 1 && cached(&l) == 0
    });

    // 6. The next version fails in production: rolled back by itself.
    put_filters(
        &live,
        &[("cfp-scope.wasm", &cfp), ("region-guard.wasm", &guard)],
        failing_manifest,
    );
    wait_for("the rollback", Duration::from_secs(20), || {
        status(&mesh.addr)["filters"]["rollout"]["lastRollback"]["cause"] == "failures"
    });
    let s = status(&mesh.addr);
    assert!(s["filters"]["rollout"]["candidate"].is_null(), "{s}");
    let metrics = http_get(&format!("http://{}/metrics", mesh.addr));
    assert!(
        metrics.contains("meshfilter_filter_rollbacks_total{cause=\"failures\"} 1"),
        "{metrics}"
    );
    assert_eq!(cached(&l), 0, "the stable generation still decides");
    drop(mesh);
}
