//! The node agent: miss events in, installed ipcache entries out.
//!
//! Per event: the negative cache and the in-flight set drop repeats (the kernel already
//! deduplicates per window; this catches the rest), the filter engine's miss hook decides
//! whether and where to look (on a blocking thread: a module runs until its deadline), the
//! resolvers look, and the result is installed: into the standalone ipcache directly
//! (reported as installed only once it is in the map), or (cilium mode) it is already in
//! the local etcd cache, where the mesh wrote it and the cilium-agent picks it up.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshfilter_filter_runtime::{FilterRuntime, MissDecision, MissInput};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::datapath::{Attachment, CiliumMapStatus, Datapath, DatapathStats, IpcacheMode};
use crate::error::{InstallError, ResolveError};
use crate::events::{Miss, ReaderStats, monotonic_ns, read_events};
use crate::metrics::NodeMetrics;
use crate::resolve::Resolvers;
use crate::view::{MeshView, ViewStatus};

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name (the miss hook's `local-node`).
    pub node_name: String,
    /// Events waiting for a resolver at most; more are dropped and counted.
    pub queue: usize,
    /// Resolutions in flight at most.
    pub concurrency: usize,
    /// How long an address found nowhere is not looked up again (the miss hook's own
    /// TTL wins for addresses it ignores).
    pub negative_ttl: Duration,
    /// How long to wait before retrying when the resolver was busy or unreachable.
    pub retry_after: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node_name: "node".into(),
            queue: 4096,
            concurrency: 64,
            negative_ttl: Duration::from_secs(5),
            retry_after: Duration::from_millis(500),
        }
    }
}

/// The miss hook: decides whether and from which clusters a missed address is resolved.
/// Production uses the filter engine's ([`FilterRuntime`]); the trait lets the agent's
/// handling of a slow decision be tested with a hook of known cost.
pub trait MissHook: Send + Sync + 'static {
    /// The generation deciding now: an ignore decision lasts until it changes.
    fn generation(&self) -> u64;

    /// Decides `input`, returning the decision and the generation that made it.
    /// CPU-bound and possibly slow (a module runs until its deadline): the agent calls it
    /// on a blocking thread, never on an async worker.
    fn decide(&self, input: &Arc<MissInput>) -> (MissDecision, u64);
}

impl MissHook for FilterRuntime {
    fn generation(&self) -> u64 {
        self.current().number
    }

    fn decide(&self, input: &Arc<MissInput>) -> (MissDecision, u64) {
        let verdict = FilterRuntime::decide_miss(self, input);
        (verdict.decision, verdict.generation)
    }
}

/// What happened to one miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Resolved and installed.
    Installed,
    /// Found nowhere.
    NotFound,
    /// The miss hook said not to resolve.
    Ignored,
    /// Skipped: negative-cached.
    NegativeCached,
    /// Skipped: already being resolved.
    Deduplicated,
    /// The resolver was busy or unreachable, or the miss hook could not run.
    Failed,
    /// Resolved, but the standalone ipcache is full: not installed.
    MapFull,
    /// Resolved, but writing it into the standalone ipcache failed: not installed.
    InstallFailed,
}

impl Outcome {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Installed => "installed",
            Outcome::NotFound => "not-found",
            Outcome::Ignored => "ignored",
            Outcome::NegativeCached => "negative-cached",
            Outcome::Deduplicated => "deduplicated",
            Outcome::Failed => "failed",
            Outcome::MapFull => "map-full",
            Outcome::InstallFailed => "install-failed",
        }
    }
}

/// One recent resolution, for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentMiss {
    /// The address.
    pub address: IpAddr,
    /// What happened.
    pub outcome: Outcome,
    /// Owning cluster when resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Identity installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
    /// Where it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'static str>,
    /// Kernel miss to entry installed, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// The miss hook's reason or the error.
    pub reason: String,
}

/// Everything `/status` shows.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Standalone or cilium.
    pub mode: String,
    /// Kernel program ID.
    pub program_id: u32,
    /// Kernel ID of the ipcache map the program reads.
    pub ipcache_map_id: u32,
    /// Cilium mode: the pinned map followed, its recreations and gaps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cilium_map: Option<CiliumMapStatus>,
    /// Interfaces attached.
    pub attachments: Vec<Attachment>,
    /// Program counters.
    pub datapath: BTreeMap<&'static str, u64>,
    /// Events read, dropped on a full queue, malformed.
    pub events: BTreeMap<&'static str, u64>,
    /// Outcomes so far.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Addresses negative-cached now.
    pub negative_cached: usize,
    /// Addresses being resolved now.
    pub in_flight: usize,
    /// Cluster names the miss hook returned beyond the known clusters (or repeated),
    /// ignored.
    pub miss_hook_clusters_dropped: u64,
    /// Miss-to-installed latency over the recent window, microseconds.
    pub latency_us: BTreeMap<&'static str, u64>,
    /// What the node knows about the mesh.
    pub view: ViewStatus,
    /// The last resolutions, newest last.
    pub recent: Vec<RecentMiss>,
}

