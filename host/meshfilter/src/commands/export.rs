//! `meshfilter export`: source-side filtering, from the unfiltered clustermesh etcd or from
//! the Kubernetes API, into the etcd remote clusters read.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshfilter_admin::{Admin, ServerLimits};
use meshfilter_etcd::Backoff;
use meshfilter_k8s_source::{KubernetesExport, KubernetesStatusHandle, SourceMetrics};
use meshfilter_sync::{
    ExportCluster, ExportStatusHandle, LeaderLock, SyncMetrics, TargetWriter, WriterConfig,
};
use parking_lot::Mutex;
use serde_json::json;

use crate::cli::ExportArgs;
use crate::config::{ExportConfig, ExportSource};

/// The lock export replicas take turns on, in the export etcd.
const EXPORT_LOCK: &str = "cilium/meshfilter-export-lock";

/// The running export, whichever its source.
enum Exporting {
    Etcd(ExportStatusHandle),
    Kubernetes(KubernetesStatusHandle),
}

impl Exporting {
    fn synced(&self) -> bool {
        match self {
            Exporting::Etcd(s) => s.synced(),
            Exporting::Kubernetes(s) => s.synced(),
        }
    }

    /// The status JSON: the same `synced`, `endpoints` and `resources` for both sources,
    /// plus what only the Kubernetes source has.
    fn status(&self) -> serde_json::Value {
        match self {
            Exporting::Etcd(s) => json!({
                "source": "etcd",
                "synced": s.synced(),
                "endpoints": s.stats(),
                "resources": s.resources(),
            }),
            Exporting::Kubernetes(s) => {
                let mut status = serde_json::to_value(s.status()).unwrap_or_default();
                status["source"] = json!("kubernetes");
                status
            }
        }
    }
}

pub fn run(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let config = ExportConfig::load(&args.config)?;
    if args.check {
        return super::serve::checked(&config.filters, config.locality(), "export");
    }
    super::serve::runtime()?.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: ExportConfig) -> anyhow::Result<()> {
    let cancel = super::serve::shutdown_on_signal();
    let (runtime, mut registry, _watch) =
        super::serve::load_filters(&config.filters, config.locality())?;
    let sync_metrics = SyncMetrics::default();
    sync_metrics.register(&mut registry);
    let source_metrics = SourceMetrics::default();
    source_metrics.register(&mut registry);

    // Served from the start: a standby replica answers too (and is not ready).
    let exporting: Arc<Mutex<Option<Exporting>>> = Arc::default();
    let writing: Arc<Mutex<Option<Arc<TargetWriter>>>> = Arc::default();
    let (ready, status, status_writer) = (exporting.clone(), exporting.clone(), writing.clone());
    let status_runtime = runtime.clone();
    let admin = Admin::new(
        registry,
        move || match &*ready.lock() {
            Some(e) if e.synced() => Ok(()),
            Some(_) => Err("not synced yet".into()),
            None => Err("standby: waiting for the export lock".into()),
        },
        move || {
            let mut status = match &*status.lock() {
                Some(e) => e.status(),
                None => json!({"standby": true}),
            };
            status["filters"] = serde_json::to_value(status_runtime.info()).unwrap_or_default();
            if let Some(w) = &*status_writer.lock() {
                status["writer"] = serde_json::to_value(w.status()).unwrap_or_default();
            }
            status
        },
    );
    let server = meshfilter_admin::bind_and_serve(
        config.listen,
        admin,
        axum::Router::new(),
        ServerLimits::default(),
        cancel.clone(),
    )
    .await
    .with_context(|| format!("listen: {}", config.listen))?;

    let target = super::serve::connect(&config.export_etcd, "export", &cancel).await?;
    // Replicas take turns: only the holder of the export lock writes, fenced by it.
    let Some(lock) =
        LeaderLock::acquire(&target, EXPORT_LOCK, config.sync.lock_ttl, &cancel).await?
    else {
        let _ = server.await;
        return Ok(());
    };
    let writer = TargetWriter::new(
        target,
        "export",
        WriterConfig {
            lease_ttl: config.sync.lease_ttl,
            ..WriterConfig::default()
        },
        Some(lock.fence()),
        sync_metrics.clone(),
        cancel.clone(),
    );
    let (task, running) = match &config.source {
        ExportSource::Etcd(etcd) => {
            let source = super::serve::connect(etcd, "source", &cancel).await?;
            let status = ExportStatusHandle::default();
            let exporter = ExportCluster::new(
                config.cluster_name.clone(),
                source,
                writer.clone(),
                runtime.clone(),
                Backoff::default(),
                sync_metrics.clone(),
            );
            let task = tokio::spawn(exporter.run(cancel.clone(), status.clone()));
            (task, Exporting::Etcd(status))
        }
        ExportSource::Kubernetes { access, cluster } => {
            let client = access.client().await.context("kubernetes")?;
            let exporter = KubernetesExport::new(
                cluster.clone(),
                client,
                writer.clone(),
                runtime.clone(),
                Backoff::default(),
                source_metrics,
                sync_metrics.clone(),
            );
            let status = exporter.status_handle();
            let task = tokio::spawn(exporter.run(cancel.clone()));
            (task, Exporting::Kubernetes(status))
        }
    };
    *exporting.lock() = Some(running);
    *writing.lock() = Some(writer.clone());
    tracing::info!(cluster = %config.cluster_name, source = config.source.kind(), "exporting");

    let (lock_lost, fenced) = (lock.lost(), writer.fenced());
    let lost = tokio::select! {
        _ = cancel.cancelled() => None,
        _ = lock_lost.cancelled() => Some("the export lock's lease was lost"),
        _ = fenced.cancelled() => Some("a write was refused by the export lock's fence"),
    };
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    let _ = server.await;
    match lost {
        // Exit with an error: the pod restarts and waits for the lock as a standby.
        Some(why) => anyhow::bail!("no longer the exporter: {why}"),
        None => {
            lock.release().await;
            Ok(())
        }
    }
}
