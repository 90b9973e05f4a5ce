//! `meshfilter mesh` as an operator runs it: a config file, a clustermesh directory, a
//! real local etcd and a real remote etcd; then `meshfilter status`, metrics, the leader
//! lock, draining, SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshfilter_local_etcd::EtcdServer;

use meshfilter_local_etcd::free_port;
use meshfilter_tests::etcdctl::{etcdctl, put_canaries};
use meshfilter_tests::meshfilter_binary;
use meshfilter_tests::process::{http_get, signal, wait_ready};

fn stop(mesh: &mut Child) {
    meshfilter_tests::process::stop(mesh, "mesh");
}

const GLOBAL: &str = r#"{"IP":"10.7.0.10","HostIP":"172.30.0.1","ID":459009,"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"web-0","SyncScope":"global"}"#;
const REGIONAL: &str = r#"{"IP":"10.7.0.11","HostIP":"172.30.0.1","ID":459009,"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"web-1","SyncScope":"regional"}"#;

/// A local etcd, one remote cluster with a global and a regional endpoint (its node in
/// us-east-1, the local cluster in eu-west-1), and its clustermesh directory.
struct Setup {
    local: EtcdServer,
    remote: EtcdServer,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let local = EtcdServer::start("local");
        let remote = EtcdServer::start("remote1");
        let r = remote.endpoint();
        let config =
            r#"{"id":7,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#;
        let node = r#"{"Name":"n1","Cluster":"remote1","IPAddresses":[{"Type":"InternalIP","IP":"172.30.0.1"}],"ClusterID":7,"Labels":{"topology.kubernetes.io/region":"us-east-1"}}"#;
        etcdctl(&r, &["put", "cilium/cluster-config/remote1", config]);
        etcdctl(&r, &["put", "cilium/state/nodes/v1/remote1/n1", node]);
        etcdctl(
            &r,
            &[
                "put",
                "cilium/state/identities/v1/id/459009",
                "k8s:app=web;k8s:io.kubernetes.pod.namespace=shop;",
            ],
        );
        etcdctl(&r, &["put", "cilium/state/ip/v1/default/10.7.0.10", GLOBAL]);
        etcdctl(
            &r,
            &["put", "cilium/state/ip/v1/default/10.7.0.11", REGIONAL],
        );
        put_canaries(&r, "remote1");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("clustermesh")).unwrap();
        std::fs::write(
            dir.path().join("clustermesh/remote1"),
            format!("endpoints:\n- {r}\n"),
        )
        .unwrap();
        Setup { local, remote, dir }
    }

    fn clusters(&self) -> PathBuf {
        self.dir.path().join("clustermesh")
    }

    /// A config file for a replica listening on `addr`.
    fn config(&self, addr: &str) -> PathBuf {
        self.config_with(addr, "")
    }

    /// [`Setup::config`] with `extra` YAML appended.
    fn config_with(&self, addr: &str, extra: &str) -> PathBuf {
        let config = self
            .dir
            .path()
            .join(format!("mesh-{}.yaml", addr.replace([':', '.'], "-")));
        let text = format!(
            "cluster: {{name: local, zone: eu-west-1a, region: eu-west-1}}\nlocalEtcd:\n  endpoints: [{}]\nclustersDir: {}\nlisten: {addr}\n{extra}",
            self.local.endpoint(),
            self.clusters().display()
        );
        std::fs::write(&config, text).unwrap();
        config
    }
}

fn spawn_mesh(config: &Path) -> Child {
    meshfilter_binary!().spawn(&[
        "mesh",
        "--config",
        config.to_str().unwrap(),
        "--drain-grace",
        "1s",
    ])
}

