//! 50 remote clusters lose their etcd at the same moment (a clustermesh-apiserver rolling
//! update behind a load balancer, cut here through a TCP proxy): their reconnects must
//! spread over the backoff window instead of arriving together.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meshfilter_cilium::ClusterName;
use meshfilter_etcd::{Backoff, EtcdConfig};
use meshfilter_filter_runtime::{
    BuiltinSet, FilterEngine, FilterManifest, FilterMetrics, FilterRuntime, Locality, ModuleSource,
};
use meshfilter_sync::{
    RemoteCluster, RemoteOptions, RemoteStatusHandle, SyncMetrics, TargetWriter, WriterConfig,
};
use meshfilter_tests::cilium_data::put_all;
use meshfilter_tests::etcd::EtcdServer;
use meshfilter_tests::module_bytes;
use meshfilter_tests::proxy::TcpProxy;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const REMOTES: u32 = 50;

/// Lists done by every reflector that lists (a resource the remote does not export is
/// drained, not listed: it has no reflector to count).
fn lists(handles: &[RemoteStatusHandle]) -> Vec<u64> {
    handles
        .iter()
        .flat_map(|h| {
            h.snapshot()
                .resources
                .into_iter()
                .filter(|(name, _)| !matches!(name.as_str(), "serviceexports" | "endpointslices"))
                .map(|(_, r)| r.lists)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_remotes_dropped_at_once_reconnect_spread_out() {
    let mock = EtcdServer::start("mock");
    let local_etcd = EtcdServer::start("local");
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", mock.client_port()));
    let client = etcd_client::Client::connect([mock.endpoint()], None)
        .await
        .unwrap();
    // Every remote in the cached layout, as Cilium's cmapisrv-mock writes it.
    let mut kvs = Vec::new();
    for c in 1..=REMOTES {
        let name = format!("remote-{c:02}");
        let config = json!({"id": c, "capabilities": {"syncedCanaries": true, "cached": true, "maxConnectedClusters": 255}});
        kvs.push((format!("cilium/cluster-config/{name}"), config.to_string()));
        kvs.push((
            format!("cilium/cache/identities/v1/{name}/id/{}", (c << 16) + 256),
            "k8s:app=web;".to_string(),
        ));
        let ip = format!("10.{c}.0.10");
        let ep = json!({"IP": ip, "HostIP": "172.16.0.1", "ID": (c << 16) + 256, "Key": 0, "Metadata": ""});
        kvs.push((format!("cilium/cache/ip/v1/{name}/{ip}"), ep.to_string()));
        // A cache's canaries, as kvstoremesh writes them once its mirror is complete.
        for r in ["ip", "identities", "nodes", "services"] {
            kvs.push((
                format!("cilium/synced/{name}/cilium/cache/{r}/v1"),
                "2026-11-30T00:00:00Z".to_string(),
            ));
        }
    }
    put_all(&client, kvs).await;

    let set = BuiltinSet {
        modules: vec![("cfp-scope.wasm".into(), module_bytes("cfp-scope").into())],
        manifest: FilterManifest::single("cfp-scope.wasm", serde_json::Value::Null),
    };
    let rt = FilterRuntime::with_engine(
        FilterEngine::new(Default::default()).unwrap(),
        ModuleSource::Builtin(set),
        BTreeMap::new(),
        Locality::cluster("local"),
        FilterMetrics::default(),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let local = etcd_client::Client::connect([local_etcd.endpoint()], None)
        .await
        .unwrap();
    let writer = TargetWriter::new(
        local,
        "local",
        WriterConfig::default(),
        None,
        SyncMetrics::default(),
        cancel.clone(),
    );
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    for c in 1..=REMOTES {
        let remote = RemoteCluster::new(
            ClusterName::new(format!("remote-{c:02}")).unwrap(),
            EtcdConfig::plain([proxy.endpoint()]),
            writer.clone(),
            rt.clone(),
            RemoteOptions {
                backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(8)),
                ..RemoteOptions::default()
            },
            SyncMetrics::default(),
        );
        let handle = remote.status_handle();
        handles.push(handle.clone());
        tasks.push(tokio::spawn(remote.run(cancel.clone())));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !handles.iter().all(|h| h.snapshot().synced) {
        assert!(Instant::now() < deadline, "the remotes did not sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // All remotes lose their etcd at once for three seconds.
    let before = lists(&handles);
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.heal();
    let healed = Instant::now();
    let mut relisted_at: Vec<Option<Duration>> = vec![None; before.len()];
    let deadline = healed + Duration::from_secs(30);
    while relisted_at.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "not every reflector came back: {relisted_at:?}"
        );
        for (i, n) in lists(&handles).into_iter().enumerate() {
            if n > before[i] && relisted_at[i].is_none() {
                relisted_at[i] = Some(healed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let times: Vec<Duration> = relisted_at.into_iter().flatten().collect();
    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    for t in &times {
        *per_second.entry(t.as_secs()).or_default() += 1;
    }
    let peak = per_second.values().copied().max().unwrap_or(0);
    let last = times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{} reflectors of {REMOTES} remotes re-listed over {:.1} s after the heal; peak {peak} in one second; per second: {per_second:?}",
        times.len(),
        last.as_secs_f64()
    );
    assert!(
        peak * 2 < times.len(),
        "reconnects pile up: {peak} of {} in one second ({per_second:?})",
        times.len()
    );
    assert!(
        per_second.len() >= 3,
        "reconnects spread over several seconds: {per_second:?}"
    );
    cancel.cancel();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap();
    }
}
