//! Migrating from kvstoremesh to `meshfilter mesh` on the same etcd, with no gap in what
//! the agents read: keys written the way kvstoremesh writes them (values verbatim, on its
//! session lease, canaries and the cached cluster config included) are taken over by
//! meshfilter mesh onto its own lease without one DELETE on `cilium/cache/`, and survive
//! the old lease being revoked.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, LockOptions, WatchOptions};
use meshfilter_local_etcd::EtcdServer;

use meshfilter_local_etcd::free_port;
use meshfilter_tests::etcdctl::{etcdctl, put_canaries};
use meshfilter_tests::meshfilter_binary;
use meshfilter_tests::process::{http_get, stop};

const CLUSTER_CONFIG: &str =
    r#"{"id":7,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#;
const NODE: &str = r#"{"Name":"n1","Cluster":"remote1","IPAddresses":[{"Type":"InternalIP","IP":"172.30.0.1"}],"IPv4AllocCIDR":{"IP":"10.7.0.0","Mask":"////AA=="},"ClusterID":7,"Labels":{"topology.kubernetes.io/region":"eu-west-1"}}"#;
const IDENTITY: &str = "k8s:app=web;k8s:io.kubernetes.pod.namespace=shop;";
const SERVICE: &str = r#"{"cluster":"remote1","namespace":"shop","name":"web","frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.7.0.10":{"http":{"Protocol":"TCP","Port":8080}}},"labels":{},"selector":{"app":"web"},"includeExternal":true,"shared":true,"clusterID":7}"#;

fn endpoint(ip: &str, pod: &str) -> String {
    format!(
        r#"{{"IP":"{ip}","Mask":null,"HostIP":"172.30.0.1","ID":459009,"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"{pod}","K8sServiceAccount":"default"}}"#
    )
}

/// The remote cluster's etcd as clustermesh-apiserver fills it, and the keys kvstoremesh
/// writes for it into the local cache (cache key -> value).
fn remote_and_kvstoremesh_keys(remote: &str) -> BTreeMap<String, String> {
    let mut cache = BTreeMap::new();
    etcdctl(
        remote,
        &["put", "cilium/cluster-config/remote1", CLUSTER_CONFIG],
    );
    etcdctl(remote, &["put", "cilium/state/nodes/v1/remote1/n1", NODE]);
    cache.insert(
        "cilium/cache/nodes/v1/remote1/n1".to_string(),
        NODE.to_string(),
    );
    etcdctl(
        remote,
        &["put", "cilium/state/identities/v1/id/459009", IDENTITY],
    );
    cache.insert(
        "cilium/cache/identities/v1/remote1/id/459009".to_string(),
        IDENTITY.to_string(),
    );
    for (i, ip) in ["10.7.0.10", "10.7.0.11", "10.7.0.12"].iter().enumerate() {
        let value = endpoint(ip, &format!("web-{i}"));
        etcdctl(
            remote,
            &["put", &format!("cilium/state/ip/v1/default/{ip}"), &value],
        );
        cache.insert(format!("cilium/cache/ip/v1/remote1/{ip}"), value);
    }
    etcdctl(
        remote,
        &["put", "cilium/state/services/v1/remote1/shop/web", SERVICE],
    );
    cache.insert(
        "cilium/cache/services/v1/remote1/shop/web".to_string(),
        SERVICE.to_string(),
    );
    put_canaries(remote, "remote1");
    cache
}

/// Keys outside `cilium/cache/` kvstoremesh also keeps on its lease: the cached cluster
/// config (rewritten with `cached: true`) and its own sync canaries.
fn kvstoremesh_control_keys() -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    keys.insert(
        "cilium/cluster-config/remote1".to_string(),
        r#"{"id":7,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":255}}"#
            .to_string(),
    );
    for resource in ["ip", "identities", "nodes", "services"] {
        keys.insert(
            format!("cilium/synced/remote1/cilium/cache/{resource}/v1"),
            "2026-11-30T00:00:00Z".to_string(),
        );
    }
    keys
}

/// Values are copied verbatim; a sync canary is a timestamp each writer sets anew.
fn same_value(key: &str, now: &str, before: &str) -> bool {
    key.starts_with("cilium/synced/") || now == before
}

