//! `meshfilter mesh` as an operator runs it: a config file, a clustermesh directory, a
//! real local etcd and a real remote etcd; then `meshfilter status`, metrics, SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshfilter_local_etcd::EtcdServer;

fn etcdctl(endpoint: &str, args: &[&str]) -> String {
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn mesh_mirrors_a_remote_and_reports_status() {
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
    let global = r#"{"IP":"10.7.0.10","HostIP":"172.30.0.1","ID":459009,"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"web-0","SyncScope":"global"}"#;
    let regional = r#"{"IP":"10.7.0.11","HostIP":"172.30.0.1","ID":459009,"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"web-1","SyncScope":"regional"}"#;
    etcdctl(&r, &["put", "cilium/state/ip/v1/default/10.7.0.10", global]);
    etcdctl(
        &r,
        &["put", "cilium/state/ip/v1/default/10.7.0.11", regional],
    );

    let dir = tempfile::tempdir().unwrap();
    let clusters = dir.path().join("clustermesh");
    std::fs::create_dir(&clusters).unwrap();
    std::fs::write(clusters.join("remote1"), format!("endpoints:\n- {r}\n")).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("mesh.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster: {{name: local, zone: eu-west-1a, region: eu-west-1}}\nlocalEtcd:\n  endpoints: [{}]\nclustersDir: {}\nlisten: {addr}\n",
            local.endpoint(),
            clusters.display()
        ),
    )
    .unwrap();

    let mut mesh = Command::new(env!("CARGO_BIN_EXE_meshfilter"))
        .args([
            "mesh",
            "--config",
            config.to_str().unwrap(),
            "--drain-grace",
            "1s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start meshfilter mesh");
    let status = |json: bool| {
        let mut args = vec!["status", "--addr", &addr];
        if json {
            args.push("--json");
        }
        Command::new(env!("CARGO_BIN_EXE_meshfilter"))
            .args(&args)
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(out) = status(true) {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if v["remotes"][0]["synced"] == true {
                break;
            }
        }
        assert!(Instant::now() < deadline, "mesh did not sync");
        std::thread::sleep(Duration::from_millis(100));
    }
    let l = local.endpoint();
    let cached = etcdctl(&l, &["get", "--prefix", "cilium/cache/ip/v1/remote1/"]);
    assert!(
        cached.contains("10.7.0.10") && !cached.contains("10.7.0.11"),
        "only the global entry: {cached}"
    );
    assert!(cached.contains(global), "value copied verbatim: {cached}");
    let table = String::from_utf8(status(false).unwrap().stdout).unwrap();
    assert!(
        table.contains("remote1") && table.contains("regional endpoint from region us-east-1"),
        "{table}"
    );
    let metrics = http_get(&format!("http://{addr}/metrics"));
    assert!(
        metrics.contains("meshfilter_filter_generation 1"),
        "{metrics}"
    );
    assert_eq!(http_get(&format!("http://{addr}/readyz")), "ready");

    // Removing the cluster file drains it: config first, then the cache after the grace.
    std::fs::remove_file(clusters.join("remote1")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !etcdctl(&l, &["get", "--prefix", "cilium/cache/ip/v1/remote1/"]).is_empty()
        || !etcdctl(&l, &["get", "cilium/cluster-config/remote1"]).is_empty()
    {
        assert!(Instant::now() < deadline, "remote1 was not drained");
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGTERM: a clean exit.
    Command::new("kill")
        .args(["-TERM", &mesh.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(code) = mesh.try_wait().unwrap() {
            assert!(code.success(), "exit status {code}");
            break;
        }
        assert!(Instant::now() < deadline, "mesh did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http_get(url: &str) -> String {
    // A tiny HTTP/1.0 GET, enough for a local test.
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