#[test]
fn mesh_mirrors_a_remote_and_reports_status() {
    let s = Setup::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut mesh = spawn_mesh(&s.config(&addr));
    wait_ready(&addr, "mesh did not sync");
    let l = s.local.endpoint();
    let cached = etcdctl(&l, &["get", "--prefix", "cilium/cache/ip/v1/remote1/"]);
    assert!(
        cached.contains("10.7.0.10") && !cached.contains("10.7.0.11"),
        "only the global entry: {cached}"
    );
    assert!(cached.contains(GLOBAL), "value copied verbatim: {cached}");
    assert!(
        !etcdctl(&l, &["get", "cilium/.heartbeat"]).is_empty(),
        "the heartbeat is written"
    );
    let table = meshfilter(&["status", "--addr", &addr]);
    assert!(
        table.contains("remote1") && table.contains("regional endpoint from region us-east-1"),
        "{table}"
    );
    let explain = meshfilter(&["explain", "remote1/10.7.0.11", "--addr", &addr]);
    assert!(explain.contains(r#""hook": "import""#), "{explain}");
    assert!(
        explain.contains("regional endpoint from region us-east-1"),
        "{explain}"
    );
    assert!(
        explain.contains(r#""syncScope": "regional""#) && explain.contains(r#""generation": 1"#),
        "{explain}"
    );
    // On-demand resolution installs the filtered-out regional entry, verbatim.
    let resolved = http_get(&format!("http://{addr}/resolve?ip=10.7.0.11"));
    assert!(resolved.contains(r#""cluster":"remote1""#), "{resolved}");
    let cached = etcdctl(&l, &["get", "cilium/cache/ip/v1/remote1/10.7.0.11"]);
    assert!(
        cached.contains(REGIONAL),
        "resolved entry in the cache: {cached}"
    );
    let miss = http_get(&format!("http://{addr}/resolve?ip=10.99.0.1"));
    assert!(miss.contains("not-found"), "{miss}");
    let again = http_get(&format!("http://{addr}/resolve?ip=10.99.0.1"));
    assert!(
        again.contains("negative-cached"),
        "no second lookup: {again}"
    );
    let metrics = http_get(&format!("http://{addr}/metrics"));
    assert!(
        metrics.contains("meshfilter_filter_generation 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            // The global one, and the regional one resolved on demand above.
            r#"meshfilter_reflector_target_entries{cluster="remote1",resource="endpoints"} 2"#
        ) && metrics.contains(
            r#"meshfilter_reflector_source_entries{cluster="remote1",resource="endpoints"} 2"#
        ) && metrics
            .contains(r#"meshfilter_reflector_synced{cluster="remote1",resource="nodes"} 1"#),
        "per-resource metrics: {metrics}"
    );

    // Removing the cluster file drains it: config first, then the cache after the grace.
    std::fs::remove_file(s.clusters().join("remote1")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !etcdctl(&l, &["get", "--prefix", "cilium/cache/ip/v1/remote1/"]).is_empty()
        || !etcdctl(&l, &["get", "cilium/cluster-config/remote1"]).is_empty()
    {
        assert!(Instant::now() < deadline, "remote1 was not drained");
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(&mut mesh);
}

#[test]
fn a_second_replica_waits_for_the_leader_lock() {
    let s = Setup::new();
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut first = spawn_mesh(&s.config(&a));
    wait_ready(&a, "the first replica never became ready");
    let mut second = spawn_mesh(&s.config(&b));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answer = String::new();
    while !answer.contains("standby") {
        assert!(
            Instant::now() < deadline,
            "the second replica should be on standby: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        answer = http_get(&format!("http://{b}/readyz"));
    }
    // The leader leaves and releases the lock: the standby takes over and mirrors what
    // changes from then on.
    stop(&mut first);
    wait_ready(&b, "the standby did not take over");
    let later = GLOBAL
        .replace("10.7.0.10", "10.7.0.12")
        .replace("web-0", "web-2");
    etcdctl(
        &s.remote.endpoint(),
        &["put", "cilium/state/ip/v1/default/10.7.0.12", &later],
    );
    let l = s.local.endpoint();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !etcdctl(&l, &["get", "--prefix", "cilium/cache/ip/v1/remote1/"]).contains(&later) {
        assert!(Instant::now() < deadline, "the new leader does not mirror");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(&mut second);
}

/// Runs the meshfilter CLI and returns its standard output.
fn meshfilter(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_meshfilter"))
        .args(args)
        .output()
        .expect("run meshfilter");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn shadow_mode_counts_but_mirrors_everything() {
    let s = Setup::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut mesh = spawn_mesh(&s.config_with(&addr, "filters:\n  shadow: [import]\n"));
    wait_ready(&addr, "mesh did not sync");
    let cached = etcdctl(
        &s.local.endpoint(),
        &["get", "--prefix", "cilium/cache/ip/v1/remote1/"],
    );
    assert!(
        cached.contains("10.7.0.10") && cached.contains("10.7.0.11"),
        "shadow mode removes nothing: {cached}"
    );
    let table = meshfilter(&["status", "--addr", &addr]);
    assert!(
        table.contains("SHADOW") && table.contains("regional endpoint from region us-east-1"),
        "{table}"
    );
    stop(&mut mesh);
}

#[test]
fn export_publishes_only_opted_in_endpoints() {
    let apiserver = EtcdServer::start("apiserver");
    let export = EtcdServer::start("export");
    let a = apiserver.endpoint();
    let config = r#"{"id":7,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#;
    etcdctl(&a, &["put", "cilium/cluster-config/prod-us-1", config]);
    etcdctl(
        &a,
        &[
            "put",
            "cilium/state/identities/v1/id/459009",
            "k8s:app=web;k8s:clustermesh.cilium.io/sync=true;k8s:io.kubernetes.pod.namespace=shop;",
        ],
    );
    etcdctl(
        &a,
        &[
            "put",
            "cilium/state/identities/v1/id/459010",
            "k8s:app=batch;k8s:io.kubernetes.pod.namespace=shop;",
        ],
    );
    etcdctl(&a, &["put", "cilium/state/ip/v1/default/10.7.0.10", GLOBAL]);
    let not_opted_in = GLOBAL
        .replace("10.7.0.10", "10.7.0.20")
        .replace("459009", "459010");
    etcdctl(
        &a,
        &["put", "cilium/state/ip/v1/default/10.7.0.20", &not_opted_in],
    );
    put_canaries(&a, "prod-us-1");

    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let file = dir.path().join("export.yaml");
    let text = format!(
        "cluster: {{name: prod-us-1, region: us-east-1}}\nsourceEtcd:\n  endpoints: [{a}]\nexportEtcd:\n  endpoints: [{}]\nlisten: {addr}\n",
        export.endpoint()
    );
    std::fs::write(&file, text).unwrap();
    let mut exporter = Command::new(env!("CARGO_BIN_EXE_meshfilter"))
        .args(["export", "--config", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start meshfilter export");
    wait_ready(&addr, "export did not sync");
    let exported = etcdctl(
        &export.endpoint(),
        &["get", "--prefix", "cilium/state/ip/v1/default/"],
    );
    assert!(
        exported.contains("10.7.0.10") && !exported.contains("10.7.0.20"),
        "{exported}"
    );
    assert!(
        !etcdctl(
            &export.endpoint(),
            &["get", "cilium/cluster-config/prod-us-1"]
        )
        .is_empty()
    );
    let status = http_get(&format!("http://{addr}/status"));
    assert!(status.contains("not opted in"), "{status}");
    stop(&mut exporter);
}

/// Keys under `prefix` with their values and leases, as etcdctl prints them in JSON.
fn keys_with_leases(endpoint: &str, prefix: &str) -> Vec<(String, String, i64)> {
    use base64::Engine as _;
    let out = etcdctl(endpoint, &["get", "--prefix", prefix, "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b64 = |s: &serde_json::Value| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(s.as_str().unwrap_or_default())
                .unwrap(),
        )
        .unwrap()
    };
    v["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    (
                        b64(&kv["key"]),
                        b64(&kv["value"]),
                        kv["lease"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The leases the replica at `addr` writes under, from its `/status`.
fn leader_leases(addr: &str) -> Vec<i64> {
    meshfilter_api::MeshClient::new(addr, Duration::from_secs(5))
        .status()
        .map(|s| s.writer.leases.iter().map(|l| l.id).collect())
        .unwrap_or_default()
}

/// Every cache key (canaries and the heartbeat aside, whose values are timestamps) with
/// its value.
fn cache_content(endpoint: &str) -> Vec<(String, String)> {
    keys_with_leases(endpoint, "cilium/")
        .into_iter()
        .filter(|(k, _, _)| !k.starts_with("cilium/kvstoremesh-lock"))
        .map(|(k, v, _)| {
            if k.starts_with("cilium/synced/") || k == "cilium/.heartbeat" {
                (k, String::new())
            } else {
                (k, v)
            }
        })
        .collect()
}

/// Waits until every cache key sits on one of the leases the replica at `addr` reports.
fn wait_all_keys_on(addr: &str, local: &str, what: &str) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let own = leader_leases(addr);
        let foreign: Vec<(String, i64)> = keys_with_leases(local, "cilium/")
            .into_iter()
            .filter(|(k, _, lease)| {
                !k.starts_with("cilium/kvstoremesh-lock") && !own.contains(lease)
            })
            .map(|(k, _, lease)| (k, lease))
            .collect();
        if foreign.is_empty() && !own.is_empty() {
            return own;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: keys on other leases: {foreign:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until none of `leases` exists in the etcd at `endpoint` any more.
fn wait_leases_gone(endpoint: &str, leases: &[i64], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let listed = etcdctl(endpoint, &["lease", "list", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
        let alive: Vec<i64> = v["leases"]
            .as_array()
            .map(|a| a.iter().filter_map(|l| l["id"].as_i64()).collect())
            .unwrap_or_default();
        if leases.iter().all(|l| !alive.contains(l)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "old leases {leases:?} still alive: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// kill -9 of the mesh, a restart, and then the first process's leases run out: the cache
/// must be exactly what it was, every key on a lease of the new process.
#[test]
fn after_kill_9_and_restart_nothing_vanishes_when_the_old_leases_expire() {
    let s = Setup::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = s.config_with(&addr, "sync: {leaseTtl: 5s, lockTtl: 2s}\n");
    let mut first = spawn_mesh(&config);
    wait_ready(&addr, "mesh did not sync");
    let l = s.local.endpoint();
    let old = wait_all_keys_on(&addr, &l, "first process");
    let before = cache_content(&l);
    assert!(
        before
            .iter()
            .any(|(k, _)| k.starts_with("cilium/cache/ip/v1/remote1/"))
    );

    signal(&first, "-KILL");
    let _ = first.wait();
    let mut second = spawn_mesh(&config);
    wait_ready(&addr, "the restarted mesh did not sync");
    let new = wait_all_keys_on(&addr, &l, "restarted process");
    assert!(
        old.iter().all(|l| !new.contains(l)),
        "new leases: {old:?} -> {new:?}"
    );
    // The dead process's leases run out (5 s TTL, nobody renews them).
    wait_leases_gone(&l, &old, Duration::from_secs(20));
    assert_eq!(cache_content(&l), before, "nothing lost, nothing stale");
    stop(&mut second);
}

/// The leader is paused (SIGSTOP) past its lock TTL: the standby takes the lock and the
/// cache over. When the old leader wakes up its writes are fenced: it steps down and the
/// cache stays with the new leader.
#[test]
fn a_paused_leader_is_fenced_when_it_wakes_up() {
    let s = Setup::new();
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let extra = "sync: {leaseTtl: 30s, lockTtl: 2s}\n";
    let mut first = spawn_mesh(&s.config_with(&a, extra));
    wait_ready(&a, "the first replica never became ready");
    let mut second = spawn_mesh(&s.config_with(&b, extra));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(&format!("http://{b}/readyz")).contains("standby") {
        assert!(
            Instant::now() < deadline,
            "the second replica never stood by"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let l = s.local.endpoint();
    let before = cache_content(&l);

    signal(&first, "-STOP");
    wait_ready(&b, "the standby did not take over from the paused leader");
    wait_all_keys_on(&b, &l, "new leader");
    // Meanwhile the remote changes: the new leader mirrors it.
    let later = GLOBAL
        .replace("10.7.0.10", "10.7.0.12")
        .replace("web-0", "web-2");
    etcdctl(
        &s.remote.endpoint(),
        &["put", "cilium/state/ip/v1/default/10.7.0.12", &later],
    );
    signal(&first, "-CONT");
    // The old leader's lock lease is gone: every write it tries is refused, it steps down.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(&format!("http://{a}/readyz")).contains("standby") {
        assert!(
            Instant::now() < deadline,
            "the woken leader did not step down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !etcdctl(&l, &["get", "--prefix", "cilium/cache/ip/v1/remote1/"]).contains(&later) {
        assert!(Instant::now() < deadline, "the new leader does not mirror");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_all_keys_on(&b, &l, "after the old leader woke up");
    let after = cache_content(&l);
    let added = "cilium/cache/ip/v1/remote1/10.7.0.12";
    let without_added: Vec<_> = after.iter().filter(|(k, _)| k != added).cloned().collect();
    assert_eq!(without_added, before, "the woken leader changed nothing");
    stop(&mut first);
    stop(&mut second);
}
