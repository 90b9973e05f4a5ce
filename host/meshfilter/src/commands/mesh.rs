//! `meshfilter mesh`: a drop-in kvstoremesh with consumer-side filtering.
//!
//! Mirrors every remote cluster named in the clustermesh directory into the local etcd
//! under `cilium/cache/...`, asking the import hook about every endpoint, and serves
//! `/metrics`, `/healthz`, `/readyz` and `/status`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use meshfilter_cilium::ClusterName;
use meshfilter_cilium::keys::{Resource, cluster_config_key, synced_prefix};
use meshfilter_etcd::{Backoff, EtcdConfig};
use meshfilter_filter_runtime::{FilterRuntime, GenerationInfo};
use meshfilter_sync::{
    LeaderLock, RemoteCluster, RemoteOptions, RemoteStatus, RemoteStatusHandle, Resolver,
    ResolverConfig, SyncMetrics, TargetWriter, WriterConfig,
};
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::cli::MeshArgs;
use crate::config::MeshConfig;

/// Cilium's kvstoremesh leader lock, so meshfilter and kvstoremesh replicas exclude each
/// other too.
const KVSTOREMESH_LOCK: &str = meshfilter_cilium::keys::KVSTOREMESH_LOCK_KEY;

/// Cilium's heartbeat key.
const HEARTBEAT: &str = meshfilter_cilium::keys::HEARTBEAT_KEY;

/// How often the clustermesh directory is rescanned for added or removed clusters.
const RESCAN: Duration = Duration::from_secs(5);

/// Everything `/status` reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    /// This cluster.
    pub cluster: String,
    /// The filter generation serving decisions.
    pub filters: serde_json::Value,
    /// Per remote cluster.
    pub remotes: Vec<serde_json::Value>,
    /// On-demand resolution counters.
    #[serde(default)]
    pub resolver: serde_json::Value,
}

struct Shared {
    cluster: String,
    runtime: Arc<FilterRuntime>,
    remotes: Mutex<BTreeMap<String, RunningRemote>>,
    registry: Registry,
    /// Whether this replica holds the leader lock.
    leader: std::sync::atomic::AtomicBool,
    resolver: std::sync::OnceLock<Arc<Resolver>>,
    metrics: super::mesh_metrics::MeshMetrics,
    sync_metrics: SyncMetrics,
}

