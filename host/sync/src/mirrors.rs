//! The mirrors a remote cluster needs: verbatim copies (nodes, identities, services,
//! service exports) and the endpoint mirror that asks the import hook.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use meshfilter_api::ImportStats;
use meshfilter_cilium::{ClusterName, IpIdentityPair, KvstoreValue};
use meshfilter_filter_runtime::{Decided, EndpointInput, FilterRuntime, ImportDecision};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::caches::{IdentityCache, NodeCache};
use crate::metrics::SyncMetrics;
use crate::reflector::{Mirror, Rechecks};

type Observer = Box<dyn Fn(&str, Option<&Bytes>) + Send + Sync>;

/// `key` with its prefix `from` replaced by `to`; `None` if it does not start with `from`.
fn swap_prefix(key: &str, from: &str, to: &str) -> Option<String> {
    Some(format!("{to}{}", key.strip_prefix(from)?))
}

/// Copies values verbatim from one prefix to another; only the key prefix changes
/// (what kvstoremesh does for every resource).
pub struct VerbatimMirror {
    name: String,
    source_prefix: String,
    target_prefix: String,
    canary: Option<String>,
    observer: Option<Observer>,
    exact: bool,
}

impl VerbatimMirror {
    /// Mirrors `source_prefix` to `target_prefix`, with a canary at `canary`.
    pub fn new(
        name: &str,
        source_prefix: String,
        target_prefix: String,
        canary: Option<String>,
    ) -> VerbatimMirror {
        VerbatimMirror {
            name: name.to_string(),
            source_prefix,
            target_prefix,
            canary,
            observer: None,
            exact: false,
        }
    }

    /// Mirrors the single key `source_prefix` to `target_prefix` (a cluster config).
    pub fn exact(mut self) -> Self {
        self.exact = true;
        self
    }

    /// Calls `observer` with the key suffix after the prefix for every source change.
    pub fn observed_by(
        mut self,
        observer: impl Fn(&str, Option<&Bytes>) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }
}

impl Mirror for VerbatimMirror {
    fn name(&self) -> &str {
        &self.name
    }
    fn source_prefix(&self) -> &str {
        &self.source_prefix
    }
    fn target_key(&self, source_key: &str) -> Option<String> {
        swap_prefix(source_key, &self.source_prefix, &self.target_prefix)
    }
    fn target_prefix(&self) -> &str {
        &self.target_prefix
    }
    fn canary_key(&self) -> Option<&str> {
        self.canary.as_deref()
    }
    fn exact(&self) -> bool {
        self.exact
    }
    fn transform(&self, _: &str, value: &Bytes) -> Option<Bytes> {
        Some(value.clone())
    }
    fn observe(&self, source_key: &str, value: Option<&Bytes>) {
        if let (Some(observer), Some(suffix)) =
            (&self.observer, source_key.strip_prefix(&self.source_prefix))
        {
            observer(suffix, value);
        }
    }
}

/// Forwards changes of any of `sources` to `rechecks` as "decide everything again", a
/// burst settling into one request, until `cancel`: every filter generation, node or
/// identity change means decisions must be made again.
pub(crate) fn recheck_all_on<const N: usize>(
    rechecks: Arc<Rechecks>,
    mut sources: [watch::Receiver<u64>; N],
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let any_changed = futures_select_any(&mut sources);
            tokio::select! {
                _ = cancel.cancelled() => return,
                alive = any_changed => if !alive { return },
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            }
            for s in sources.iter_mut() {
                s.mark_unchanged();
            }
            rechecks.all();
        }
    });
}

/// Resolves when any receiver sees a change; false when one of them is closed.
async fn futures_select_any<const N: usize>(sources: &mut [watch::Receiver<u64>; N]) -> bool {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bool>(N);
    let mut waits = tokio::task::JoinSet::new();
    for s in sources.iter() {
        let (mut s, tx) = (s.clone(), tx.clone());
        waits.spawn(async move {
            let _ = tx.send(s.changed().await.is_ok()).await;
        });
    }
    drop(tx);
    rx.recv().await.unwrap_or(false)
}