const RECENT: usize = 256;
/// Miss-to-installed samples kept for the percentiles in `/status`.
const LATENCY_SAMPLES: usize = 8192;

/// The node agent.
pub struct NodeAgent {
    datapath: Arc<Datapath>,
    view: Arc<MeshView>,
    filters: Option<Arc<dyn MissHook>>,
    resolvers: Resolvers,
    config: AgentConfig,
    /// Until when an address is not looked up again, and, for an ignore decision of the
    /// miss hook, which filter generation made it (a reload ends such entries early).
    negative: Mutex<HashMap<IpAddr, (Instant, Option<u64>)>>,
    inflight: Mutex<HashSet<IpAddr>>,
    outcomes: Mutex<HashMap<Outcome, u64>>,
    recent: Mutex<VecDeque<RecentMiss>>,
    latencies: Mutex<VecDeque<u64>>,
    reader: Arc<ReaderStats>,
    clusters_dropped: AtomicU64,
    metrics: NodeMetrics,
}

impl std::fmt::Debug for NodeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAgent")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NodeAgent {
    /// An agent over a loaded datapath and its view. Without a miss hook (`filters`)
    /// every miss is resolved from every candidate cluster, owners first.
    pub fn new(
        datapath: Arc<Datapath>,
        view: Arc<MeshView>,
        filters: Option<Arc<dyn MissHook>>,
        resolvers: Resolvers,
        config: AgentConfig,
        metrics: NodeMetrics,
    ) -> Arc<NodeAgent> {
        Arc::new(NodeAgent {
            datapath,
            view,
            filters,
            resolvers,
            config,
            negative: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashSet::new()),
            outcomes: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            latencies: Mutex::new(VecDeque::with_capacity(LATENCY_SAMPLES)),
            reader: Arc::new(ReaderStats::default()),
            clusters_dropped: AtomicU64::new(0),
            metrics,
        })
    }

    /// Reads and resolves misses until cancelled; in cilium mode also follows Cilium's
    /// pin, so a map the cilium-agent recreates is read from then on.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> std::io::Result<()> {
        let Some(ring) = self.datapath.take_events() else {
            return Err(std::io::Error::other(
                "the miss event ring is already being read",
            ));
        };
        let (tx, mut rx) = mpsc::channel::<Miss>(self.config.queue.max(1));
        let reader = tokio::spawn(read_events(ring, tx, self.reader.clone(), cancel.clone()));
        let pin = tokio::spawn(self.datapath.clone().follow_cilium_pin(cancel.clone()));
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let sweep_every = Duration::from_secs(1);
        let mut sweep = tokio::time::interval(sweep_every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = sweep.tick() => self.sweep_negative(),
                miss = rx.recv() => {
                    let Some(miss) = miss else { break };
                    let Ok(permit) = permits.clone().acquire_owned().await else { break };
                    let agent = self.clone();
                    tokio::spawn(async move {
                        agent.handle(miss).await;
                        drop(permit);
                    });
                }
            }
        }
        // The reader and the pin follower stop on `cancel`; the loop above may have ended
        // on a closed queue instead.
        cancel.cancel();
        if let Err(e) = pin.await {
            tracing::warn!(error = %e, "following Cilium's pin ended abnormally");
        }
        match reader.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    /// Current status.
    pub fn status(&self) -> NodeStatus {
        let stats: DatapathStats = self.datapath.stats();
        let mut latencies: Vec<u64> = self.latencies.lock().iter().copied().collect();
        latencies.sort_unstable();
        let pct = |p: f64| -> u64 {
            if latencies.is_empty() {
                return 0;
            }
            let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            latencies[i.min(latencies.len() - 1)]
        };
        let mut latency_us = BTreeMap::new();
        if !latencies.is_empty() {
            latency_us.insert("p50", pct(0.50));
            latency_us.insert("p99", pct(0.99));
            latency_us.insert("max", *latencies.last().unwrap_or(&0));
            latency_us.insert("samples", latencies.len() as u64);
        }
        NodeStatus {
            mode: match self.datapath.mode() {
                IpcacheMode::Standalone => "standalone".into(),
                IpcacheMode::Cilium { .. } => "cilium".into(),
            },
            program_id: self.datapath.program_id(),
            ipcache_map_id: self.datapath.ipcache_id(),
            cilium_map: self.datapath.cilium_map(),
            attachments: self.datapath.attachments(),
            datapath: stats.counters.into_iter().collect(),
            events: BTreeMap::from([
                ("received", self.reader.received.load(Ordering::Relaxed)),
                (
                    "queueOverflow",
                    self.reader.overflow.load(Ordering::Relaxed),
                ),
                ("malformed", self.reader.malformed.load(Ordering::Relaxed)),
            ]),
            outcomes: self
                .outcomes
                .lock()
                .iter()
                .map(|(o, n)| (o.as_str(), *n))
                .collect(),
            negative_cached: self.negative_cached(),
            in_flight: self.in_flight(),
            miss_hook_clusters_dropped: self.clusters_dropped(),
            latency_us,
            view: self.view.status(),
            recent: self.recent.lock().iter().cloned().collect(),
        }
    }

    /// Forgets the latency samples (between benchmark phases).
    pub fn clear_latencies(&self) {
        self.latencies.lock().clear();
    }

    /// Addresses being resolved now.
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().len()
    }

    /// Addresses negative-cached now.
    pub fn negative_cached(&self) -> usize {
        self.negative.lock().len()
    }

    /// Cluster names of miss-hook decisions ignored so far (beyond the known clusters, or
    /// repeated).
    pub fn clusters_dropped(&self) -> u64 {
        self.clusters_dropped.load(Ordering::Relaxed)
    }

    /// Brings the metrics up to the live counters; call before each scrape.
    pub fn refresh_metrics(&self) {
        self.metrics.refresh(crate::metrics::Live {
            datapath: &self.datapath,
            reader: &self.reader,
            view: &self.view,
            in_flight: self.in_flight(),
            negative_cached: self.negative_cached(),
            clusters_dropped: self.clusters_dropped(),
        });
    }

    /// The view.
    pub fn view(&self) -> &Arc<MeshView> {
        &self.view
    }

    /// Reader counters (for metrics).
    pub fn reader_stats(&self) -> &ReaderStats {
        &self.reader
    }

    /// The datapath.
    pub fn datapath(&self) -> &Arc<Datapath> {
        &self.datapath
    }

    async fn handle(&self, miss: Miss) {
        let addr = miss.addr;
        let generation = self.filters.as_ref().map(|f| f.generation());
        if self.negative.lock().get(&addr).is_some_and(|(until, by)| {
            *until > Instant::now() && (by.is_none() || *by == generation)
        }) {
            self.finish(
                addr,
                Outcome::NegativeCached,
                None,
                "negative-cached".into(),
            );
            return;
        }
        if !self.inflight.lock().insert(addr) {
            self.finish(
                addr,
                Outcome::Deduplicated,
                None,
                "already resolving".into(),
            );
            return;
        }
        let span = tracing::debug_span!("miss", %addr, cluster_id = miss.cluster_id);
        let (outcome, resolved, reason) = self.resolve_and_install(&miss).instrument(span).await;
        self.inflight.lock().remove(&addr);
        self.finish(addr, outcome, resolved, reason);
    }

    async fn resolve_and_install(
        &self,
        miss: &Miss,
    ) -> (Outcome, Option<(String, u32, &'static str, u64)>, String) {
        let hinted = self.view.cluster_name(miss.cluster_id);
        let candidates = self.view.candidates(miss.addr, hinted.as_deref());
        let input = Arc::new(MissInput {
            address: miss.addr.to_string(),
            covering_prefix: miss.mesh_cidr.map(|n| n.to_string()),
            tunnel_endpoint: miss.tunnel_endpoint.map(|t| t.to_string()),
            local_node: self.config.node_name.clone(),
            candidates: candidates.clone(),
        });
        let mut generation = None;
        let decision = match &self.filters {
            Some(hook) => {
                // Wasm is CPU-bound up to the module's deadline: on a blocking thread, so a
                // slow module never stalls the agent's async workers.
                let (hook, request) = (hook.clone(), input.clone());
                match tokio::task::spawn_blocking(move || hook.decide(&request)).await {
                    Ok((decision, made_by)) => {
                        generation = Some(made_by);
                        decision
                    }
                    Err(e) => {
                        tracing::error!(addr = %miss.addr, error = %e, "the miss hook did not return");
                        return (Outcome::Failed, None, format!("miss hook: {e}"));
                    }
                }
            }
            None => {
                let mut clusters: Vec<String> = candidates
                    .iter()
                    .filter(|c| c.owns_prefix)
                    .chain(candidates.iter().filter(|c| !c.owns_prefix))
                    .map(|c| c.locality.cluster.clone())
                    .collect();
                clusters.dedup();
                MissDecision::Resolve {
                    clusters,
                    reason: "no miss filter: owners first".into(),
                }
            }
        };
        let (clusters, reason) = match decision {
            MissDecision::Ignore { ttl, reason } => {
                self.negative
                    .lock()
                    .insert(miss.addr, (Instant::now() + ttl, generation));
                return (Outcome::Ignored, None, reason.to_string());
            }
            MissDecision::Resolve { clusters, reason } => {
                (self.bound_clusters(clusters, candidates.len()), reason)
            }
        };
        let found = match self.view.cached(miss.addr, &clusters) {
            Some((cluster, pair)) => Ok(crate::resolve::Resolution {
                cluster,
                pair,
                from: crate::resolve::ResolvedFrom::LocalCache,
            }),
            None => self.resolvers.resolve(miss.addr, &clusters).await,
        };
        match found {
            Ok(found) => {
                let identity = found.pair.id;
                if let Err(e) = self.view.install_endpoint(&found.cluster, found.pair) {
                    // Not in the map: retried on the next miss, not before a pause.
                    self.negative
                        .lock()
                        .insert(miss.addr, (Instant::now() + self.config.retry_after, None));
                    tracing::warn!(addr = %miss.addr, cluster = %found.cluster, error = %e, "resolved but not installed");
                    let outcome = match e {
                        InstallError::MapFull(_) => Outcome::MapFull,
                        InstallError::Failed(_) | InstallError::NotAPrefix => {
                            Outcome::InstallFailed
                        }
                    };
                    return (outcome, None, e.to_string());
                }
                let latency_us = monotonic_ns().saturating_sub(miss.ts_ns) / 1000;
                self.metrics.observe_latency(latency_us);
                let mut samples = self.latencies.lock();
                if samples.len() == LATENCY_SAMPLES {
                    samples.pop_front();
                }
                samples.push_back(latency_us);
                drop(samples);
                (
                    Outcome::Installed,
                    Some((found.cluster, identity, found.from.as_str(), latency_us)),
                    reason.to_string(),
                )
            }
            Err(ResolveError::NotFound) => {
                self.negative
                    .lock()
                    .insert(miss.addr, (Instant::now() + self.config.negative_ttl, None));
                (Outcome::NotFound, None, ResolveError::NotFound.to_string())
            }
            Err(e) => {
                self.negative
                    .lock()
                    .insert(miss.addr, (Instant::now() + self.config.retry_after, None));
                tracing::warn!(addr = %miss.addr, error = %e, "resolving a missed address");
                (Outcome::Failed, None, e.to_string())
            }
        }
    }

    /// The miss hook's cluster list, bounded: at most one entry per known cluster, each
    /// once, in the hook's order (a module cannot make the agent look a name up over and
    /// over). Dropped entries are counted.
    fn bound_clusters(&self, mut clusters: Vec<String>, known: usize) -> Vec<String> {
        let returned = clusters.len();
        let mut seen = HashSet::with_capacity(known);
        clusters.retain(|c| seen.len() < known && seen.insert(c.clone()));
        let dropped = returned - clusters.len();
        if dropped > 0 {
            self.clusters_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
            tracing::debug!(
                returned,
                known,
                dropped,
                "miss hook returned more clusters than known"
            );
        }
        clusters
    }

    fn finish(
        &self,
        address: IpAddr,
        outcome: Outcome,
        resolved: Option<(String, u32, &'static str, u64)>,
        reason: String,
    ) {
        *self.outcomes.lock().entry(outcome).or_default() += 1;
        self.metrics.count_outcome(outcome.as_str());
        if matches!(outcome, Outcome::NegativeCached | Outcome::Deduplicated) {
            return;
        }
        let (cluster, identity, from, latency_us) = match resolved {
            Some((c, i, f, l)) => (Some(c), Some(i), Some(f), Some(l)),
            None => (None, None, None, None),
        };
        tracing::debug!(%address, outcome = outcome.as_str(), ?latency_us, reason, "miss handled");
        let mut recent = self.recent.lock();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(RecentMiss {
            address,
            outcome,
            cluster,
            identity,
            from,
            latency_us,
            reason,
        });
    }

    fn sweep_negative(&self) {
        let now = Instant::now();
        self.negative.lock().retain(|_, (until, _)| *until > now);
    }
}
