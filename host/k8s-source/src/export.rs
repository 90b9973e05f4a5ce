//! The export from Kubernetes: CiliumEndpoints joined with their Pods and Namespaces,
//! decided by the export hook, and written into the export etcd in Cilium's layout.
//!
//! What is written, and from what:
//! - `cilium/state/ip/v1/default/<ip>`: one entry per address of every CiliumEndpoint the
//!   export hook lets out, converted as clustermesh-apiserver converts it, with the decided
//!   scope in `SyncScope`. The hook sees the Pod's labels and annotations and its
//!   Namespace's annotations. An endpoint whose Pod is gone, whose body is malformed, or
//!   that the hook keeps in is not published, and a copy published earlier is deleted.
//! - `cilium/state/identities/v1/id/<id>`: the identity of every endpoint that has a Pod
//!   and whose Namespace is not annotated `clustermesh.cilium.io/global: "false"`, from
//!   the endpoint's `status.identity` (id and security labels), while one such endpoint
//!   exists, whether or not its addresses are exported. Clients are rarely opted in, but
//!   in tunnel mode their packets carry their identity, and a receiver that does not know
//!   it drops them under label-based policy; clustermesh-apiserver publishes identities
//!   the same way (filtered by namespace only).
//! - `cilium/state/nodes/v1/<cluster>/<node>`: every CiliumNode, converted as
//!   clustermesh-apiserver converts it (nodes are never filtered).
//! - `cilium/cluster-config/<cluster>`: the cluster's ID, `syncedCanaries` and
//!   `maxConnectedClusters`.
//! - Sync canaries for endpoints, identities, nodes and services once all four watchers
//!   have listed and the result is written. Services and service exports are not read from
//!   Kubernetes: nothing is published under `services/v1/<cluster>/` (what an earlier run
//!   left there is deleted), its canary says so, and the cluster config does not offer
//!   service exports.
//!
//! Every key is written through the [`TargetWriter`] (leases, bounded transactions), and
//! what an earlier run or a lost lease left is adopted and swept.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource as _};
use meshfilter_cilium::cluster_config::Capabilities;
use meshfilter_cilium::convert::{CiliumEndpoint, ciliumendpoint_to_pairs, ciliumnode_to_node};
use meshfilter_cilium::identity::{Label, MIN_NUMERIC_IDENTITY};
use meshfilter_cilium::keys::{ENDPOINTS_SOURCE_PREFIX, cluster_config_key};
use meshfilter_cilium::{CiliumClusterConfig, ClusterName, IdentityLabels, Resource};
use meshfilter_contract::labels::NAMESPACE_GLOBAL;
use meshfilter_etcd::Backoff;
use meshfilter_filter_runtime::FilterRuntime;
use meshfilter_sync::{
    ExportHook, ExportStats, NodeCache, SyncError, SyncMetrics, TargetKeys, TargetWriter,
    endpoint_input,
};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::claims::{Claims, Contribution, Touched};
use crate::metrics::SourceMetrics;
use crate::resources::{CiliumEndpointObject, CiliumNodeObject, ObjectKey};
use crate::watch::{ChangeFeed, Dirty, WatchStatus, Watched, run_watch};

/// Why an endpoint without a Pod is not published.
const NO_POD: &str = "no Pod for this CiliumEndpoint";

/// The cluster being exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCluster {
    /// Its name.
    pub name: ClusterName,
    /// Its cluster ID (1-255, or 1-511 in a mesh of 511).
    pub id: u32,
    /// The mesh size it was built for, 255 or 511 (`maxConnectedClusters`).
    pub max_connected_clusters: u32,
}

/// Live status of a Kubernetes export.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesStatus {
    /// Every watcher listed, the result is written and the canaries are in place.
    pub synced: bool,
    /// What the export hook did with the endpoints' addresses.
    pub endpoints: ExportStats,
    /// Per watched resource.
    pub resources: BTreeMap<String, WatchStatus>,
    /// Keys written to the export etcd, per resource.
    pub written: BTreeMap<String, usize>,
    /// Failed writes to the export etcd (each retried).
    pub retries: u64,
    /// Last write failure, cleared by the next complete sync.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Progress {
    synced: bool,
    written: BTreeMap<String, usize>,
    retries: u64,
    last_error: Option<String>,
}

