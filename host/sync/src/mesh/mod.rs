//! The mesh role: meshfilter as kvstoremesh, mirroring every remote cluster of a
//! clustermesh directory into the local etcd's `cilium/cache/...`, through the import hook.
//!
//! Only the replica that holds Cilium's kvstoremesh lock (`cilium/kvstoremesh-lock` in the
//! local etcd) writes, and every write it makes is fenced by that lock: a leader paused past
//! the lock's TTL finds its writes refused when it wakes up, stops leading and waits for the
//! lock again as a standby. While leading it:
//! - writes every key under leases it keeps alive, taking over keys an earlier leader (or
//!   kvstoremesh) left on other leases ([`TargetWriter`]);
//! - runs one [`RemoteCluster`] per connection file, starting clusters whose file appears
//!   and draining clusters whose file is removed the way Cilium does (cluster config first,
//!   then after a grace period the canaries and cached entries);
//! - writes `cilium/.heartbeat` every minute (kvstoremesh's `--enable-heartbeat`);
//! - serves on-demand resolution ([`Resolver`]) and expires its pins.
//!
//! [`MeshHandle`] answers `/status`, `/readyz`, `/resolve` and `/explain` from any task.

mod remotes;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meshfilter_api::{FilterSummary, MeshStatus, ResolveError, Resolved};
use meshfilter_cilium::ClusterName;
use meshfilter_cilium::keys::{HEARTBEAT_KEY, KVSTOREMESH_LOCK_KEY};
use meshfilter_etcd::{Backoff, EtcdConfig};
use meshfilter_filter_runtime::FilterRuntime;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::SyncError;
use crate::lock::LeaderLock;
use crate::metrics::SyncMetrics;
use crate::mirrors::Explanation;
use crate::reflector::{MAX_ERROR_CHARS, bounded};
use crate::remote::{RemoteOptions, RemoteStatusHandle};
use crate::resolve::{Resolver, ResolverConfig};
use crate::writer::{TargetWriter, WriterConfig};

pub use remotes::drain_cluster;

/// How the mesh role runs.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// This cluster (its own file in the clustermesh directory is skipped).
    pub cluster: ClusterName,
    /// The local etcd holding the cache (needs write access).
    pub local: EtcdConfig,
    /// Cilium's clustermesh directory: one connection file per remote cluster.
    pub clusters_dir: PathBuf,
    /// How often the directory is read again for added or removed clusters.
    pub rescan: Duration,
    /// How long a removed cluster's entries stay after its config is deleted.
    pub drain_grace: Duration,
    /// Write `cilium/.heartbeat` every minute.
    pub heartbeat: bool,
    /// Lease TTL and batching of the cache writer.
    pub writer: WriterConfig,
    /// TTL of the leader lock's lease.
    pub lock_ttl: Duration,
    /// How every remote is mirrored.
    pub remote: RemoteOptions,
    /// On-demand resolution limits.
    pub resolver: ResolverConfig,
}

impl MeshOptions {
    /// Cilium's defaults for `cluster`, reading `clusters_dir` and writing `local`.
    pub fn new(cluster: ClusterName, local: EtcdConfig, clusters_dir: PathBuf) -> MeshOptions {
        MeshOptions {
            cluster,
            local,
            clusters_dir,
            rescan: Duration::from_secs(5),
            drain_grace: Duration::from_secs(30),
            heartbeat: true,
            writer: WriterConfig::default(),
            lock_ttl: Duration::from_secs(25),
            remote: RemoteOptions::default(),
            resolver: ResolverConfig::default(),
        }
    }
}

/// One remote while it runs.
struct Running {
    handle: RemoteStatusHandle,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What the role shares with its handles.
struct State {
    cluster: ClusterName,
    runtime: Arc<FilterRuntime>,
    leader: AtomicBool,
    remotes: Mutex<BTreeMap<ClusterName, Running>>,
    resolver: Mutex<Option<Arc<Resolver>>>,
    writer: Mutex<Option<Arc<TargetWriter>>>,
}

/// The mesh role.
pub struct Mesh {
    options: MeshOptions,
    metrics: SyncMetrics,
    state: Arc<State>,
}

impl Mesh {
    /// The role for `options`, deciding with `runtime`, recording into `metrics`.
    pub fn new(options: MeshOptions, runtime: Arc<FilterRuntime>, metrics: SyncMetrics) -> Mesh {
        let state = Arc::new(State {
            cluster: options.cluster.clone(),
            runtime,
            leader: AtomicBool::new(false),
            remotes: Mutex::default(),
            resolver: Mutex::default(),
            writer: Mutex::default(),
        });
        Mesh {
            options,
            metrics,
            state,
        }
    }

