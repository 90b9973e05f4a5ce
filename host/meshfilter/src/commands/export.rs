//! `meshfilter export`: source-side filtering, from the unfiltered clustermesh etcd or from
//! the Kubernetes API, into the etcd remote clusters read.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use meshfilter_etcd::Backoff;
use meshfilter_filter_runtime::FilterRuntime;
use meshfilter_k8s_source::{KubernetesExport, KubernetesStatusHandle};
use meshfilter_sync::{
    ExportCluster, ExportStats, ExportStatusHandle, LeaderLock, SyncMetrics, TargetWriter,
    WriterConfig,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
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

struct Shared {
    runtime: Arc<FilterRuntime>,
    exporting: Exporting,
    registry: Registry,
    metrics: ExportMetrics,
}

pub fn run(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let config = ExportConfig::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("meshfilter")
        .build()?;
    rt.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: ExportConfig) -> anyhow::Result<()> {
    let cancel = super::serve::shutdown_on_signal();
    let (runtime, mut registry, _watch) =
        super::serve::load_filters(&config.filters, config.locality())?;
    let metrics = ExportMetrics::default();
    metrics.register(&mut registry);
    let sync_metrics = SyncMetrics::default();
    sync_metrics.register(&mut registry);
    let target = super::mesh::connect_with_retry(&config.export_etcd, "export", &cancel).await?;
    // Replicas take turns: only the holder of the export lock writes, fenced by it.
    let Some(lock) =
        LeaderLock::acquire(&target, EXPORT_LOCK, config.sync.lock_ttl, &cancel).await?
    else {
        return Ok(());
    };
    let lost = lock.lost();
    let lock_cancel = cancel.clone();
    tokio::spawn(async move {
        lost.cancelled().await;
        lock_cancel.cancel();
    });
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
    let fenced = writer.fenced();
    let fence_cancel = cancel.clone();
    tokio::spawn(async move {
        fenced.cancelled().await;
        fence_cancel.cancel();
    });
    let (task, exporting) = match &config.source {
        ExportSource::Etcd(etcd) => {
            let source = super::mesh::connect_with_retry(etcd, "source", &cancel).await?;
            let status = ExportStatusHandle::default();
            let exporter = ExportCluster::new(
                config.cluster_name.clone(),
                source,
                writer,
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
                writer,
                runtime.clone(),
                Backoff::default(),
            );
            let status = exporter.status_handle();
            let task = tokio::spawn(exporter.run(cancel.clone()));
            (task, Exporting::Kubernetes(status))
        }
    };
    tracing::info!(cluster = %config.cluster_name, source = config.source.kind(), "exporting");

    let shared = Arc::new(Shared {
        runtime,
        exporting,
        registry,
        metrics,
    });
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/status", get(status_json))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen: {}", config.listen))?;
    tracing::info!(listen = %config.listen, "serving /metrics /healthz /readyz /status");
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.clone().cancelled_owned())
        .await?;
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    lock.release().await;
    Ok(())
}

async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.exporting.synced() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not synced yet")
    }
}

async fn status_json(State(shared): State<Arc<Shared>>) -> axum::Json<serde_json::Value> {
    let mut status = shared.exporting.status();
    status["filters"] = serde_json::to_value(shared.runtime.info()).unwrap_or_default();
    axum::Json(status)
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    shared.metrics.refresh(&shared.exporting);
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &shared.registry) {
        Ok(()) => (StatusCode::OK, out),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

/// Gauges of `meshfilter export`, set from the live status at every scrape (the status
/// handles are the single source of truth).
#[derive(Debug, Clone, Default)]
struct ExportMetrics {
    synced: Gauge,
    exported: Family<ScopeLabel, Gauge>,
    skipped: Gauge,
    invalid: Gauge,
    retries: Family<ResourceLabel, Gauge>,
    lists: Family<ResourceLabel, Gauge>,
    malformed: Family<ResourceLabel, Gauge>,
}

impl ExportMetrics {
    /// Registers every metric under `meshfilter_export_*`.
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("meshfilter_export");
        r.register(
            "synced",
            "The first complete sync is written and its canaries are in place",
            self.synced.clone(),
        );
        r.register(
            "endpoints_exported",
            "Endpoint entries exported, by scope",
            self.exported.clone(),
        );
        r.register(
            "endpoints_skipped",
            "Endpoint entries kept in (by the export hook, or without a Pod)",
            self.skipped.clone(),
        );
        r.register(
            "endpoints_invalid",
            "Endpoints that could not be read, skipped",
            self.invalid.clone(),
        );
        r.register(
            "retries",
            "Failures that led to a retry, by source resource (`write`: export etcd writes)",
            self.retries.clone(),
        );
        r.register(
            "lists",
            "Complete lists of a watched Kubernetes resource (more than one: re-listed)",
            self.lists.clone(),
        );
        r.register(
            "objects_malformed",
            "Kubernetes objects whose body could not be read, skipped",
            self.malformed.clone(),
        );
    }

    /// Sets every gauge from the export's status.
    fn refresh(&self, exporting: &Exporting) {
        self.synced.set(i64::from(exporting.synced()));
        self.retries.clear();
        let stats: ExportStats = match exporting {
            Exporting::Etcd(s) => {
                for (name, r) in s.resources() {
                    self.retries
                        .get_or_create(&ResourceLabel { resource: name })
                        .set(r.retries as i64);
                }
                s.stats()
            }
            Exporting::Kubernetes(s) => {
                let status = s.status();
                for (name, w) in &status.resources {
                    let label = ResourceLabel {
                        resource: name.clone(),
                    };
                    self.retries.get_or_create(&label).set(w.errors as i64);
                    self.lists.get_or_create(&label).set(w.lists as i64);
                    self.malformed.get_or_create(&label).set(w.malformed as i64);
                }
                self.retries
                    .get_or_create(&ResourceLabel {
                        resource: "write".into(),
                    })
                    .set(status.retries as i64);
                status.endpoints
            }
        };
        self.exported.clear();
        for (scope, n) in &stats.exported {
            self.exported
                .get_or_create(&ScopeLabel {
                    scope: scope.clone(),
                })
                .set(*n as i64);
        }
        self.skipped
            .set(stats.skipped.values().sum::<usize>() as i64);
        self.invalid.set(stats.invalid as i64);
    }
}