/// A handle on a running export's status.
#[derive(Clone)]
pub struct KubernetesStatusHandle {
    hook: Arc<ExportHook>,
    watches: Arc<BTreeMap<&'static str, Arc<Mutex<WatchStatus>>>>,
    progress: Arc<Mutex<Progress>>,
}

impl KubernetesStatusHandle {
    /// Whether the first complete sync is written.
    pub fn synced(&self) -> bool {
        self.progress.lock().synced
    }

    /// A snapshot.
    pub fn status(&self) -> KubernetesStatus {
        let progress = self.progress.lock();
        KubernetesStatus {
            synced: progress.synced,
            endpoints: self.hook.stats(),
            resources: self
                .watches
                .iter()
                .map(|(name, s)| (name.to_string(), s.lock().clone()))
                .collect(),
            written: progress.written.clone(),
            retries: progress.retries,
            last_error: progress.last_error.clone(),
        }
    }

    fn watch(&self, resource: &str) -> Arc<Mutex<WatchStatus>> {
        self.watches[resource].clone()
    }
}

/// Exports one cluster from its Kubernetes API into the export etcd.
pub struct KubernetesExport {
    cluster: LocalCluster,
    client: kube::Client,
    metrics: SourceMetrics,
    writer: Arc<TargetWriter>,
    backoff: Backoff,
    status: KubernetesStatusHandle,
}

impl KubernetesExport {
    /// Exports `cluster`, read through `client`, into `writer`, deciding with `runtime`'s
    /// export hook; failed writes are retried after `backoff`.
    pub fn new(
        cluster: LocalCluster,
        client: kube::Client,
        writer: Arc<TargetWriter>,
        runtime: Arc<FilterRuntime>,
        backoff: Backoff,
        metrics: SourceMetrics,
        sync_metrics: SyncMetrics,
    ) -> KubernetesExport {
        let watches = [
            CiliumEndpointObject::NAME,
            <PartialObjectMeta<Pod>>::NAME,
            <PartialObjectMeta<Namespace>>::NAME,
            CiliumNodeObject::NAME,
        ]
        .into_iter()
        .map(|name| (name, Arc::default()))
        .collect();
        KubernetesExport {
            cluster,
            client,
            metrics,
            writer,
            backoff,
            status: KubernetesStatusHandle {
                hook: Arc::new(ExportHook::new(runtime, sync_metrics)),
                watches: Arc::new(watches),
                progress: Arc::default(),
            },
        }
    }

    /// The status of this export.
    pub fn status_handle(&self) -> KubernetesStatusHandle {
        self.status.clone()
    }

    /// Runs until `cancel`; every failure is retried, never returned.
    pub async fn run(self, cancel: CancellationToken) {
        let span =
            tracing::info_span!("export", cluster = %self.cluster.name, source = "kubernetes");
        self.run_watched(cancel).instrument(span).await
    }

    async fn run_watched(self, cancel: CancellationToken) {
        let feed = Arc::new(ChangeFeed::default());
        let mut watchers = Watchers {
            client: self.client.clone(),
            metrics: self.metrics.clone(),
            status: self.status.clone(),
            feed: feed.clone(),
            cancel: cancel.clone(),
            tasks: JoinSet::new(),
        };
        let stores = Stores {
            endpoints: watchers.start(),
            pods: watchers.start(),
            namespaces: watchers.start(),
            nodes: watchers.start(),
        };
        let runtime = self.status.hook.runtime().clone();
        let node_cache = NodeCache::new(self.cluster.name.clone());
        let target = |resource: Resource| {
            TargetKeys::new(
                self.writer.clone(),
                resource.source_prefix(&self.cluster.name),
            )
        };
        let mut exporter = Exporter {
            topology: node_cache.version(),
            node_cache,
            known_nodes: HashSet::new(),
            endpoints: target(Resource::Endpoints),
            identities: target(Resource::Identities),
            nodes: target(Resource::Nodes),
            services: target(Resource::Services),
            config: TargetKeys::exact(self.writer.clone(), cluster_config_key(&self.cluster.name)),
            canary_leases: HashMap::new(),
            cluster: self.cluster.clone(),
            writer: self.writer.clone(),
            hook: self.status.hook.clone(),
            stores,
            feed,
            claims: Claims::default(),
            progress: self.status.progress.clone(),
            metrics: self.metrics.clone(),
        };
        exporter
            .run(
                &cancel,
                self.writer.lease_lost(),
                runtime.subscribe(),
                self.backoff,
            )
            .await;
        while watchers.tasks.join_next().await.is_some() {}
    }
}

