//! Service state a remote publishes, mirrored as kvstoremesh does it, by its cluster
//! config: legacy services unless the remote runs service v2 only, endpoint slices (zstd
//! protobuf, so bytes that are not UTF-8) when it runs service v2, byte for byte, with
//! their canaries.

use meshfilter_filter_runtime::Locality;
use meshfilter_tests::cilium_data::{SourceCluster, put_all};
use meshfilter_tests::etcd::EtcdServer;
use meshfilter_tests::{cfp_scope_runtime, eventually, spawn_remote, writer_into};
use tokio_util::sync::CancellationToken;

/// A `ClusterEndpointSlice` as Cilium stores it: a zstd frame (magic 28 b5 2f fd).
const SLICE: &[u8] = &[
    0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x0b, 0x59, 0x00, 0x00, 0x0a, 0x03, 0xff, 0xfe, 0x80, 0x01,
];

async fn remote_with_services(c: &SourceCluster, etcd: &EtcdServer, mode: &str) {
    let client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let config = serde_json::json!({"id": c.id, "capabilities": {
        "syncedCanaries": true, "maxConnectedClusters": 255, "endpointSlicesExportMode": mode}});
    put_all(
        &client,
        [
            (
                format!("cilium/cluster-config/{}", c.name),
                config.to_string(),
            ),
            c.node_kv(0),
            (
                format!("cilium/state/services/v1/{}/shop/web", c.name),
                format!(
                    r#"{{"cluster":"{}","namespace":"shop","name":"web","shared":true}}"#,
                    c.name
                ),
            ),
        ],
    )
    .await;
    let mut kv = client.kv_client();
    kv.put(
        format!("cilium/state/endpointslices/v1/{}/shop/web-abc12", c.name),
        SLICE,
        None,
    )
    .await
    .unwrap();
    // The canaries clustermesh-apiserver writes for what it exports in this mode.
    let mut synced = vec!["nodes", "identities", "ip"];
    if mode != "endpointslices-only" {
        synced.push("services");
    }
    if !mode.is_empty() {
        synced.push("endpointslices");
    }
    for r in synced {
        kv.put(
            format!("cilium/synced/{}/cilium/state/{r}/v1", c.name),
            "2026-11-30T00:00:00Z",
            None,
        )
        .await
        .unwrap();
    }
}

