//! `meshfilter export` from an unfiltered clustermesh etcd, then `meshfilter mesh` reading
//! the export: the whole pipeline on real etcd servers with the real cfp-scope module.

use std::collections::BTreeMap;
use std::time::Duration;

use meshfilter_cilium::ClusterName;
use meshfilter_etcd::{Backoff, EtcdConfig};
use meshfilter_filter_runtime::{
    BuiltinSet, FilterEngine, FilterManifest, FilterMetrics, FilterRuntime, Locality, ModuleSource,
};
use meshfilter_sync::{
    ExportCluster, ExportStatusHandle, RemoteCluster, RemoteOptions, SyncMetrics,
};
use meshfilter_tests::cilium_data::{SourceCluster, list, put_all};
use meshfilter_tests::etcd::EtcdServer;
use meshfilter_tests::{eventually, module_bytes, writer_into};
use tokio_util::sync::CancellationToken;

fn runtime(
    engine: &std::sync::Arc<FilterEngine>,
    local: Locality,
) -> std::sync::Arc<FilterRuntime> {
    let set = BuiltinSet {
        modules: vec![("cfp-scope.wasm".into(), module_bytes("cfp-scope").into())],
        manifest: FilterManifest::single("cfp-scope.wasm", serde_json::Value::Null),
    };
    FilterRuntime::with_engine(
        engine.clone(),
        ModuleSource::Builtin(set),
        BTreeMap::new(),
        local,
        FilterMetrics::default(),
    )
    .unwrap()
}

