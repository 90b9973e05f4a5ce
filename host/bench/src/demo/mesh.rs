//! `meshfilter demo` on real etcd: a local mesh of several clusters.
//!
//! One etcd per cluster plays what a clustermesh-apiserver's etcd holds: the cluster's
//! own exported state (`cilium/state/...`, written after its export hook decided each
//! endpoint) and the kvstoremesh cache of every other cluster (`cilium/cache/...`),
//! filled by meshfilter's sync engine through the import hook. Everything after the export
//! decision is the production path: reflectors, leases, canaries, cluster configs.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshfilter_cilium::keys::cluster_config_key;
use meshfilter_cilium::{ClusterName, IpIdentityPair, Resource};
use meshfilter_etcd::{Backoff, EtcdConfig};
use meshfilter_filter_runtime::{BuiltinSet, ExportDecision, FilterEngine, FilterRuntime};
use meshfilter_local_etcd::EtcdServer;
use meshfilter_sync::{
    RemoteCluster, RemoteOptions, RemoteStatusHandle, SyncMetrics, TargetWriter, WriterConfig,
};
use tokio_util::sync::CancellationToken;

use super::{Sample, SampleCluster, short};
use crate::error::BenchError;
use crate::fixtures;

pub(super) fn run(
    sample: &Sample,
    filters: &BuiltinSet,
    engine: Arc<FilterEngine>,
) -> Result<(), BenchError> {
    crate::runtime()?.block_on(run_async(sample, filters, engine))
}