/// A decision as recorded for one endpoint.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedDecision {
    /// The decision.
    pub decision: ImportDecision,
    /// Who made it.
    pub decided_by: Decided,
    /// Filter generation that made it.
    pub generation: u64,
}

/// Why an endpoint is or is not in the cache.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The hook that decides it.
    pub hook: &'static str,
    /// The decision applied when the entry was last written or removed.
    pub applied: Option<RecordedDecision>,
    /// The inputs the import hook sees for the current source value.
    pub inputs: Option<EndpointInput>,
    /// The decision the current filter generation makes on those inputs.
    pub current: Option<RecordedDecision>,
    /// Why the source value could not be used, if it could not.
    pub invalid: Option<String>,
    /// Whether shadow mode is on (decisions are counted, not applied).
    pub shadow: bool,
}

/// Mirrors a remote cluster's ipcache entries through the import hook.
pub struct ImportMirror {
    cluster: ClusterName,
    source_prefix: String,
    target_prefix: String,
    canary: String,
    runtime: Arc<FilterRuntime>,
    nodes: Arc<NodeCache>,
    identities: Arc<IdentityCache>,
    decisions: Mutex<HashMap<String, RecordedDecision>>,
    shadow: bool,
    invalid: Mutex<HashMap<String, String>>,
    failures: std::sync::atomic::AtomicUsize,
    rechecks: Arc<Rechecks>,
    metrics: SyncMetrics,
    /// Endpoints resolved on demand (datapath misses), mirrored whatever the import hook
    /// says until their pin expires.
    pinned: Mutex<HashMap<String, std::time::Instant>>,
    /// The remote's cluster ID and `maxConnectedClusters`: entries whose identity lies
    /// outside that cluster's range are refused, as agents would drop them.
    identity_range: std::sync::OnceLock<(u32, u32)>,
}

impl ImportMirror {
    /// Mirrors the endpoint `ip` until `until`, even if filtered out, and has it decided
    /// again now (that one entry, not the whole cluster). `written` is its value and
    /// lease when the resolver already wrote it into the cache. Renewing a pin keeps a used
    /// entry fresh.
    pub fn pin(&self, ip: &str, until: std::time::Instant, written: Option<(Bytes, i64)>) {
        self.pinned.lock().insert(ip.to_string(), until);
        if let Some((value, lease)) = written {
            self.rechecks
                .written(format!("{}{ip}", self.target_prefix), value, lease);
        }
        self.rechecks.key(format!("{}{ip}", self.source_prefix));
    }

    /// Drops expired pins (their entries are deleted if the filters exclude them).
    pub fn expire_pins(&self, now: std::time::Instant) -> usize {
        let mut pinned = self.pinned.lock();
        let mut expired = 0;
        pinned.retain(|ip, until| {
            let keep = *until > now;
            if !keep {
                expired += 1;
                self.rechecks.key(format!("{}{ip}", self.source_prefix));
            }
            keep
        });
        expired
    }

    /// Whether `value` at `ip` is an entry this mirror would write if the filters let it
    /// through: it parses as an ipcache entry of this cluster for that address and its
    /// identity lies in the cluster's range. The on-demand resolver writes nothing else.
    pub fn validate(&self, ip: &str, value: &[u8]) -> Result<(), String> {
        self.check(ip, value).map(|_| ())
    }

    /// The entry at key suffix `ip`, if it is one agents would accept.
    fn check(&self, ip: &str, value: &[u8]) -> Result<IpIdentityPair, String> {
        let pair = IpIdentityPair::parse(&self.cluster, ip, value).map_err(|e| e.to_string())?;
        match self.identity_range.get() {
            Some(&(id, max)) if id != 0 && !pair.identity_in_cluster_range(id, max) => {
                Err(format!(
                    "identity {} is outside the range of cluster ID {id}",
                    pair.id
                ))
            }
            _ => Ok(pair),
        }
    }

