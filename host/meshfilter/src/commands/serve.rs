//! What every long-running role shares: shutdown on SIGTERM/SIGINT and the filter
//! runtime with its metrics registry.

use std::time::Duration;

use anyhow::Context;
use meshfilter_filter_runtime::{
    EngineConfig, FilterMetrics, FilterRuntime, Locality, ModuleSource, RuntimeConfig, WatchHandle,
};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::builtin;
use crate::config::FiltersSection;

/// A token cancelled on SIGTERM or SIGINT: every task of the role watches it.
pub fn shutdown_on_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    let signals = cancel.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        signals.cancel();
    });
    cancel
}

/// The filter runtime for `filters` (a watched directory, or the built-in cfp-scope),
/// with its metrics registered in a new registry.
pub fn load_filters(
    filters: &FiltersSection,
    local: Locality,
) -> anyhow::Result<(Arc<FilterRuntime>, Registry, Option<WatchHandle>)> {
    let mut registry = Registry::default();
    let metrics = FilterMetrics::default();
    metrics.register(&mut registry);
    let source = match &filters.directory {
        Some(dir) => ModuleSource::Directory(dir.clone()),
        None => ModuleSource::Builtin(builtin::default_set(filters.config.clone())),
    };
    let runtime = tokio::task::block_in_place(|| {
        FilterRuntime::new(
            RuntimeConfig {
                engine: EngineConfig::default(),
                source,
                pins: filters.pins.clone(),
                local,
            },
            metrics,
        )
    })
    .context("loading filters")?;
    let watch = runtime.watch(Duration::from_millis(500), Duration::from_secs(60))?;
    Ok((runtime, registry, watch))
}