async fn get(client: &etcd_client::Client, key: &str) -> Option<Vec<u8>> {
    let resp = client.kv_client().get(key, None).await.ok()?;
    resp.kvs().first().map(|kv| kv.value().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_and_services_follow_the_remotes_export_mode() {
    let local = EtcdServer::start("local");
    let both = SourceCluster::new("both", 3, "eu-west-1", "eu-west-1a");
    let v2 = SourceCluster::new("v2only", 4, "eu-west-1", "eu-west-1a");
    let (etcd_both, etcd_v2) = (EtcdServer::start("both"), EtcdServer::start("v2only"));
    remote_with_services(&both, &etcd_both, "services-and-endpointslices").await;
    remote_with_services(&v2, &etcd_v2, "endpointslices-only").await;

    let cancel = CancellationToken::new();
    let (client, writer) = writer_into(&local, "mesh", &cancel).await;
    // An earlier session (before v2only switched to endpoint slices only) left a legacy
    // service in the cache: it must be drained.
    let stale = "cilium/cache/services/v1/v2only/shop/old";
    client
        .kv_client()
        .put(stale, r#"{"cluster":"v2only","name":"old"}"#, None)
        .await
        .unwrap();
    let runtime = cfp_scope_runtime(Locality::cluster("local"));
    let mut tasks = Vec::new();
    for (c, etcd) in [(&both, &etcd_both), (&v2, &etcd_v2)] {
        let config = meshfilter_etcd::EtcdConfig::plain([etcd.endpoint()]);
        tasks.push(spawn_remote(&c.name, config, writer.clone(), runtime.clone(), &cancel).1);
    }

    for c in [&both, &v2] {
        let name = c.name.clone();
        let client = client.clone();
        eventually(
            &format!("{name}: endpoint slice mirrored byte for byte"),
            async || {
                let key = format!("cilium/cache/endpointslices/v1/{name}/shop/web-abc12");
                match get(&client, &key).await {
                    Some(v) if v == SLICE => {}
                    other => return Err(format!("{key}: {other:?}")),
                }
                let canary = format!("cilium/synced/{name}/cilium/cache/endpointslices/v1");
                get(&client, &canary)
                    .await
                    .map(|_| ())
                    .ok_or(format!("no {canary}"))
            },
        )
        .await;
    }
    assert!(
        get(&client, "cilium/cache/services/v1/both/shop/web")
            .await
            .is_some(),
        "services-and-endpointslices: legacy services too"
    );
    assert!(
        get(&client, "cilium/cache/services/v1/v2only/shop/web")
            .await
            .is_none(),
        "endpointslices-only: no legacy services"
    );
    assert!(
        get(&client, stale).await.is_none(),
        "what an earlier session left under the disabled resource is drained"
    );
    // ...but their canary, as kvstoremesh writes it for a disabled reflector: agents wait
    // for every canary before they call the remote ready.
    assert!(
        get(&client, "cilium/synced/v2only/cilium/cache/services/v1")
            .await
            .is_some(),
        "endpointslices-only: the legacy services canary is written anyway"
    );
    // The cached cluster config keeps the mode, so agents pick the right reflectors.
    let config = get(&client, "cilium/cluster-config/v2only").await.unwrap();
    let config = String::from_utf8(config).unwrap();
    assert!(
        config.contains(r#""endpointSlicesExportMode":"endpointslices-only""#),
        "{config}"
    );
    assert!(config.contains(r#""cached":true"#), "{config}");

    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
}

/// A remote whose cluster config changes (here its cluster ID, as when a cluster is
/// re-installed under a new ID behind the same clustermesh endpoint): everything is
/// re-listed with the new config, endpoints whose identities fall outside the new ID's
/// range leave the cache, new ones in range arrive, and the cached config follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_cluster_config_restarts_the_remote() {
    let local = EtcdServer::start("local");
    let etcd = EtcdServer::start("east");
    let before = SourceCluster::new("east", 3, "eu-west-1", "eu-west-1a");
    let after = SourceCluster::new("east", 5, "eu-west-1", "eu-west-1a");
    let remote = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    put_all(&remote, before.one_pod(Some("global"))).await;

    let cancel = CancellationToken::new();
    let (client, writer) = writer_into(&local, "mesh", &cancel).await;
    let runtime = cfp_scope_runtime(Locality::cluster("local"));
    let config = meshfilter_etcd::EtcdConfig::plain([etcd.endpoint()]);
    let (handle, task) = spawn_remote("east", config, writer, runtime, &cancel);
    let old_key = format!("cilium/cache/ip/v1/east/{}", before.pod_ip(0, 0));
    eventually("the first endpoint is mirrored", async || {
        get(&client, &old_key)
            .await
            .map(|_| ())
            .ok_or("not yet".into())
    })
    .await;

    // Re-installed as cluster 5: new config, new identities and endpoints; the old
    // endpoint is still published (stale) with its cluster-3 identity.
    put_all(
        &remote,
        [
            after.config_kv(),
            after.identity_kv(0, "web", "shop"),
            after.endpoint_kv(0, 0, 0, Some("global")),
        ],
    )
    .await;
    let new_key = format!("cilium/cache/ip/v1/east/{}", after.pod_ip(0, 0));
    eventually("re-listed under the new cluster ID", async || {
        let config = get(&client, "cilium/cluster-config/east")
            .await
            .unwrap_or_default();
        let config = String::from_utf8_lossy(&config).to_string();
        if !config.contains(r#""id":5"#) {
            return Err(format!("cached config: {config}"));
        }
        if get(&client, &new_key).await.is_none() {
            return Err("the cluster-5 endpoint is not mirrored".into());
        }
        if get(&client, &old_key).await.is_some() {
            return Err("the cluster-3 endpoint is still cached".into());
        }
        Ok(())
    })
    .await;
    assert_eq!(handle.snapshot().config_changes, 1);
    cancel.cancel();
    let _ = task.await;
}
