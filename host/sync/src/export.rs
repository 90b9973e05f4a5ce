//! Source-side filtering: the local cluster's unfiltered clustermesh state, as a
//! clustermesh-apiserver writes it, copied into the etcd other clusters read, with only the
//! endpoints the export hook lets out and their scope in `SyncScope`.
//!
//! This path reads what etcd carries: pod labels come from the endpoint's security
//! identity (Cilium puts the pod's labels there), so `clustermesh.cilium.io/sync` works as
//! a label; annotations (the scope annotation, namespace annotations) are not in etcd and
//! need the Kubernetes source (crate `meshfilter-k8s-source`), which decides through the
//! same [`ExportHook`].

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use meshfilter_cilium::keys::{Resource, cluster_config_key};
use meshfilter_cilium::{CiliumClusterConfig, ClusterName, IpIdentityPair, KvstoreValue};
use meshfilter_etcd::Backoff;
use meshfilter_filter_runtime::{EndpointInput, ExportDecision, FilterRuntime};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::caches::{IdentityCache, NodeCache};
use crate::drain::Disabled;
use crate::metrics::SyncMetrics;
use crate::mirrors::VerbatimMirror;
use meshfilter_api::ReflectorStatus;

use crate::reflector::{Mirror, Rechecks, Reflector};
use crate::target::TargetKeys;
use crate::writer::TargetWriter;

/// What the export hook did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportStats {
    /// Endpoints exported, by scope.
    pub exported: BTreeMap<String, usize>,
    /// Endpoints kept in, by reason.
    pub skipped: BTreeMap<String, usize>,
    /// Entries that could not be parsed.
    pub invalid: usize,
}

/// The export hook applied to endpoints: it decides each one, records the decision (for
/// status, and for the keep-last-decision failure policy) and renders the value to publish.
/// Both sources of `meshfilter export` decide through it, so an endpoint gets the same
/// decision and the same bytes whichever source it comes from.
pub struct ExportHook {
    runtime: Arc<FilterRuntime>,
    decisions: Mutex<BTreeMap<String, ExportDecision>>,
    invalid: Mutex<BTreeMap<String, String>>,
    metrics: SyncMetrics,
}

impl ExportHook {
    /// Decisions by `runtime`'s current generation, counted in `metrics`.
    pub fn new(runtime: Arc<FilterRuntime>, metrics: SyncMetrics) -> ExportHook {
        ExportHook {
            runtime,
            decisions: Mutex::default(),
            invalid: Mutex::default(),
            metrics,
        }
    }

    /// Records `decision` for `key` (`None`: none any more), keeping the gauges of
    /// exported (by scope) and skipped endpoints in step.
    fn set_decision(&self, key: &str, decision: Option<ExportDecision>) {
        let outcome = |d: &ExportDecision| match d {
            ExportDecision::Sync { scope, .. } => scope.to_field_value(),
            ExportDecision::Skip { .. } => "skipped".to_string(),
        };
        let mut decisions = self.decisions.lock();
        if let Some(d) = &decision {
            self.metrics.count_export(&outcome(d), 1);
        }
        let before = match decision {
            Some(d) => decisions.insert(key.to_string(), d),
            None => decisions.remove(key),
        };
        if let Some(d) = before {
            self.metrics.count_export(&outcome(&d), -1);
        }
    }

    /// Records why `key` cannot be used (`None`: it can); true when newly invalid.
    fn set_invalid(&self, key: &str, why: Option<String>) -> bool {
        let mut invalid = self.invalid.lock();
        let newly = match why {
            Some(why) => invalid.insert(key.to_string(), why).is_none(),
            None => {
                invalid.remove(key);
                false
            }
        };
        self.metrics.export_invalid.set(invalid.len() as i64);
        newly
    }

    /// The filter runtime deciding.
    pub fn runtime(&self) -> &Arc<FilterRuntime> {
        &self.runtime
    }