    /// Records the decision for `ip` (`None`: none any more), keeping the per-cluster
    /// gauges of kept and skipped endpoints in step.
    fn set_decision(&self, ip: &str, recorded: Option<RecordedDecision>) {
        let keeps = |r: &RecordedDecision| r.decision.keeps();
        let mut decisions = self.decisions.lock();
        let before = match recorded {
            Some(r) => {
                let now = keeps(&r);
                let before = decisions.insert(ip.to_string(), r).map(|old| keeps(&old));
                self.count_decision(Some(now), 1);
                before
            }
            None => decisions.remove(ip).map(|old| keeps(&old)),
        };
        self.count_decision(before, -1);
    }

    fn count_decision(&self, keeps: Option<bool>, delta: i64) {
        if let Some(keeps) = keeps {
            let label = crate::metrics::DecisionLabel {
                cluster: self.cluster.to_string(),
                decision: if keeps { "kept" } else { "skipped" },
            };
            self.metrics
                .import_endpoints
                .get_or_create(&label)
                .inc_by(delta);
        }
    }

    /// Records why `ip` cannot be used (`None`: it can); true when newly invalid.
    fn set_invalid(&self, ip: &str, why: Option<String>) -> bool {
        let mut invalid = self.invalid.lock();
        let changed = match why {
            Some(why) => invalid.insert(ip.to_string(), why).is_none(),
            None => invalid.remove(ip).is_some(),
        };
        if changed {
            self.metrics
                .import_invalid
                .get_or_create(&self.metrics.cluster(self.cluster.as_str()))
                .set(invalid.len() as i64);
        }
        changed && invalid.contains_key(ip)
    }

    /// Refuse entries whose identity is outside cluster `cluster_id`'s range.
    pub fn check_identity_range(&self, cluster_id: u32, max_connected_clusters: u32) {
        let _ = self
            .identity_range
            .set((cluster_id, max_connected_clusters));
    }

    /// The key prefix endpoints are read from at the remote.
    pub fn source_prefix(&self) -> &str {
        &self.source_prefix
    }

    /// Endpoints of `cluster` from `source_prefix` to `target_prefix`. Decisions are made
    /// again when the filter generation, the node cache or the identity cache changes;
    /// the task merging those signals stops with `cancel`. In `shadow` mode decisions are
    /// made and counted but every entry is mirrored.
    #[allow(
        clippy::too_many_arguments,
        reason = "each is a separate collaborator of the mirror; a struct would only rename them"
    )]
    pub fn new(
        shadow: bool,
        cluster: ClusterName,
        source_prefix: String,
        target_prefix: String,
        canary: String,
        runtime: Arc<FilterRuntime>,
        nodes: Arc<NodeCache>,
        identities: Arc<IdentityCache>,
        metrics: SyncMetrics,
        cancel: CancellationToken,
    ) -> Arc<ImportMirror> {
        let rechecks = Arc::new(Rechecks::default());
        let mirror = Arc::new(ImportMirror {
            cluster,
            source_prefix,
            target_prefix,
            canary,
            runtime: runtime.clone(),
            nodes: nodes.clone(),
            identities: identities.clone(),
            decisions: Mutex::default(),
            shadow,
            invalid: Mutex::default(),
            failures: Default::default(),
            rechecks: rechecks.clone(),
            metrics,
            pinned: Mutex::default(),
            identity_range: std::sync::OnceLock::new(),
        });
        recheck_all_on(
            rechecks,
            [runtime.subscribe(), nodes.version(), identities.version()],
            cancel,
        );
        mirror
    }

    /// Counts of what was kept and filtered, and why.
    pub fn stats(&self) -> ImportStats {
        let decisions = self.decisions.lock();
        let mut stats = ImportStats {
            invalid: self.invalid.lock().len(),
            failures: self.failures.load(std::sync::atomic::Ordering::Relaxed),
            shadow: self.shadow,
            ..Default::default()
        };
        for d in decisions.values() {
            match &d.decision {
                ImportDecision::Keep { .. } => stats.kept += 1,
                ImportDecision::Skip { reason } => {
                    *stats.skipped.entry(reason.to_string()).or_default() += 1
                }
            }
        }
        stats
    }

    /// The decision last made for the endpoint with key suffix `ip`, if any.
    pub fn decision(&self, ip: &str) -> Option<RecordedDecision> {
        self.decisions.lock().get(ip).cloned()
    }

    /// Explains the endpoint `ip` whose current source value is `value` (`None`: not at
    /// the source).
    pub fn explain(&self, ip: &str, value: Option<&[u8]>) -> Explanation {
        let mut e = Explanation {
            hook: "import",
            applied: self.decision(ip),
            inputs: None,
            current: None,
            invalid: None,
            shadow: self.shadow,
        };
        if let Some(value) = value {
            match IpIdentityPair::parse(&self.cluster, ip, value) {
                Ok(pair) => {
                    let input = Arc::new(self.endpoint_input(ip, &pair));
                    let verdict = self
                        .runtime
                        .decide_import(&input, e.applied.as_ref().map(|a| &a.decision));
                    e.current = Some(RecordedDecision {
                        decision: verdict.decision,
                        decided_by: verdict.decided_by,
                        generation: verdict.generation,
                    });
                    e.inputs = Some((*input).clone());
                }
                Err(err) => e.invalid = Some(err.to_string()),
            }
        }
        e
    }

    fn endpoint_input(&self, suffix: &str, pair: &IpIdentityPair) -> EndpointInput {
        crate::caches::endpoint_input(
            suffix,
            pair,
            self.cluster.as_str(),
            &self.nodes,
            self.identities.labels_of(pair.id),
            None,
        )
    }
}