/// Starts the watchers, one task each.
struct Watchers {
    client: kube::Client,
    metrics: SourceMetrics,
    status: KubernetesStatusHandle,
    feed: Arc<ChangeFeed>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Watchers {
    /// Starts the watcher of `K` and returns the store it fills.
    fn start<K: Watched + DeserializeOwned>(&mut self) -> Store<K> {
        let (store, writer) = reflector::store();
        let stream = watcher(
            Api::<K>::all(self.client.clone()),
            watcher::Config::default(),
        )
        // Field-manager bookkeeping is the bulk of most objects' metadata; nothing
        // reads it.
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
        .default_backoff();
        let task = run_watch(
            stream,
            writer,
            self.status.watch(K::NAME),
            self.feed.clone(),
            self.metrics.clone(),
            self.cancel.clone(),
        );
        self.tasks
            .spawn(task.instrument(tracing::info_span!("watch", resource = K::NAME)));
        store
    }
}

/// The watchers' stores.
struct Stores {
    endpoints: Store<CiliumEndpointObject>,
    pods: Store<PartialObjectMeta<Pod>>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    nodes: Store<CiliumNodeObject>,
}

impl Stores {
    /// Resolves once every store holds a complete list; an error when a watcher stopped.
    async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.endpoints.wait_until_ready().await?;
        self.pods.wait_until_ready().await?;
        self.namespaces.wait_until_ready().await?;
        self.nodes.wait_until_ready().await
    }
}

/// The exporting task: owns the joined decisions and the target keys.
struct Exporter {
    cluster: LocalCluster,
    writer: Arc<TargetWriter>,
    hook: Arc<ExportHook>,
    stores: Stores,
    feed: Arc<ChangeFeed>,
    /// Node topology for the endpoints' origin (zone and region, by `HostIP`).
    node_cache: Arc<NodeCache>,
    /// Bumped by `node_cache` when a node's zone or region changes.
    topology: watch::Receiver<u64>,
    known_nodes: HashSet<String>,
    claims: Claims,
    endpoints: TargetKeys,
    identities: TargetKeys,
    nodes: TargetKeys,
    services: TargetKeys,
    /// The cluster config, one key.
    config: TargetKeys,
    /// Where each canary sits, so a rewrite keeps its lease.
    canary_leases: HashMap<Resource, i64>,
    progress: Arc<Mutex<Progress>>,
    metrics: SourceMetrics,
}

impl Exporter {
    async fn run(
        &mut self,
        cancel: &CancellationToken,
        mut lease_lost: watch::Receiver<u64>,
        mut generations: watch::Receiver<u64>,
        mut backoff: Backoff,
    ) {
        lease_lost.mark_unchanged();
        generations.mark_unchanged();
        // Nothing is decided before every store holds a complete list: a Pod or Namespace
        // not listed yet would make its endpoints look excluded.
        tokio::select! {
            _ = cancel.cancelled() => return,
            ready = self.stores.ready() => if ready.is_err() { return },
        }
        let mut target_unknown = true;
        while !cancel.is_cancelled() {
            let result = self
                .cycle(
                    cancel,
                    &mut target_unknown,
                    &mut lease_lost,
                    &mut generations,
                    &mut backoff,
                )
                .await;
            let Err(e) = result else { break };
            target_unknown = true;
            self.metrics.write_retries.inc();
            {
                let mut p = self.progress.lock();
                p.retries += 1;
                p.last_error = Some(e.to_string());
            }
            let note = |delay| tracing::warn!(error = %e, retry_in = ?delay, "export interrupted");
            if !backoff.wait_noted(cancel, note).await {
                break;
            }
        }
        tracing::debug!("export stopped");
    }

