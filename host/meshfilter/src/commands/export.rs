//! `meshfilter export`: source-side filtering from the unfiltered clustermesh etcd.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use meshfilter_cilium::ClusterName;
use meshfilter_filter_runtime::FilterRuntime;
use meshfilter_sync::{Backoff, ExportCluster, ExportStatusHandle, TargetWriter, WriterConfig};
use prometheus_client::registry::Registry;

use crate::cli::ExportArgs;
use crate::config::ExportConfig;

struct Shared {
    runtime: Arc<FilterRuntime>,
    status: ExportStatusHandle,
    registry: Registry,
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
    let (runtime, registry, _watch) =
        super::serve::load_filters(&config.filters, config.locality())?;
    let source = super::mesh::connect_with_retry(&config.source_etcd, "source", &cancel).await?;
    let target = super::mesh::connect_with_retry(&config.export_etcd, "export", &cancel).await?;
    let writer = TargetWriter::new(target, "export", WriterConfig::default(), cancel.clone());
    let status = ExportStatusHandle::default();
    let exporter = ExportCluster::new(
        ClusterName::new(config.cluster.name.clone())?,
        source,
        writer,
        runtime.clone(),
        Backoff::default(),
    );
    let task = tokio::spawn(exporter.run(cancel.clone(), status.clone()));

    let shared = Arc::new(Shared {
        runtime,
        status,
        registry,
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
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
    Ok(())
}

async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.status.synced() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not synced yet")
    }
}

async fn status_json(State(shared): State<Arc<Shared>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "synced": shared.status.synced(),
        "filters": shared.runtime.info(),
        "endpoints": shared.status.stats(),
        "resources": shared.status.resources(),
    }))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &shared.registry) {
        Ok(()) => (StatusCode::OK, out),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