impl Mirror for ImportMirror {
    fn name(&self) -> &str {
        "endpoints"
    }
    fn source_prefix(&self) -> &str {
        &self.source_prefix
    }
    fn target_key(&self, source_key: &str) -> Option<String> {
        swap_prefix(source_key, &self.source_prefix, &self.target_prefix)
    }
    fn target_prefix(&self) -> &str {
        &self.target_prefix
    }
    fn canary_key(&self) -> Option<&str> {
        Some(&self.canary)
    }
    fn transform(&self, source_key: &str, value: &Bytes) -> Option<Bytes> {
        let suffix = source_key.strip_prefix(&self.source_prefix)?;
        let pair = match self.check(suffix, value) {
            Ok(pair) => {
                self.set_invalid(suffix, None);
                pair
            }
            Err(why) => {
                if self.set_invalid(suffix, Some(why.clone())) {
                    tracing::warn!(cluster = %self.cluster, key = source_key, "skipping invalid ipcache entry: {why}");
                }
                self.set_decision(suffix, None);
                return None;
            }
        };
        let input = Arc::new(self.endpoint_input(suffix, &pair));
        let previous = self
            .decisions
            .lock()
            .get(suffix)
            .map(|r| r.decision.clone());
        let verdict = self.runtime.decide_import(&input, previous.as_ref());
        if matches!(verdict.decided_by, Decided::FailurePolicy { .. }) {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.metrics
                .import_failures
                .get_or_create(&self.metrics.cluster(self.cluster.as_str()))
                .inc();
        }
        let keep =
            verdict.decision.keeps() || self.shadow || self.pinned.lock().contains_key(suffix);
        self.set_decision(
            suffix,
            Some(RecordedDecision {
                decision: verdict.decision,
                decided_by: verdict.decided_by,
                generation: verdict.generation,
            }),
        );
        keep.then(|| value.clone())
    }
    fn observe(&self, source_key: &str, value: Option<&Bytes>) {
        if value.is_none()
            && let Some(suffix) = source_key.strip_prefix(&self.source_prefix)
        {
            self.set_decision(suffix, None);
            self.set_invalid(suffix, None);
        }
    }
    fn rechecks(&self) -> Option<Arc<Rechecks>> {
        Some(self.rechecks.clone())
    }
}