    /// Converges everything, then follows changes until cancelled (`Ok`) or a write fails.
    async fn cycle(
        &mut self,
        cancel: &CancellationToken,
        target_unknown: &mut bool,
        lease_lost: &mut watch::Receiver<u64>,
        generations: &mut watch::Receiver<u64>,
        backoff: &mut Backoff,
    ) -> Result<(), SyncError> {
        if *target_unknown {
            self.adopt().await?;
            *target_unknown = false;
        }
        self.feed.take();
        self.converge_all().await?;
        if !self.progress.lock().synced {
            self.write_canaries().await?;
            self.progress.lock().synced = true;
            tracing::info!(
                endpoints = self.endpoints.len(),
                identities = self.identities.len(),
                nodes = self.nodes.len(),
                "initial sync complete"
            );
        }
        backoff.reset();
        self.progress.lock().last_error = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                changed = lease_lost.changed() => if changed.is_ok() {
                    tracing::warn!("lease lost: writing every key again");
                    self.adopt().await?;
                    self.converge_all().await?;
                    self.write_canaries().await?;
                },
                changed = generations.changed() => if changed.is_ok() {
                    self.feed.take();
                    self.converge_all().await?;
                },
                _ = self.feed.changed() => {
                    let dirty = self.feed.take();
                    self.converge_dirty(dirty).await?;
                }
            }
        }
    }

    /// Reads what the export etcd holds (an earlier run's keys, or what a lost lease or a
    /// failed write left), and writes the cluster config.
    async fn adopt(&mut self) -> Result<(), SyncError> {
        for keys in [
            &mut self.endpoints,
            &mut self.identities,
            &mut self.nodes,
            &mut self.services,
            &mut self.config,
        ] {
            keys.adopt().await?;
        }
        let config = CiliumClusterConfig {
            id: self.cluster.id,
            capabilities: Capabilities {
                synced_canaries: true,
                max_connected_clusters: self.cluster.max_connected_clusters,
                ..Default::default()
            },
            ..Default::default()
        };
        let key = cluster_config_key(&self.cluster.name);
        self.config
            .converge([(key, Some(Bytes::from(config.to_json_bytes())))])
            .await
    }

    async fn write_canaries(&mut self) -> Result<(), SyncError> {
        for resource in [
            Resource::Nodes,
            Resource::Identities,
            Resource::Endpoints,
            Resource::Services,
        ] {
            let lease = self.canary_leases.get(&resource).copied().unwrap_or(0);
            let lease = self
                .writer
                .write_canary(&resource.source_canary_key(&self.cluster.name), lease)
                .await?;
            self.canary_leases.insert(resource, lease);
        }
        Ok(())
    }

    /// Decides every endpoint again and makes the export etcd hold exactly the result.
    async fn converge_all(&mut self) -> Result<(), SyncError> {
        // Nodes first: endpoint decisions read their zone and region.
        let mut nodes = HashMap::new();
        let mut present = HashSet::new();
        for object in self.stores.nodes.state() {
            let name = object.key().name;
            let Some(value) = self.node_value(&object) else {
                continue;
            };
            self.node_cache.update(&name, Some(&value));
            nodes.insert(Resource::Nodes.source_key(&self.cluster.name, &name), value);
            present.insert(name);
        }
        for gone in self.known_nodes.difference(&present) {
            self.node_cache.update(gone, None);
        }
        self.known_nodes = present;
        self.topology.mark_unchanged();
        self.nodes.converge_all(&nodes).await?;

        // Endpoints listed, and the ones that contributed before and may be gone.
        let keys: HashSet<ObjectKey> = self
            .stores
            .endpoints
            .state()
            .iter()
            .map(|e| e.key())
            .chain(self.claims.endpoints().cloned())
            .collect();
        self.redecide(keys);
        let identities: HashMap<String, Bytes> = self
            .claims
            .all_identities()
            .map(|(id, value)| (self.identity_key(id), value.clone()))
            .collect();
        let endpoints: HashMap<String, Bytes> = self
            .claims
            .all_endpoints()
            .map(|(ip, value)| (format!("{ENDPOINTS_SOURCE_PREFIX}{ip}"), value))
            .collect();
        self.identities.converge_all(&identities).await?;
        self.endpoints.converge_all(&endpoints).await?;
        self.services.converge_all(&HashMap::new()).await?;
        self.record_written();
        Ok(())
    }

    /// Decides again what `dirty` affects and writes the difference.
    async fn converge_dirty(&mut self, dirty: Dirty) -> Result<(), SyncError> {
        if dirty.all {
            return self.converge_all().await;
        }
        let mut nodes = Vec::with_capacity(dirty.nodes.len());
        for name in dirty.nodes {
            let value = self
                .stores
                .nodes
                .get(&ObjectRef::new(&name))
                .and_then(|object| self.node_value(&object));
            self.node_cache.update(&name, value.as_ref());
            if value.is_some() {
                self.known_nodes.insert(name.clone());
            } else {
                self.known_nodes.remove(&name);
            }
            nodes.push((Resource::Nodes.source_key(&self.cluster.name, &name), value));
        }
        self.nodes.converge(nodes).await?;
        if self.topology.has_changed().unwrap_or(false) {
            // A node's zone or region changed: any decision may read it.
            return self.converge_all().await;
        }

        let mut keys = dirty.endpoints;
        for namespace in &dirty.namespaces {
            keys.extend(
                self.stores
                    .endpoints
                    .state_filter(|e| e.meta().namespace.as_ref() == Some(namespace))
                    .iter()
                    .map(|e| e.key()),
            );
        }
        let Touched {
            endpoints,
            identities,
            ..
        } = self.redecide(keys);
        let identities: Vec<_> = identities
            .into_iter()
            .map(|id| (self.identity_key(id), self.claims.identity_value(id)))
            .collect();
        let endpoints: Vec<_> = endpoints
            .into_iter()
            .map(|ip| {
                let value = self.claims.endpoint_value(&ip);
                (format!("{ENDPOINTS_SOURCE_PREFIX}{ip}"), value)
            })
            .collect();
        self.identities.converge(identities).await?;
        self.endpoints.converge(endpoints).await?;
        self.record_written();
        Ok(())
    }

    /// Decides the endpoints `keys` again (the filters run here, off the async workers).
    fn redecide(&mut self, keys: impl IntoIterator<Item = ObjectKey>) -> Touched {
        tokio::task::block_in_place(|| {
            let mut all = Touched::default();
            for key in keys {
                let contribution = self.contribution(&key);
                let touched = self.claims.set(&key, contribution);
                for forgotten in &touched.forgotten {
                    self.hook.forget(forgotten);
                }
                all.endpoints.extend(touched.endpoints);
                all.identities.extend(touched.identities);
            }
            all
        })
    }

    /// What the endpoint `key` publishes: its addresses the export hook lets out, given
    /// its Pod's labels and annotations and its Namespace's annotations.
    fn contribution(&self, key: &ObjectKey) -> Contribution {
        let by_name = ObjectRef::new(&key.name).within(&key.namespace);
        let Some(object) = self.stores.endpoints.get(&by_name) else {
            return Contribution::default();
        };
        let endpoint = match object.object() {
            Ok(endpoint) => endpoint,
            Err(why) => {
                let decided = key.to_string();
                if self.hook.invalid(&decided, why.to_string()) {
                    tracing::warn!(endpoint = %key, error = why, "not exporting a malformed CiliumEndpoint");
                }
                return Contribution {
                    decided: vec![decided],
                    ..Default::default()
                };
            }
        };
        let pod = self
            .stores
            .pods
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        let namespace_annotations = self
            .stores
            .namespaces
            .get(&ObjectRef::new(&key.namespace))
            .and_then(|n| n.metadata.annotations.clone())
            .unwrap_or_default();
        let local = self.hook.runtime().local();
        let mut contribution = Contribution::default();
        for (source_key, pair) in ciliumendpoint_to_pairs(endpoint) {
            let ip = source_key
                .strip_prefix(ENDPOINTS_SOURCE_PREFIX)
                .unwrap_or(&source_key);
            let decided = format!("{key} {ip}");
            let value = match &pod {
                None => {
                    self.hook.skip(&decided, NO_POD);
                    None
                }
                Some(pod) => {
                    let labels = pod.metadata.labels.clone().unwrap_or_default();
                    let mut input = endpoint_input(
                        ip,
                        &pair,
                        &local.cluster,
                        &self.node_cache,
                        labels,
                        Some(local),
                    );
                    input.annotations = pod.metadata.annotations.clone().unwrap_or_default();
                    input.namespace_annotations = namespace_annotations.clone();
                    self.hook.decide(&decided, pair, input)
                }
            };
            if let Some(value) = value {
                contribution.endpoints.push((ip.to_string(), value));
            }
            contribution.decided.push(decided);
        }
        let namespace_opted_out = namespace_annotations
            .get(NAMESPACE_GLOBAL)
            .is_some_and(|v| v == "false");
        if pod.is_some() && !namespace_opted_out {
            contribution.identity = identity_entry(endpoint);
        }
        contribution
    }

    /// The node value of a CiliumNode, `None` when its body is malformed.
    fn node_value(&self, object: &CiliumNodeObject) -> Option<Bytes> {
        let node = ciliumnode_to_node(object.object().ok()?, &self.cluster.name, self.cluster.id);
        Some(Bytes::from(node.to_json_bytes()))
    }

    fn identity_key(&self, id: u32) -> String {
        Resource::Identities.source_key(&self.cluster.name, &id.to_string())
    }

    fn record_written(&self) {
        self.progress.lock().written = BTreeMap::from([
            ("endpoints".to_string(), self.endpoints.len()),
            ("identities".to_string(), self.identities.len()),
            ("nodes".to_string(), self.nodes.len()),
        ]);
    }
}