    /// Decides the endpoint entry `pair`, recorded under `key`, as the filters see it in
    /// `input`. Returns the value to publish (the pair with the decided scope in
    /// `SyncScope`), or `None` when it must not be published. What goes out is decided by
    /// the source's own inputs, never by a scope the pair already carries.
    pub fn decide(
        &self,
        key: &str,
        mut pair: IpIdentityPair,
        mut input: EndpointInput,
    ) -> Option<Bytes> {
        self.set_invalid(key, None);
        input.sync_scope = None;
        let input = Arc::new(input);
        let previous = self.decisions.lock().get(key).cloned();
        let verdict = self.runtime.decide_export(&input, previous.as_ref());
        let out = match &verdict.decision {
            ExportDecision::Sync { scope, .. } => {
                pair.sync_scope = Some(scope.to_field_value());
                Some(Bytes::from(pair.to_json_bytes()))
            }
            ExportDecision::Skip { .. } => None,
        };
        self.set_decision(key, Some(verdict.decision));
        out
    }

    /// Records that the source keeps endpoint `key` in without asking the filters, for
    /// `reason` (the Kubernetes source when an endpoint's Pod is gone: there is nothing to
    /// decide from).
    pub fn skip(&self, key: &str, reason: &str) {
        self.set_invalid(key, None);
        self.set_decision(
            key,
            Some(ExportDecision::Skip {
                reason: Arc::from(reason),
            }),
        );
    }

    /// Records that the source entry `key` cannot be used, because of `why`, so it is not
    /// published. True the first time, so callers log it once.
    pub fn invalid(&self, key: &str, why: String) -> bool {
        self.set_decision(key, None);
        self.set_invalid(key, Some(why))
    }

    /// Forgets `key`, gone from the source.
    pub fn forget(&self, key: &str) {
        self.set_decision(key, None);
        self.set_invalid(key, None);
    }

    /// What was exported and kept in, and why.
    pub fn stats(&self) -> ExportStats {
        let mut stats = ExportStats {
            invalid: self.invalid.lock().len(),
            ..Default::default()
        };
        for d in self.decisions.lock().values() {
            match d {
                ExportDecision::Sync { scope, .. } => {
                    *stats.exported.entry(scope.to_field_value()).or_default() += 1
                }
                ExportDecision::Skip { reason } => {
                    *stats.skipped.entry(reason.to_string()).or_default() += 1
                }
            }
        }
        stats
    }
}

/// The endpoint mirror of the export side.
pub struct ExportMirror {
    cluster: ClusterName,
    prefix: String,
    canary: String,
    hook: ExportHook,
    nodes: Arc<NodeCache>,
    identities: Arc<IdentityCache>,
    rechecks: Arc<Rechecks>,
}

impl ExportMirror {
    /// Decisions are made again when filters, nodes or identities change; the task merging
    /// those signals stops with `cancel`.
    pub fn new(
        cluster: ClusterName,
        runtime: Arc<FilterRuntime>,
        nodes: Arc<NodeCache>,
        identities: Arc<IdentityCache>,
        metrics: SyncMetrics,
        cancel: CancellationToken,
    ) -> Arc<ExportMirror> {
        let rechecks = Arc::new(Rechecks::default());
        let mirror = Arc::new(ExportMirror {
            prefix: Resource::Endpoints.source_prefix(&cluster),
            canary: Resource::Endpoints.source_canary_key(&cluster),
            cluster,
            hook: ExportHook::new(runtime.clone(), metrics),
            nodes: nodes.clone(),
            identities: identities.clone(),
            rechecks: rechecks.clone(),
        });
        crate::mirrors::recheck_all_on(
            rechecks,
            [runtime.subscribe(), nodes.version(), identities.version()],
            cancel,
        );
        mirror
    }

    /// What was exported and kept in, and why.
    pub fn stats(&self) -> ExportStats {
        self.hook.stats()
    }
}

impl Mirror for ExportMirror {
    fn name(&self) -> &str {
        "endpoints"
    }
    fn source_prefix(&self) -> &str {
        &self.prefix
    }
    fn target_key(&self, source_key: &str) -> Option<String> {
        source_key
            .starts_with(&self.prefix)
            .then(|| source_key.to_string())
    }
    fn target_prefix(&self) -> &str {
        &self.prefix
    }
    fn canary_key(&self) -> Option<&str> {
        Some(&self.canary)
    }
    fn transform(&self, source_key: &str, value: &Bytes) -> Option<Bytes> {
        let suffix = source_key.strip_prefix(&self.prefix)?;
        let pair = match IpIdentityPair::parse(&self.cluster, suffix, value) {
            Ok(p) => p,
            Err(e) => {
                if self.hook.invalid(suffix, e.to_string()) {
                    tracing::warn!(cluster = %self.cluster, key = source_key, error = %e, "skipping invalid ipcache entry");
                }
                return None;
            }
        };
        let local = self.hook.runtime().local();
        let input = crate::caches::endpoint_input(
            suffix,
            &pair,
            &local.cluster,
            &self.nodes,
            self.identities.labels_of(pair.id),
            Some(local),
        );
        self.hook.decide(suffix, pair, input)
    }
    fn observe(&self, source_key: &str, value: Option<&Bytes>) {
        if value.is_none()
            && let Some(suffix) = source_key.strip_prefix(&self.prefix)
        {
            self.hook.forget(suffix);
        }
    }
    fn rechecks(&self) -> Option<Arc<Rechecks>> {
        Some(self.rechecks.clone())
    }
}