struct RunningRemote {
    handle: RemoteStatusHandle,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub fn run(args: &MeshArgs) -> anyhow::Result<ExitCode> {
    let config = MeshConfig::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("meshfilter")
        .build()?;
    rt.block_on(serve(config, args.drain_grace))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: MeshConfig, drain_grace: Duration) -> anyhow::Result<()> {
    let cancel = super::serve::shutdown_on_signal();
    let (runtime, mut registry, _watch) =
        super::serve::load_filters(&config.filters, config.locality())?;
    let mesh_metrics = super::mesh_metrics::MeshMetrics::default();
    mesh_metrics.register(&mut registry);
    let sync_metrics = SyncMetrics::default();
    sync_metrics.register(&mut registry);

    let local = connect_with_retry(&config.local_etcd, "local", &cancel).await?;
    let shared = Arc::new(Shared {
        cluster: config.cluster.name.clone(),
        runtime: runtime.clone(),
        remotes: Mutex::new(BTreeMap::new()),
        registry,
        leader: std::sync::atomic::AtomicBool::new(false),
        resolver: std::sync::OnceLock::new(),
        metrics: mesh_metrics,
        sync_metrics: sync_metrics.clone(),
    });

    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/status", get(status))
        .route("/explain", get(explain))
        .route("/resolve", get(resolve).post(resolve))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen: {}", config.listen))?;
    tracing::info!(listen = %config.listen, "serving /metrics /healthz /readyz /status");
    let server_cancel = cancel.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(server_cancel.cancelled_owned())
        .await;
    });

    // Only the replica holding Cilium's kvstoremesh lock writes the cache.
    let Some(lock) =
        LeaderLock::acquire(&local, KVSTOREMESH_LOCK, config.sync.lock_ttl, &cancel).await?
    else {
        let _ = server.await;
        return Ok(());
    };
    shared
        .leader
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let lost = lock.lost();
    let lock_cancel = cancel.clone();
    tokio::spawn(async move {
        lost.cancelled().await;
        lock_cancel.cancel();
    });
    let writer = TargetWriter::new(
        local.clone(),
        "local",
        WriterConfig {
            lease_ttl: config.sync.lease_ttl,
            ..WriterConfig::default()
        },
        Some(lock.fence()),
        sync_metrics.clone(),
        cancel.clone(),
    );
    // A write refused by the fence means another replica leads now: stop.
    let fenced = writer.fenced();
    let fence_cancel = cancel.clone();
    tokio::spawn(async move {
        fenced.cancelled().await;
        fence_cancel.cancel();
    });
    let remotes_for_resolver = shared.clone();
    let resolver = Resolver::new(
        Arc::new(move || {
            remotes_for_resolver
                .remotes
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(n, r)| Some((ClusterName::new(n.clone()).ok()?, r.handle.clone())))
                .collect()
        }),
        writer.clone(),
        ResolverConfig {
            pin_ttl: config.resolve.pin_ttl,
            negative_ttl: config.resolve.negative_ttl,
            per_second: config.resolve.per_second,
            ..ResolverConfig::default()
        },
    );
    let _ = shared.resolver.set(resolver.clone());
    let expiry_cancel = cancel.clone();
    let period = (config.resolve.pin_ttl / 4).max(Duration::from_millis(100));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = expiry_cancel.cancelled() => return,
                _ = tokio::time::sleep(period) => resolver.expire(),
            }
        }
    });
    if config.heartbeat {
        tokio::spawn(heartbeat(writer.clone(), cancel.clone()));
    }
    loop {
        reconcile_remotes(
            &config,
            &shared,
            &writer,
            &runtime,
            &local,
            drain_grace,
            &cancel,
        )
        .await;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(RESCAN) => {}
        }
    }
    let running: Vec<RunningRemote> = std::mem::take(&mut *shared.remotes.lock().unwrap())
        .into_values()
        .collect();
    for r in running {
        r.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), r.task).await;
    }
    lock.release().await;
    let _ = server.await;
    Ok(())
}