/// The identity entry of an endpoint, from its `status.identity`: the numeric identity and
/// the sorted label list clustermesh-apiserver writes for a CiliumIdentity with these
/// security labels. Reserved identities and identities without labels have none.
fn identity_entry(endpoint: &CiliumEndpoint) -> Option<(u32, Bytes)> {
    let identity = endpoint.status.identity.as_ref()?;
    // Go converts with NumericIdentity(id), as the endpoint entry's `ID` is converted.
    let id = identity.id as u32;
    let labels = IdentityLabels::from_labels(identity.labels.iter().map(|l| Label::parse(l)));
    (id >= MIN_NUMERIC_IDENTITY && !labels.is_empty())
        .then(|| (id, Bytes::from(labels.to_sorted_list())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(json: serde_json::Value) -> CiliumEndpoint {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn identity_entries_are_cilium_label_lists() {
        let with_labels = endpoint(serde_json::json!({"status": {"identity": {"id": 196915,
            "labels": ["k8s:io.kubernetes.pod.namespace=bar", "k8s:app=baz", "k8s:io.cilium.k8s.policy.cluster=cluster3"]}}}));
        let (id, value) = identity_entry(&with_labels).unwrap();
        assert_eq!(id, 196915);
        // cilium-samples misc.json: the identity value clustermesh-apiserver writes.
        assert_eq!(
            value,
            "k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster3;k8s:io.kubernetes.pod.namespace=bar;"
        );
        let reserved = endpoint(
            serde_json::json!({"status": {"identity": {"id": 4, "labels": ["reserved:health"]}}}),
        );
        assert_eq!(identity_entry(&reserved), None);
        let unlabelled = endpoint(serde_json::json!({"status": {"identity": {"id": 70000}}}));
        assert_eq!(identity_entry(&unlabelled), None);
        assert_eq!(identity_entry(&endpoint(serde_json::json!({}))), None);
    }
}