fn ips(kvs: &[(String, String)]) -> Vec<String> {
    kvs.iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_mesh_carries_only_what_both_sides_allow() {
    let apiserver = EtcdServer::start("apiserver");
    let export = EtcdServer::start("export");
    let consumer = EtcdServer::start("consumer");
    let us = SourceCluster::new("prod-us-1", 3, "us-east-1", "us-east-1a");
    let source = etcd_client::Client::connect([apiserver.endpoint()], None)
        .await
        .unwrap();
    // Identities carry the pods' labels, the opt-in and scope labels among them.
    let sync = "k8s:clustermesh.cilium.io/sync=true;";
    let identity = |id: u32, extra: &str| {
        (
            format!("cilium/state/identities/v1/id/{}", us.identity(id)),
            format!("k8s:app=app-{id};{extra}k8s:io.kubernetes.pod.namespace=shop;"),
        )
    };
    let mut unknown_field = us.endpoint_kv(0, 3, 3, None);
    unknown_field.1 = unknown_field
        .1
        .replacen('{', r#"{"FutureField":{"x":1},"#, 1);
    put_all(
        &source,
        [
            us.config_kv(),
            us.node_kv(0),
            identity(0, sync),
            identity(
                1,
                &format!("{sync}k8s:clustermesh.cilium.io/sync-scope=regional;"),
            ),
            identity(2, ""),
            identity(3, sync),
            us.endpoint_kv(0, 0, 0, None),
            us.endpoint_kv(0, 1, 1, None),
            us.endpoint_kv(0, 2, 2, None),
            unknown_field,
        ]
        .into_iter()
        .chain(us.synced_kvs()),
    )
    .await;

    let engine = FilterEngine::new(Default::default()).unwrap();
    let us_rt = runtime(
        &engine,
        Locality {
            cluster: us.name.clone(),
            zone: None,
            region: Some(us.region.clone()),
        },
    );
    let cancel = CancellationToken::new();
    let (export_client, writer) = writer_into(&export, "export", &cancel).await;
    let exporter = ExportCluster::new(
        ClusterName::new(us.name.clone()).unwrap(),
        source.clone(),
        writer,
        us_rt,
        Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
        SyncMetrics::default(),
    );
    let export_status = ExportStatusHandle::default();
    let export_task = tokio::spawn(exporter.run(cancel.clone(), export_status.clone()));

    eventually("export synced", async || {
        if export_status.synced() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    let exported = list(&export_client, "cilium/state/ip/v1/default/").await;
    assert_eq!(
        ips(&exported),
        [us.pod_ip(0, 0), us.pod_ip(0, 1), us.pod_ip(0, 3)],
        "only opted-in pods"
    );
    let scopes: Vec<serde_json::Value> = exported
        .iter()
        .map(|(_, v)| serde_json::from_str(v).unwrap())
        .collect();
    assert_eq!(scopes[0]["SyncScope"], "global");
    assert_eq!(scopes[1]["SyncScope"], "regional");
    assert_eq!(
        scopes[2]["FutureField"]["x"], 1,
        "unknown fields survive the export"
    );
    assert_eq!(
        list(&export_client, "cilium/state/identities/v1/id/")
            .await
            .len(),
        4
    );
    assert_eq!(
        list(&export_client, "cilium/state/nodes/v1/prod-us-1/")
            .await
            .len(),
        1
    );
    assert_eq!(
        list(&export_client, "cilium/cluster-config/prod-us-1")
            .await
            .len(),
        1
    );
    assert_eq!(
        list(&export_client, "cilium/synced/prod-us-1/cilium/state/ip/v1")
            .await
            .len(),
        1
    );
    let stats = export_status.stats();
    assert_eq!(stats.exported.values().sum::<usize>(), 3);
    assert!(
        stats.skipped.keys().any(|r| r.contains("not opted in")),
        "{stats:?}"
    );

    // A consumer in another region mirrors the export: the regional pod stays out.
    let consumer_rt = runtime(
        &engine,
        Locality {
            cluster: "prod-eu-1".into(),
            zone: None,
            region: Some("eu-west-1".into()),
        },
    );
    let (local, mesh_writer) = writer_into(&consumer, "local", &cancel).await;
    let remote = RemoteCluster::new(
        ClusterName::new(us.name.clone()).unwrap(),
        EtcdConfig::plain([export.endpoint()]),
        mesh_writer,
        consumer_rt,
        RemoteOptions {
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
            ..RemoteOptions::default()
        },
        SyncMetrics::default(),
    );
    let mesh_task = tokio::spawn(remote.run(cancel.clone()));
    let want = vec![us.pod_ip(0, 0), us.pod_ip(0, 3)];
    eventually("consumer cache", async || {
        let got = ips(&list(&local, "cilium/cache/ip/v1/prod-us-1/").await);
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;

    // The pod drops its opt-in label: the export deletes it, and so does the consumer.
    put_all(&source, [identity(0, "")]).await;
    let want = vec![us.pod_ip(0, 3)];
    eventually("opt-out propagates", async || {
        let got = ips(&list(&local, "cilium/cache/ip/v1/prod-us-1/").await);
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    assert_eq!(
        ips(&list(&export_client, "cilium/state/ip/v1/default/").await),
        [us.pod_ip(0, 1), us.pod_ip(0, 3)]
    );

    cancel.cancel();
    for t in [export_task, mesh_task] {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("shuts down")
            .unwrap();
    }
}

/// The export copies the source's cluster config verbatim, so it must mirror exactly the
/// resources that config advertises: endpoint slices when the source runs service v2 (a
/// consumer waits for their canary), and nothing of them otherwise (what an earlier run
/// wrote is drained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_mirrors_what_the_copied_config_advertises() {
    let engine = FilterEngine::new(Default::default()).unwrap();
    for (mode, exported) in [("services-and-endpointslices", true), ("", false)] {
        let apiserver = EtcdServer::start("apiserver");
        let export = EtcdServer::start("export");
        let us = SourceCluster::new("prod-us-1", 3, "us-east-1", "us-east-1a");
        let source = etcd_client::Client::connect([apiserver.endpoint()], None)
            .await
            .unwrap();
        let config = serde_json::json!({"id": 3, "capabilities": {"syncedCanaries": true,
            "maxConnectedClusters": 255, "endpointSlicesExportMode": mode}});
        let slice = "cilium/state/endpointslices/v1/prod-us-1/shop/web-abc12";
        let mut kvs = vec![
            (
                "cilium/cluster-config/prod-us-1".to_string(),
                config.to_string(),
            ),
            us.node_kv(0),
            (slice.to_string(), "opaque slice bytes".to_string()),
        ];
        kvs.extend(us.synced_kvs());
        kvs.push((
            "cilium/synced/prod-us-1/cilium/state/endpointslices/v1".into(),
            "2026-11-30T00:00:00Z".into(),
        ));
        put_all(&source, kvs).await;
        let cancel = CancellationToken::new();
        let (export_client, writer) = writer_into(&export, "export", &cancel).await;
        // What an earlier run left under endpoint slices.
        put_all(
            &export_client,
            [(
                "cilium/state/endpointslices/v1/prod-us-1/shop/stale".to_string(),
                "old".to_string(),
            )],
        )
        .await;
        let status = ExportStatusHandle::default();
        let exporter = ExportCluster::new(
            ClusterName::new("prod-us-1").unwrap(),
            source,
            writer,
            runtime(&engine, Locality::cluster("prod-us-1")),
            Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
            SyncMetrics::default(),
        );
        let task = tokio::spawn(exporter.run(cancel.clone(), status.clone()));
        eventually("export synced", async || {
            status.synced().then_some(()).ok_or("not yet".into())
        })
        .await;
        let slices = list(&export_client, "cilium/state/endpointslices/v1/").await;
        if exported {
            assert_eq!(
                slices,
                [(slice.to_string(), "opaque slice bytes".to_string())],
                "{mode}: endpoint slices mirrored, the stale one swept"
            );
        } else {
            assert!(slices.is_empty(), "{mode}: no endpoint slices: {slices:?}");
        }
        let config_out = list(&export_client, "cilium/cluster-config/prod-us-1").await;
        assert_eq!(
            config_out[0].1,
            config.to_string(),
            "config copied verbatim"
        );
        cancel.cancel();
        let _ = task.await;
    }
}