/// Runs the export of one cluster: endpoints through the export hook, identities, nodes,
/// services, service exports and endpoint slices verbatim, and the cluster config, from
/// `source` (the unfiltered clustermesh etcd) into `target` (the etcd remote clusters
/// read). Whatever the copied cluster config advertises is mirrored, so consumers never
/// wait for a canary that will not come.
pub struct ExportCluster {
    cluster: ClusterName,
    source: etcd_client::Client,
    target: Arc<TargetWriter>,
    runtime: Arc<FilterRuntime>,
    backoff: Backoff,
    metrics: SyncMetrics,
}

/// Live status of an export.
#[derive(Clone, Default)]
pub struct ExportStatusHandle {
    endpoints: Arc<Mutex<Option<Arc<ExportMirror>>>>,
    #[allow(
        clippy::type_complexity,
        reason = "status and synced flag per resource name"
    )]
    resources: Arc<Mutex<BTreeMap<String, (Arc<Mutex<ReflectorStatus>>, watch::Receiver<bool>)>>>,
}

impl ExportStatusHandle {
    /// Whether every reflector finished its first sync.
    pub fn synced(&self) -> bool {
        let resources = self.resources.lock();
        self.endpoints.lock().is_some() && resources.values().all(|(_, s)| *s.borrow())
    }

    /// Export decisions so far.
    pub fn stats(&self) -> ExportStats {
        self.endpoints
            .lock()
            .as_ref()
            .map(|e| e.stats())
            .unwrap_or_default()
    }

    /// Per-resource reflector status.
    pub fn resources(&self) -> BTreeMap<String, ReflectorStatus> {
        self.resources
            .lock()
            .iter()
            .map(|(k, (s, _))| (k.clone(), s.lock().clone()))
            .collect()
    }
}

impl ExportCluster {
    /// Export `cluster` from `source` through `target`.
    pub fn new(
        cluster: ClusterName,
        source: etcd_client::Client,
        target: Arc<TargetWriter>,
        runtime: Arc<FilterRuntime>,
        backoff: Backoff,
        metrics: SyncMetrics,
    ) -> ExportCluster {
        ExportCluster {
            cluster,
            source,
            target,
            runtime,
            backoff,
            metrics,
        }
    }

    /// Runs until `cancel`.
    pub async fn run(self, cancel: CancellationToken, handle: ExportStatusHandle) {
        let span = tracing::info_span!("export", cluster = %self.cluster);
        self.run_inner(cancel, handle).instrument(span).await
    }