    /// Answers status, readiness and API calls while the role runs.
    pub fn handle(&self) -> MeshHandle {
        MeshHandle {
            state: self.state.clone(),
        }
    }

    /// Runs until `cancel`: waits for the leader lock, leads until cancelled or until the
    /// lock is lost (then waits for it again), and releases it on the way out so a
    /// standby takes over at once. Fails only if the local etcd never answered before
    /// `cancel`.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), SyncError> {
        let span = tracing::info_span!("mesh", cluster = %self.options.cluster);
        self.run_inner(cancel).instrument(span).await
    }

    async fn run_inner(self, cancel: CancellationToken) -> Result<(), SyncError> {
        let mut backoff = Backoff::default();
        let Some(local) = self
            .options
            .local
            .connect_with_retry("local", &mut backoff, &cancel)
            .await
        else {
            return Ok(());
        };
        while !cancel.is_cancelled() {
            let lock = match LeaderLock::acquire(
                &local,
                KVSTOREMESH_LOCK_KEY,
                self.options.lock_ttl,
                &cancel,
            )
            .await
            {
                Ok(Some(lock)) => lock,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take part in the leader election; retrying");
                    if !backoff.wait(&cancel).await {
                        break;
                    }
                    continue;
                }
            };
            backoff.reset();
            let ended = self.lead(&local, &lock, &cancel).await;
            if cancel.is_cancelled() {
                lock.release().await;
                break;
            }
            tracing::warn!(
                why = ended,
                "no longer leading: waiting for the leader lock again"
            );
        }
        Ok(())
    }

    /// Leads until `cancel`, a lost lock or a fenced write; says which.
    async fn lead(
        &self,
        local: &etcd_client::Client,
        lock: &LeaderLock,
        cancel: &CancellationToken,
    ) -> &'static str {
        tracing::info!("leading: writing the cache");
        let leading = cancel.child_token();
        let writer = TargetWriter::new(
            local.clone(),
            "local",
            self.options.writer.clone(),
            Some(lock.fence()),
            self.metrics.clone(),
            leading.clone(),
        );
        let state = self.state.clone();
        let remotes_for_resolver = state.clone();
        let resolver = Resolver::new(
            Arc::new(move || {
                remotes_for_resolver
                    .remotes
                    .lock()
                    .iter()
                    .map(|(name, r)| (name.clone(), r.handle.clone()))
                    .collect()
            }),
            writer.clone(),
            self.options.resolver.clone(),
            self.metrics.clone(),
        );
        *state.writer.lock() = Some(writer.clone());
        *state.resolver.lock() = Some(resolver.clone());
        state.leader.store(true, Ordering::Relaxed);

        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(expire_pins(resolver, leading.clone()));
        if self.options.heartbeat {
            tasks.spawn(heartbeat(writer.clone(), leading.clone()));
        }
        let mut remotes = remotes::RemoteSet {
            options: &self.options,
            state: &state,
            writer: &writer,
            metrics: &self.metrics,
            drains: tokio::task::JoinSet::new(),
        };
        let lost = lock.lost();
        let fenced = writer.fenced();
        let why = loop {
            remotes.reconcile(&leading);
            tokio::select! {
                _ = cancel.cancelled() => break "shutting down",
                _ = lost.cancelled() => break "the leader lock's lease was lost",
                _ = fenced.cancelled() => break "a write was refused by the leader fence",
                _ = tokio::time::sleep(self.options.rescan) => {}
            }
        };
        state.leader.store(false, Ordering::Relaxed);
        *state.resolver.lock() = None;
        leading.cancel();
        remotes.stop_all().await;
        while tasks.join_next().await.is_some() {}
        *state.writer.lock() = None;
        why
    }
}