/// Writes `cilium/.heartbeat` every minute under the writer's lease, as kvstoremesh does
/// with `--enable-heartbeat`: agents watch it to notice a cache that stopped moving.
async fn heartbeat(writer: Arc<TargetWriter>, cancel: CancellationToken) {
    let mut lease = 0;
    loop {
        match writer.write_canary(HEARTBEAT, lease).await {
            Ok(now_on) => lease = now_on,
            Err(e) => tracing::warn!(error = %e, "cannot write the heartbeat"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

pub(super) async fn connect_with_retry(
    etcd: &EtcdConfig,
    name: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<etcd_client::Client> {
    match etcd
        .connect_with_retry(name, &mut Backoff::default(), cancel)
        .await
    {
        Some(client) => Ok(client),
        None => anyhow::bail!("shut down before the {name} etcd answered"),
    }
}

/// Starts clusters whose connection file appeared, drains clusters whose file is gone.
async fn reconcile_remotes(
    config: &MeshConfig,
    shared: &Arc<Shared>,
    writer: &Arc<TargetWriter>,
    runtime: &Arc<FilterRuntime>,
    local: &etcd_client::Client,
    drain_grace: Duration,
    cancel: &CancellationToken,
) {
    let wanted = match scan_clusters(&config.clusters_dir, &config.cluster.name) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(dir = %config.clusters_dir.display(), error = %e, "cannot read the clustermesh directory");
            return;
        }
    };
    let mut remotes = shared.remotes.lock().unwrap();
    for (name, etcd) in &wanted {
        if remotes.contains_key(name.as_str()) {
            continue;
        }
        tracing::info!(cluster = %name, endpoints = ?etcd.endpoints, "connecting remote cluster");
        let shadow = config
            .filters
            .shadow
            .contains(&meshfilter_filter_runtime::Hook::Import);
        let remote = RemoteCluster::new(
            name.clone(),
            etcd.clone(),
            writer.clone(),
            runtime.clone(),
            RemoteOptions {
                shadow_import: shadow,
                config_enforce_period: config.sync.config_enforce_period,
                ..RemoteOptions::default()
            },
            shared.sync_metrics.clone(),
        );
        let handle = remote.status_handle();
        let child = cancel.child_token();
        let task = tokio::spawn(remote.run(child.clone()));
        remotes.insert(
            name.to_string(),
            RunningRemote {
                handle,
                cancel: child,
                task,
            },
        );
    }
    let gone: Vec<String> = remotes
        .keys()
        .filter(|k| !wanted.iter().any(|(n, _)| n.as_str() == *k))
        .cloned()
        .collect();
    for name in gone {
        if let Some(r) = remotes.remove(&name) {
            r.cancel.cancel();
            let local = local.clone();
            tokio::spawn(drain(name, local, drain_grace));
        }
    }
}

/// Removes a cluster the way Cilium drains it: its config first (new agents stop
/// connecting), then after a grace period its canaries and cached entries.
async fn drain(name: String, local: etcd_client::Client, grace: Duration) {
    let Ok(cluster) = ClusterName::new(name.clone()) else {
        return;
    };
    tracing::info!(cluster = %name, grace = ?grace, "remote cluster removed: draining");
    let mut kv = local.kv_client();
    let _ = kv.delete(cluster_config_key(&cluster), None).await;
    tokio::time::sleep(grace).await;
    let mut prefixes = vec![synced_prefix(&cluster)];
    prefixes.extend(Resource::ALL.iter().map(|r| r.cache_prefix(&cluster)));
    for prefix in prefixes {
        let options = etcd_client::DeleteOptions::new().with_prefix();
        if let Err(e) = kv.delete(prefix.as_bytes(), Some(options)).await {
            tracing::warn!(cluster = %name, prefix, error = %e, "drain failed");
        }
    }
    tracing::info!(cluster = %name, "remote cluster drained");
}

/// Cluster connection files: one regular file per cluster, named after it.
fn scan_clusters(dir: &Path, own: &str) -> std::io::Result<Vec<(ClusterName, EtcdConfig)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == own || !entry.path().is_file() {
            continue;
        }
        let Ok(cluster) = ClusterName::new(name.clone()) else {
            tracing::warn!(file = %name, "ignoring a file that is not named after a valid cluster");
            continue;
        };
        match EtcdConfig::from_file(&entry.path()) {
            Ok(config) => out.push((cluster, config)),
            Err(e) => {
                tracing::warn!(cluster = %name, error = %e, "ignoring an invalid cluster file")
            }
        }
    }
    out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    Ok(out)
}

fn snapshot(shared: &Shared) -> MeshStatus {
    let remotes: Vec<RemoteStatus> = shared
        .remotes
        .lock()
        .unwrap()
        .values()
        .map(|r| r.handle.snapshot())
        .collect();
    let info: GenerationInfo = shared.runtime.info();
    MeshStatus {
        cluster: shared.cluster.clone(),
        filters: serde_json::to_value(info).unwrap_or_default(),
        resolver: shared
            .resolver
            .get()
            .and_then(|r| serde_json::to_value(r.stats()).ok())
            .unwrap_or_default(),
        remotes: remotes
            .into_iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect(),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> axum::Json<MeshStatus> {
    axum::Json(snapshot(&shared))
}

#[derive(Debug, serde::Deserialize)]
struct ResolveQuery {
    ip: std::net::IpAddr,
}

/// The node agent's on-demand lookup: 200 with the entry once it is in the local cache,
/// 404 when no remote has it, 429 when rate-limited, 503 when not leader.
async fn resolve(
    State(shared): State<Arc<Shared>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    axum::extract::Query(q): axum::extract::Query<ResolveQuery>,
) -> (StatusCode, String) {
    let Some(resolver) = shared.resolver.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "standby: not resolving".into(),
        );
    };
    match resolver.resolve(q.ip, Some(peer.ip())).await {
        Ok(r) => (
            StatusCode::OK,
            serde_json::to_string(&r).unwrap_or_default(),
        ),
        Err(e) => {
            let code = match e {
                meshfilter_sync::ResolveError::NotFound { .. }
                | meshfilter_sync::ResolveError::NegativeCached { .. } => StatusCode::NOT_FOUND,
                meshfilter_sync::ResolveError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                meshfilter_sync::ResolveError::NotInstalled { .. } => StatusCode::GATEWAY_TIMEOUT,
                meshfilter_sync::ResolveError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (code, serde_json::to_string(&e).unwrap_or_default())
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct ExplainQuery {
    cluster: String,
    ip: String,
}

async fn explain(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(q): axum::extract::Query<ExplainQuery>,
) -> (StatusCode, String) {
    let handle = shared
        .remotes
        .lock()
        .unwrap()
        .get(&q.cluster)
        .map(|r| r.handle.clone());
    let Some(handle) = handle else {
        return (
            StatusCode::NOT_FOUND,
            format!("no remote cluster {:?}", q.cluster),
        );
    };
    match handle.explain(&q.ip).await {
        Ok(e) => (
            StatusCode::OK,
            serde_json::to_string_pretty(&e).unwrap_or_default(),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    if !shared.leader.load(std::sync::atomic::Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "standby: waiting for the leader lock".into(),
        );
    }
    let remotes = shared.remotes.lock().unwrap();
    let pending: Vec<&String> = remotes
        .iter()
        .filter(|(_, r)| !r.handle.snapshot().synced)
        .map(|(n, _)| n)
        .collect();
    if pending.is_empty() {
        (StatusCode::OK, "ready".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not synced yet: {pending:?}"),
        )
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    shared.metrics.refresh(&snapshot(&shared));
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &shared.registry) {
        Ok(()) => (StatusCode::OK, out),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `meshfilter explain <cluster>/<ip>`: why an endpoint is (not) in this cluster's cache.
pub fn print_explain(addr: &str, target: &str) -> anyhow::Result<ExitCode> {
    let Some((cluster, ip)) = target.split_once('/') else {
        anyhow::bail!("expected <cluster>/<ip>, got {target:?}");
    };
    let url = format!("http://{addr}/explain?cluster={cluster}&ip={ip}");
    match ureq::get(&url).timeout(Duration::from_secs(5)).call() {
        Ok(resp) => {
            println!("{}", resp.into_string()?);
            Ok(ExitCode::SUCCESS)
        }
        Err(ureq::Error::Status(_, resp)) => {
            println!("{}", resp.into_string()?);
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e).with_context(|| format!("GET {url}")),
    }
}

/// `meshfilter status`: fetches `/status` and prints one line per remote cluster.
pub fn print_status(addr: &str, json: bool) -> anyhow::Result<ExitCode> {
    let url = format!("http://{addr}/status");
    let body = ureq::get(&url)
        .timeout(Duration::from_secs(5))
        .call()
        .with_context(|| format!("GET {url}"))?
        .into_string()?;
    if json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let status: MeshStatus = serde_json::from_str(&body).context("parsing /status")?;
    println!(
        "cluster {}  filter generation {}",
        status.cluster, status.filters["generation"]
    );
    if status
        .remotes
        .iter()
        .any(|r| r["endpoints"]["shadow"] == true)
    {
        println!(
            "import hook in SHADOW mode: FILTERED counts what it would remove; everything is mirrored"
        );
    }
    println!(
        "{:<20} {:<10} {:<7} {:>9} {:>9} {:>8} {:>8}  LAST ERROR",
        "REMOTE", "CONNECTED", "SYNCED", "MIRRORED", "FILTERED", "INVALID", "RETRIES"
    );
    for r in &status.remotes {
        let filtered: u64 = r["endpoints"]["skipped"]
            .as_object()
            .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0);
        let retries: u64 = r["resources"]
            .as_object()
            .map(|m| m.values().filter_map(|v| v["retries"].as_u64()).sum())
            .unwrap_or(0)
            + r["connectFailures"].as_u64().unwrap_or(0);
        println!(
            "{:<20} {:<10} {:<7} {:>9} {:>9} {:>8} {:>8}  {}",
            r["cluster"].as_str().unwrap_or("?"),
            r["connected"].to_string(),
            r["synced"].to_string(),
            r["endpoints"]["kept"].to_string(),
            filtered,
            r["endpoints"]["invalid"].to_string(),
            retries,
            r["lastError"].as_str().unwrap_or("-"),
        );
        if let Some(skipped) = r["endpoints"]["skipped"].as_object() {
            for (reason, n) in skipped {
                println!("{:<20}   filtered {n}: {reason}", "");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
