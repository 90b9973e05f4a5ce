//! `meshfilter snapshot`: what filters see of every cluster, in one file.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, bail};
use meshfilter_cilium::ClusterName;
use meshfilter_etcd::{EtcdConfig, scan_clusters_dir};
use meshfilter_whatif::{ClusterSnapshot, FORMAT_VERSION, Snapshot};

use crate::cli::SnapshotArgs;
use crate::config::MeshConfig;

pub fn run(args: &SnapshotArgs) -> anyhow::Result<ExitCode> {
    let mut targets: Vec<(ClusterName, EtcdConfig)> = Vec::new();
    // The mesh's own cluster consumes what the others export: it goes in as a consumer
    // (its locality, no endpoints), so `filter diff` shows the consequence for it.
    let mut consumers = Vec::new();
    let mut sources = Vec::new();
    let mut from_dir = |dir: &std::path::Path, own: Option<&str>| -> anyhow::Result<()> {
        for (file, config) in scan_clusters_dir(dir, own)? {
            let name = ClusterName::new(file.clone()).with_context(|| {
                format!(
                    "{}: {file:?} is not a valid Cilium cluster name",
                    dir.display()
                )
            })?;
            targets.push((name, config.with_context(|| format!("cluster {file}"))?));
        }
        sources.push(format!("clusters dir {}", dir.display()));
        Ok(())
    };
    if let Some(path) = &args.mesh_config {
        let config = MeshConfig::load(path)?;
        from_dir(&config.clusters_dir, Some(&config.cluster.name))?;
        consumers.push(ClusterSnapshot {
            name: config.cluster.name.clone(),
            region: config.cluster.region.clone(),
            zone: config.cluster.zone.clone(),
            nodes: 0,
            identities: 0,
            endpoints: Vec::new(),
        });
    }
    if let Some(dir) = &args.clusters_dir {
        from_dir(dir, None)?;
    }
    for spec in &args.etcd {
        let Some((name, url)) = spec.split_once('=') else {
            bail!("--etcd {spec:?}: expected NAME=URL, e.g. --etcd eu-1=http://10.0.0.5:2379");
        };
        let name = ClusterName::new(name.to_string()).with_context(|| {
            format!("--etcd {spec:?}: {name:?} is not a valid Cilium cluster name")
        })?;
        targets.push((name, EtcdConfig::plain(vec![url.to_string()])));
        sources.push(format!("etcd {url}"));
    }
    if targets.is_empty() {
        bail!("nothing to capture: give --mesh-config, --clusters-dir or --etcd NAME=URL");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut clusters = Vec::new();
    for (name, config) in targets {
        let (cluster, invalid) = runtime.block_on(async {
            let client = config
                .connect(name.as_str())
                .await
                .with_context(|| format!("cluster {name}: connecting to {:?}", config.endpoints))?;
            meshfilter_sync::capture_cluster(&client, name.as_str(), &name)
                .await
                .with_context(|| format!("cluster {name}: reading its clustermesh state"))
        })?;
        eprintln!(
            "{name}: {} endpoints, {} nodes, {} identities{}",
            cluster.endpoints.len(),
            cluster.nodes,
            cluster.identities,
            if invalid > 0 {
                format!(", {invalid} invalid entries skipped")
            } else {
                String::new()
            }
        );
        clusters.push(cluster);
    }
    for consumer in consumers {
        if !clusters.iter().any(|c| c.name == consumer.name) {
            eprintln!(
                "{}: the mesh's own cluster, as a consumer only (its endpoints are not read)",
                consumer.name
            );
            clusters.push(consumer);
        }
    }
    let snapshot = Snapshot {
        format: FORMAT_VERSION,
        taken_at_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        source: sources.join(", "),
        clusters,
    };
    snapshot.write(&args.output)?;
    eprintln!(
        "wrote {} ({} clusters, {} endpoints)",
        args.output.display(),
        snapshot.clusters.len(),
        snapshot.endpoint_count()
    );
    Ok(ExitCode::SUCCESS)
}