/// Every key under `prefix` with its value and lease.
async fn leased(client: &mut Client, prefix: &str) -> BTreeMap<String, (String, i64)> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value_str().unwrap().to_string(), kv.lease()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvstoremesh_keys_are_taken_over_without_a_delete() {
    let local = EtcdServer::start("local");
    let remote = EtcdServer::start("remote1");
    let (l, r) = (local.endpoint(), remote.endpoint());
    let cache = remote_and_kvstoremesh_keys(&r);
    let control = kvstoremesh_control_keys();

    // kvstoremesh: a session lease under every key it writes, and the leader lock.
    let mut client = Client::connect([l.as_str()], None).await.unwrap();
    let session = client.lease_grant(900, None).await.unwrap().id();
    let lock_lease = client.lease_grant(600, None).await.unwrap().id();
    client
        .lock(
            "cilium/kvstoremesh-lock",
            Some(LockOptions::new().with_lease(lock_lease)),
        )
        .await
        .unwrap();
    for (key, value) in cache.iter().chain(&control) {
        client
            .put(
                key.as_str(),
                value.as_str(),
                Some(etcd_client::PutOptions::new().with_lease(session)),
            )
            .await
            .unwrap();
    }

    // What the agents watch, from here on.
    let mut watch_client = client.clone();
    let mut stream = watch_client
        .watch("cilium/cache/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let collected = events.clone();
    tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            for e in resp.events() {
                let key = e.kv().map(|kv| kv.key_str().unwrap().to_string());
                collected.lock().unwrap().push((e.event_type(), key));
            }
        }
    });

    // meshfilter mesh, configured as in deploy/mesh (shadow import first), waits for the
    // lock while kvstoremesh holds it.
    let dir = tempfile::tempdir().unwrap();
    let clusters = dir.path().join("clustermesh");
    std::fs::create_dir(&clusters).unwrap();
    std::fs::write(clusters.join("remote1"), format!("endpoints:\n- {r}\n")).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("mesh.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster: {{name: local, region: eu-west-1}}\nlocalEtcd: {{endpoints: [{l}]}}\n\
             clustersDir: {}\nfilters: {{shadow: [import]}}\nlisten: {addr}\nsync: {{lockTtl: 3s}}\n",
            clusters.display()
        ),
    )
    .unwrap();
    let mut mesh = meshfilter_binary!().spawn(&["mesh", "--config", config.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_get(&format!("http://{addr}/status")).contains("\"leader\":false") {
        assert!(Instant::now() < deadline, "mesh never reported standby");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // kvstoremesh stops: its lock goes with its lease (the data lease lives on, as it
    // does until its TTL runs out when the old container is gone).
    client.lease_revoke(lock_lease).await.unwrap();

    // Every key moves onto meshfilter's lease, same value.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = leased(&mut client, "cilium/").await;
        let moved = cache.iter().chain(&control).all(|(k, v)| {
            now.get(k).is_some_and(|(value, lease)| {
                same_value(k, value, v) && *lease != session && *lease != 0
            })
        });
        if moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keys still on kvstoremesh's lease or changed: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        http_get(&format!("http://{addr}/readyz")) == "ready",
        "the mesh is synced once it owns the keys"
    );

    // The old lease ends: nothing disappears.
    client.lease_revoke(session).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = leased(&mut client, "cilium/").await;
    for (key, value) in cache.iter().chain(&control) {
        let (v, lease) = now
            .get(key)
            .unwrap_or_else(|| panic!("{key} gone: {now:#?}"));
        assert!(same_value(key, v, value), "{key} changed: {v}");
        assert_ne!(*lease, session, "{key}");
    }

    stop(&mut mesh, "mesh");
    // The watch has seen the takeover's writes (one revision after the other, so once the
    // last rewrite is there every earlier event is too).
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.lock().unwrap().len() < cache.len() {
        assert!(Instant::now() < deadline, "the watch saw no takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = events.lock().unwrap().clone();
    let deletes: Vec<_> = seen
        .iter()
        .filter(|(t, _)| *t == EventType::Delete)
        .collect();
    assert!(
        deletes.is_empty(),
        "the agents' watch saw deletes during the takeover: {deletes:?}"
    );
    assert!(
        seen.iter()
            .all(|(_, k)| k.as_deref().is_some_and(|k| cache.contains_key(k))),
        "only the mirrored keys were rewritten: {seen:?}"
    );
}