async fn run_async(
    sample: &Sample,
    filters: &BuiltinSet,
    engine: Arc<FilterEngine>,
) -> Result<(), BenchError> {
    println!(
        "meshfilter demo: {} clusters, one real etcd each, cfp-scope on export and import\n",
        sample.clusters.len()
    );
    let mut servers = Vec::new();
    for c in &sample.clusters {
        let server = tokio::task::block_in_place(|| EtcdServer::try_start(c.name.as_str()))
            .map_err(BenchError::fixture(format!("etcd {}", c.name)))?;
        println!("  started etcd for {:<10} at {}", c.name, server.endpoint());
        servers.push(server);
    }
    let runtimes =
        tokio::task::block_in_place(|| super::cluster_runtimes(sample, filters, &engine))?;

    // Export side: each cluster's etcd receives what its export hook lets out.
    let mut clients = Vec::new();
    let mut exported_counts = Vec::new();
    for (i, (c, server)) in sample.clusters.iter().zip(&servers).enumerate() {
        let client = etcd_client::Client::connect([server.endpoint()], None)
            .await
            .map_err(BenchError::etcd_client(c.name.as_str()))?;
        let cluster_id = i as u32 + 1;
        let (kvs, exported) = export_cluster(c, cluster_id, &runtimes[i])?;
        // One put each: endpoints of one identity write its key again, which one
        // transaction may not.
        let mut kv = client.kv_client();
        for (k, v) in kvs {
            kv.put(k, v, None)
                .await
                .map_err(BenchError::etcd_client(c.name.as_str()))?;
        }
        exported_counts.push(exported);
        clients.push(client);
    }

    // Consumer side: every cluster mirrors every other through its import hook.
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let mut handles: Vec<Vec<(ClusterName, RemoteStatusHandle)>> = Vec::new();
    let mut tasks = Vec::new();
    for (i, c) in sample.clusters.iter().enumerate() {
        let writer = TargetWriter::new(
            clients[i].clone(),
            c.name.as_str(),
            WriterConfig::default(),
            None,
            SyncMetrics::default(),
            cancel.clone(),
        );
        let mut mine = Vec::new();
        for (j, other) in sample.clusters.iter().enumerate() {
            if i == j {
                continue;
            }
            let remote = RemoteCluster::new(
                other.name.clone(),
                EtcdConfig::plain([servers[j].endpoint()]),
                writer.clone(),
                runtimes[i].clone(),
                RemoteOptions {
                    backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
                    ..RemoteOptions::default()
                },
                SyncMetrics::default(),
            );
            let handle = remote.status_handle();
            mine.push((other.name.clone(), handle.clone()));
            tasks.push(tokio::spawn(remote.run(cancel.clone())));
        }
        handles.push(mine);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !handles.iter().flatten().all(|(_, h)| h.snapshot().synced) {
        if Instant::now() > deadline {
            return Err(BenchError::Timeout {
                what: "the demo mesh to sync (60 s)".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "\nall {} mirrors synced in {:.2} s\n",
        handles.iter().map(Vec::len).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );

    println!("== import side: what each cluster's kvstoremesh cache holds");
    let mut full_mesh = 0usize;
    let mut cached_total = 0usize;
    for (i, c) in sample.clusters.iter().enumerate() {
        let mut kv = clients[i].kv_client();
        for (remote, handle) in &handles[i] {
            let j = sample
                .clusters
                .iter()
                .position(|o| &o.name == remote)
                .unwrap_or(0);
            full_mesh += sample.clusters[j].endpoints.len();
            let cache = kv
                .get(
                    Resource::Endpoints.cache_prefix(remote),
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_count_only(),
                    ),
                )
                .await
                .map_err(BenchError::etcd_client(c.name.as_str()))?
                .count() as usize;
            cached_total += cache;
            let stats = handle.snapshot().endpoints;
            println!(
                "  {:<10} <- {:<10} {cache:>3} cached of {:>3} exported ({} endpoints in {remote})",
                c.name,
                remote,
                exported_counts[j],
                sample.clusters[j].endpoints.len()
            );
            for (reason, n) in &stats.skipped {
                println!("  {:<27} filtered {n}: {reason}", "");
            }
        }
        let config = kv
            .get(cluster_config_key(&handles[i][0].0), None)
            .await
            .map_err(BenchError::etcd_client(c.name.as_str()))?;
        if let Some(kv) = config.kvs().first() {
            println!(
                "  {:<10}    cluster config for {}: {}",
                "",
                handles[i][0].0,
                kv.value_str().unwrap_or("?")
            );
        }
    }
    println!(
        "\nsummary: a full mesh caches {full_mesh} remote endpoint entries across the {} clusters; \
         with cfp-scope on both sides, {cached_total} ({:.0}% fewer)",
        sample.clusters.len(),
        100.0 * (1.0 - cached_total as f64 / full_mesh.max(1) as f64)
    );
    cancel.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}

/// The keys a clustermesh-apiserver with meshfilter's export hook writes for `c`, and how
/// many endpoints were exported.
fn export_cluster(
    c: &SampleCluster,
    cluster_id: u32,
    runtime: &Arc<FilterRuntime>,
) -> Result<(Vec<(String, String)>, usize), BenchError> {
    let origin = runtime.local().clone();
    let mut kvs = vec![(
        cluster_config_key(&c.name),
        fixtures::cluster_config(cluster_id, false),
    )];
    println!(
        "\n== {} (region {}, zone {}): export side",
        c.name,
        origin.region.as_deref().unwrap_or("?"),
        origin.zone.as_deref().unwrap_or("?")
    );
    let mut nodes = BTreeSet::new();
    let mut exported = 0;
    for ep in &c.endpoints {
        let mut ep = ep.clone();
        ep.namespace_annotations = c.namespaces.get(&ep.namespace).cloned().unwrap_or_default();
        ep.origin = origin.clone();
        let labels: Vec<String> = ep
            .labels
            .iter()
            .map(|(k, v)| format!("k8s:{k}={v}"))
            .chain([
                format!("k8s:io.cilium.k8s.policy.cluster={}", c.name),
                format!("k8s:io.kubernetes.pod.namespace={}", ep.namespace),
            ])
            .collect();
        let mut labels = labels;
        labels.sort();
        kvs.push((
            Resource::Identities.source_key(&c.name, &ep.identity.to_string()),
            labels.iter().map(|l| format!("{l};")).collect(),
        ));
        if let Some(node) = &ep.node_ip {
            nodes.insert(node.clone());
        }
        let verdict =
            tokio::task::block_in_place(|| runtime.decide_export(&Arc::new(ep.clone()), None));
        let shown = match &verdict.decision {
            ExportDecision::Skip { .. } => "skip".to_string(),
            ExportDecision::Sync { scope, .. } => format!("sync:{scope}"),
        };
        println!(
            "  {:<48} {:<26} {}",
            short(&ep),
            shown,
            verdict.decision.reason()
        );
        if let ExportDecision::Sync { scope, .. } = &verdict.decision {
            let ip: IpAddr = ep.ip.parse().map_err(|_| BenchError::Sample {
                origin: c.name.to_string(),
                message: format!("endpoint ip {:?} is not an IP address", ep.ip),
            })?;
            let mut pair = IpIdentityPair::new(ip);
            pair.host_ip = ep.node_ip.as_deref().and_then(|n| n.parse().ok());
            pair.id = ep.identity;
            pair.k8s_namespace = ep.namespace.clone();
            pair.k8s_pod_name = ep.pod_name.clone();
            pair.k8s_service_account = ep.service_account.clone().unwrap_or_default();
            pair.sync_scope = Some(scope.to_field_value());
            kvs.push((
                Resource::Endpoints.source_key(&c.name, &pair.prefix_string()),
                String::from_utf8(pair.to_json_bytes()).map_err(BenchError::cilium)?,
            ));
            exported += 1;
        }
    }
    for (n, node_ip) in nodes.iter().enumerate() {
        let name = format!("{}-node-{n}", c.name);
        let region = origin.region.clone().unwrap_or_default();
        let zone = origin.zone.clone().unwrap_or_default();
        let value = fixtures::node(
            &c.name,
            cluster_id,
            &name,
            node_ip.parse().map_err(|_| BenchError::Sample {
                origin: c.name.to_string(),
                message: format!("node ip {node_ip:?} is not an IP address"),
            })?,
            &[
                ("topology.kubernetes.io/region", &region),
                ("topology.kubernetes.io/zone", &zone),
            ],
            None,
        );
        kvs.push((Resource::Nodes.source_key(&c.name, &name), value));
    }
    println!("  exported {exported} of {}", c.endpoints.len());
    // Written once every list is in, as clustermesh-apiserver does.
    kvs.extend(fixtures::canaries(&c.name, false));
    Ok((kvs, exported))
}