/// Expires pins that were not renewed, a few times per pin TTL.
async fn expire_pins(resolver: Arc<Resolver>, cancel: CancellationToken) {
    let period = (resolver.pin_ttl() / 4).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => resolver.expire(),
        }
    }
}

/// How often the heartbeat is written (Cilium's `HeartbeatWriteInterval`).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);

/// Writes `cilium/.heartbeat` every minute under the writer's lease, as kvstoremesh does
/// with `--enable-heartbeat`: agents watch it to notice a cache that stopped moving. Like
/// every key of the cache it is written again as soon as its lease is lost, not a minute
/// later: until then the key is simply gone.
async fn heartbeat(writer: Arc<TargetWriter>, cancel: CancellationToken) {
    let mut lost = writer.lease_lost();
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            changed = lost.changed() => {
                if changed.is_err() {
                    return;
                }
                if writer.live_leases().contains(&lease) {
                    continue;
                }
            }
        }
        match writer.write_canary(HEARTBEAT_KEY, lease).await {
            Ok(now_on) => lease = now_on,
            Err(e) => tracing::warn!(error = %e, "cannot write the heartbeat"),
        }
    }
}

/// Reads the running mesh: status, readiness, resolution, explanations.
#[derive(Clone)]
pub struct MeshHandle {
    state: Arc<State>,
}

impl std::fmt::Debug for MeshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshHandle")
            .field("cluster", &self.state.cluster)
            .finish_non_exhaustive()
    }
}

impl MeshHandle {
    /// `/status`.
    pub fn status(&self) -> MeshStatus {
        let state = &self.state;
        let info = state.runtime.info();
        let filters = FilterSummary {
            generation: info.generation,
            loaded_at_unix: info.loaded_at_unix,
            modules: info
                .modules
                .iter()
                .map(|m| (m.file.clone(), m.sha256.clone()))
                .collect(),
            chains: info
                .chains
                .iter()
                .map(|(hook, chain)| (hook.to_string(), chain.clone()))
                .collect(),
            last_reload_error: info.last_reload_error.map(|e| bounded(e, MAX_ERROR_CHARS)),
            rollout: info.rollout,
        };
        let writer = state
            .writer
            .lock()
            .as_ref()
            .map(|w| w.status())
            .unwrap_or_default();
        MeshStatus {
            cluster: state.cluster.to_string(),
            leader: state.leader.load(Ordering::Relaxed),
            filters,
            remotes: state
                .remotes
                .lock()
                .values()
                .map(|r| r.handle.snapshot())
                .collect(),
            resolver: state
                .resolver
                .lock()
                .as_ref()
                .map(|r| r.counters())
                .unwrap_or_default(),
            writer,
        }
    }

    /// `/readyz`: the leader is ready once every remote has synced; a standby never is
    /// (only the leader writes, and a Service should send clients to it).
    pub fn ready(&self) -> Result<(), String> {
        if !self.state.leader.load(Ordering::Relaxed) {
            return Err("standby: waiting for the leader lock".into());
        }
        let pending: Vec<String> = self
            .state
            .remotes
            .lock()
            .iter()
            .filter(|(_, r)| !r.handle.snapshot().synced)
            .map(|(name, _)| name.to_string())
            .collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(format!("not synced yet: {}", pending.join(", ")))
        }
    }

    /// `/resolve`: finds `ip` across the mesh for `client`.
    pub async fn resolve(
        &self,
        ip: IpAddr,
        client: Option<IpAddr>,
    ) -> Result<Resolved, ResolveError> {
        let resolver = self.state.resolver.lock().clone();
        match resolver {
            Some(resolver) => resolver.resolve(ip, client).await,
            None => Err(ResolveError::Standby),
        }
    }

    /// `/explain`: why the endpoint `ip` of `cluster` is or is not in the cache.
    pub async fn explain(&self, cluster: &str, ip: &str) -> Result<Explanation, String> {
        let handle = ClusterName::new(cluster.to_string()).ok().and_then(|name| {
            self.state
                .remotes
                .lock()
                .get(&name)
                .map(|r| r.handle.clone())
        });
        let Some(handle) = handle else {
            return Err(format!("no remote cluster {cluster:?}"));
        };
        handle.explain(ip).await.map_err(|e| e.to_string())
    }
}