    async fn run_inner(self, cancel: CancellationToken, handle: ExportStatusHandle) {
        let Some(source_config) = self.source_config(&cancel).await else {
            return;
        };
        let canaries = source_config.capabilities.synced_canaries;
        let nodes = NodeCache::new(self.cluster.clone());
        let identities = IdentityCache::new(self.cluster.clone());
        let mut tasks = JoinSet::new();
        let verbatim = |r: Resource| {
            VerbatimMirror::new(
                r.name(),
                r.source_prefix(&self.cluster),
                r.source_prefix(&self.cluster),
                Some(r.source_canary_key(&self.cluster)),
            )
        };
        let gate = |r: Resource| canaries.then(|| r.source_canary_key(&self.cluster));
        let node_cache = nodes.clone();
        let identity_cache = identities.clone();
        let nodes_synced = self.spawn(
            &mut tasks,
            &cancel,
            &handle,
            Arc::new(verbatim(Resource::Nodes).observed_by(move |s, v| node_cache.update(s, v))),
            gate(Resource::Nodes),
        );
        let identities_synced = self.spawn(
            &mut tasks,
            &cancel,
            &handle,
            Arc::new(
                verbatim(Resource::Identities).observed_by(move |s, v| identity_cache.update(s, v)),
            ),
            gate(Resource::Identities),
        );
        // What the copied cluster config advertises is mirrored; the rest is drained.
        for resource in [
            Resource::Services,
            Resource::ServiceExports,
            Resource::EndpointSlices,
        ] {
            if source_config.exports(resource) {
                self.spawn(
                    &mut tasks,
                    &cancel,
                    &handle,
                    Arc::new(verbatim(resource)),
                    gate(resource),
                );
            } else {
                self.spawn_disabled(&mut tasks, &cancel, &handle, resource);
            }
        }
        // The cluster config travels verbatim too: remote clusters need it to connect.
        let key = cluster_config_key(&self.cluster);
        self.spawn(
            &mut tasks,
            &cancel,
            &handle,
            Arc::new(VerbatimMirror::new("cluster-config", key.clone(), key, None).exact()),
            None,
        );
        let ready = async move {
            for mut s in [nodes_synced, identities_synced] {
                let _ = s.wait_for(|v| *v).await;
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = ready => {
                let endpoints = ExportMirror::new(self.cluster.clone(), self.runtime.clone(), nodes, identities, self.metrics.clone(), cancel.clone());
                *handle.endpoints.lock() = Some(endpoints.clone());
                self.spawn(&mut tasks, &cancel, &handle, endpoints, gate(Resource::Endpoints));
            }
        }
        cancel.cancelled().await;
        while tasks.join_next().await.is_some() {}
    }

    /// The source's cluster config: what it exports, and whether it writes sync canaries
    /// (then every list waits for them, so a refilling source is not taken for an empty
    /// one). Retried until it can be read; `None` when cancelled first. A change of it
    /// later is copied to the target, but does not change what is mirrored until restart.
    async fn source_config(&self, cancel: &CancellationToken) -> Option<CiliumClusterConfig> {
        let key = cluster_config_key(&self.cluster);
        let mut backoff = self.backoff.clone();
        loop {
            let read = meshfilter_etcd::Pages::exact(&self.source, self.cluster.as_str(), &key)
                .collect()
                .await;
            match read {
                Ok((entries, _)) => match entries.first() {
                    Some(e) => match CiliumClusterConfig::parse(&self.cluster, &key, &e.value) {
                        Ok(config) => return Some(config),
                        Err(err) => {
                            tracing::warn!(key, error = %err, "the source's cluster config is invalid; waiting for a valid one")
                        }
                    },
                    None => {
                        tracing::warn!(key, "the source has no cluster config yet; waiting for it")
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot read the source's cluster config"),
            }
            if !backoff.wait(cancel).await {
                return None;
            }
        }
    }

    /// Drains `resource`, which the source does not export, and writes its canary.
    fn spawn_disabled(
        &self,
        tasks: &mut JoinSet<()>,
        cancel: &CancellationToken,
        handle: &ExportStatusHandle,
        resource: Resource,
    ) {
        let status: Arc<Mutex<ReflectorStatus>> = Arc::default();
        let (synced_tx, synced) = watch::channel(false);
        handle
            .resources
            .lock()
            .insert(resource.name().to_string(), (status.clone(), synced));
        let disabled = Disabled {
            target: TargetKeys::new(self.target.clone(), resource.source_prefix(&self.cluster)),
            canary: resource.source_canary_key(&self.cluster),
            writer: self.target.clone(),
            backoff: self.backoff.clone(),
            status,
            synced: synced_tx,
        };
        tasks.spawn(disabled.run(cancel.clone()).in_current_span());
    }

    fn spawn<M: Mirror>(
        &self,
        tasks: &mut JoinSet<()>,
        cancel: &CancellationToken,
        handle: &ExportStatusHandle,
        mirror: Arc<M>,
        gate: Option<String>,
    ) -> watch::Receiver<bool> {
        let name = mirror.name().to_string();
        let r = Reflector::new(
            self.cluster.as_str(),
            self.source.clone(),
            self.target.clone(),
            mirror,
            self.backoff.clone(),
            self.metrics.clone(),
        )
        .gated_on(gate);
        let synced = r.synced();
        handle
            .resources
            .lock()
            .insert(name, (r.status(), synced.clone()));
        tasks.spawn(r.run(cancel.clone()).in_current_span());
        synced
    }
}
