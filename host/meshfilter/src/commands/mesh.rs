//! `meshfilter mesh`: a drop-in kvstoremesh with consumer-side filtering. Config, build,
//! run: the role itself is `meshfilter_sync::Mesh`.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use meshfilter_admin::{Admin, ServerLimits};
use meshfilter_api::MeshClient;
use meshfilter_filter_runtime::Hook;
use meshfilter_sync::{
    Mesh, MeshHandle, MeshOptions, RemoteOptions, ResolverConfig, SyncMetrics, WriterConfig,
};

use crate::cli::MeshArgs;
use crate::config::MeshConfig;

pub fn run(args: &MeshArgs) -> anyhow::Result<ExitCode> {
    let config = MeshConfig::load(&args.config)?;
    if args.check {
        return super::serve::checked(&config.filters, config.locality(), "mesh");
    }
    super::serve::runtime()?.block_on(serve(config, args.drain_grace))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: MeshConfig, drain_grace: Duration) -> anyhow::Result<()> {
    let cancel = super::serve::shutdown_on_signal();
    let (runtime, mut registry, _watch) =
        super::serve::load_filters(&config.filters, config.locality())?;
    let metrics = SyncMetrics::default();
    metrics.register(&mut registry);
    let mut options = MeshOptions::new(
        config.cluster.validated()?,
        config.local_etcd.clone(),
        config.clusters_dir.clone(),
    );
    options.drain_grace = drain_grace;
    options.heartbeat = config.heartbeat;
    options.lock_ttl = config.sync.lock_ttl;
    options.writer = WriterConfig {
        lease_ttl: config.sync.lease_ttl,
        ..WriterConfig::default()
    };
    options.remote = RemoteOptions {
        shadow_import: config.filters.shadow.contains(&Hook::Import),
        config_enforce_period: config.sync.config_enforce_period,
        ..RemoteOptions::default()
    };
    options.resolver = ResolverConfig {
        pin_ttl: config.resolve.pin_ttl,
        negative_ttl: config.resolve.negative_ttl,
        per_second: config.resolve.per_second,
        per_client_per_second: config.resolve.per_client_per_second,
        ..ResolverConfig::default()
    };
    let mesh = Mesh::new(options, runtime, metrics);
    let handle = mesh.handle();
    let (ready, status) = (handle.clone(), handle.clone());
    let admin = Admin::new(registry, move || ready.ready(), move || status.status());
    let api = Router::new()
        .route("/resolve", get(resolve).post(resolve))
        .route("/explain", get(explain))
        .with_state(handle);
    let server = meshfilter_admin::bind_and_serve(
        config.listen,
        admin,
        api,
        ServerLimits::default(),
        cancel.clone(),
    )
    .await
    .with_context(|| format!("listen: {}", config.listen))?;
    mesh.run(cancel.clone()).await?;
    cancel.cancel();
    let _ = server.await;
    Ok(())
}

#[derive(Debug, serde::Deserialize)]
struct ResolveQuery {
    ip: IpAddr,
}

/// The node agent's on-demand lookup (`meshfilter_api::ResolveError` says which status
/// each refusal gets).
async fn resolve(
    State(mesh): State<MeshHandle>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<ResolveQuery>,
) -> (StatusCode, String) {
    match mesh.resolve(q.ip, Some(peer.ip())).await {
        Ok(r) => (
            StatusCode::OK,
            serde_json::to_string(&r).unwrap_or_default(),
        ),
        Err(e) => (
            StatusCode::from_u16(e.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            serde_json::to_string(&e).unwrap_or_default(),
        ),
    }
}

#[derive(Debug, serde::Deserialize)]
struct ExplainQuery {
    cluster: String,
    ip: String,
}

async fn explain(
    State(mesh): State<MeshHandle>,
    Query(q): Query<ExplainQuery>,
) -> (StatusCode, String) {
    match mesh.explain(&q.cluster, &q.ip).await {
        Ok(e) => (
            StatusCode::OK,
            serde_json::to_string_pretty(&e).unwrap_or_default(),
        ),
        Err(e) => (StatusCode::NOT_FOUND, e),
    }
}

/// `meshfilter explain <cluster>/<ip>`: why an endpoint is (not) in this cluster's cache.
pub fn print_explain(addr: &str, target: &str) -> anyhow::Result<ExitCode> {
    let Some((cluster, ip)) = target.split_once('/') else {
        anyhow::bail!("expected <cluster>/<ip>, got {target:?}");
    };
    let client = MeshClient::new(addr, Duration::from_secs(5));
    match client.explain(cluster, ip) {
        Ok(e) => {
            println!("{}", serde_json::to_string_pretty(&e)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(meshfilter_api::ApiError::Unexpected { message, .. }) => {
            println!("{message}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// `meshfilter status`: fetches `/status` and prints one line per remote cluster.
pub fn print_status(addr: &str, json: bool) -> anyhow::Result<ExitCode> {
    let status = MeshClient::new(addr, Duration::from_secs(5)).status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "cluster {}  {}  filter generation {}  leases {}",
        status.cluster,
        if status.leader { "leader" } else { "standby" },
        status.filters.generation,
        status.writer.leases.len()
    );
    let rollout = &status.filters.rollout;
    if let Some(c) = &rollout.candidate {
        println!(
            "canary: generation {} decides {}% of endpoints (stable {}); {} decisions, {} failed, {} changed; promoted in {}s",
            c.generation,
            c.canary_percent,
            rollout.stable_generation,
            c.decisions,
            c.failures,
            c.changed,
            c.promote_in_seconds
        );
    }
    if let Some(r) = &rollout.last_rollback {
        println!(
            "last rollback: generation {} ({}) rolled back: {}",
            r.generation,
            r.modules.join(", "),
            r.reason
        );
    }
    if status.remotes.iter().any(|r| r.endpoints.shadow) {
        println!(
            "import hook in SHADOW mode: FILTERED counts what it would remove; everything is mirrored"
        );
    }
    println!(
        "{:<20} {:<10} {:<7} {:>9} {:>9} {:>8} {:>8}  LAST ERROR",
        "REMOTE", "CONNECTED", "SYNCED", "MIRRORED", "FILTERED", "INVALID", "RETRIES"
    );
    for r in &status.remotes {
        let filtered: usize = r.endpoints.skipped.values().sum();
        let retries: u64 =
            r.resources.values().map(|s| s.retries).sum::<u64>() + r.connect_failures;
        let waiting = r
            .resources
            .values()
            .find_map(|s| s.waiting_for.as_deref())
            .map(|k| format!("waiting for the remote's canary {k}"));
        println!(
            "{:<20} {:<10} {:<7} {:>9} {:>9} {:>8} {:>8}  {}",
            r.cluster,
            r.connected,
            r.synced,
            r.endpoints.kept,
            filtered,
            r.endpoints.invalid,
            retries,
            r.last_error
                .as_deref()
                .or(waiting.as_deref())
                .unwrap_or("-"),
        );
        for (reason, n) in &r.endpoints.skipped {
            println!("{:<20}   filtered {n}: {reason}", "");
        }
        for (resource, s) in &r.resources {
            for (why, n) in &s.refused {
                println!("{:<20}   {resource}: {n} refused ({why})", "");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
