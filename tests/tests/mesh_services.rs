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
    let runtime = cfp_scope_runtime(Locality::cluster("local"));
    let mut tasks = Vec::new();
    for (c, etcd) in [(&both, &etcd_both), (&v2, &etcd_v2)] {
        let config = meshfilter_sync::EtcdConfig::plain([etcd.endpoint()]);
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
            .is_none()
            && get(&client, "cilium/synced/v2only/cilium/cache/services/v1")
                .await
                .is_none(),
        "endpointslices-only: no legacy services"
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
