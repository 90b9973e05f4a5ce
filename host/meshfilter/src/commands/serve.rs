//! What every long-running role shares: its tokio runtime, shutdown on SIGTERM/SIGINT,
//! connecting its own etcd, the filter runtime with its metrics registry, and `--check`.

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

/// The multi-threaded runtime every role runs on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("meshfilter")
        .build()?)
}

/// Connects one of the role's own etcds (`name`: local, export, source), retrying until it
/// answers or the role is shut down.
pub async fn connect(
    etcd: &meshfilter_etcd::EtcdConfig,
    name: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<etcd_client::Client> {
    match etcd
        .connect_with_retry(name, &mut meshfilter_etcd::Backoff::default(), cancel)
        .await
    {
        Some(client) => Ok(client),
        None => anyhow::bail!("shut down before the {name} etcd answered"),
    }
}

/// `--check`: the config parsed and validated (the caller did that), and its filters load
/// (modules read, pins matched, each module's `configure` accepts its config, self-tests
/// pass), without connecting anywhere.
pub fn checked(
    filters: &FiltersSection,
    local: Locality,
    role: &str,
) -> anyhow::Result<std::process::ExitCode> {
    let runtime = FilterRuntime::new(
        RuntimeConfig {
            engine: EngineConfig::default(),
            source: module_source(filters),
            pins: filters.pins.clone(),
            local,
        },
        FilterMetrics::default(),
    )
    .context("filters")?;
    filters.rollout_policy()?;
    let info = runtime.info();
    println!(
        "meshfilter {role}: config ok; filters ok (generation {}, {} module{})",
        info.generation,
        info.modules.len(),
        if info.modules.len() == 1 { "" } else { "s" }
    );
    Ok(std::process::ExitCode::SUCCESS)
}

fn module_source(filters: &FiltersSection) -> ModuleSource {
    match &filters.directory {
        Some(dir) => ModuleSource::Directory(dir.clone()),
        None => ModuleSource::Builtin(builtin::default_set(filters.config.clone())),
    }
}

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
    let source = module_source(filters);
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
    runtime.set_rollout(filters.rollout_policy()?);
    let watch = runtime.watch(Duration::from_millis(500), Duration::from_secs(60))?;
    Ok((runtime, registry, watch))
}
