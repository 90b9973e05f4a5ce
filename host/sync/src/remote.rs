//! One remote cluster mirrored into the local cache, as kvstoremesh does it, with the
//! endpoint reflector asking the import hook.
//!
//! Per session (one connection and one cluster config of the remote):
//! - the cached cluster config is enforced: written at start, every
//!   [`RemoteOptions::config_enforce_period`], after a lost lease, and whenever someone
//!   else changes or deletes it (agents that reconnect without it never attach the
//!   remote);
//! - a reflector per resource the remote exports, each gated on the remote's own sync
//!   canary when its config says it writes them, so a refilling remote etcd is never
//!   mistaken for an empty one;
//! - for a resource the remote does not export, what an earlier session left is drained
//!   and the canary is written anyway (agents wait for every canary);
//! - endpoints start once nodes and identities are synced (decisions need both);
//! - a change of the remote's own cluster config ends the session and starts a new one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::Client;
use meshfilter_api::{ReflectorStatus, RemoteStatus};
use meshfilter_cilium::keys::{Resource, cluster_config_key};
use meshfilter_cilium::{CiliumClusterConfig, ClusterName, KvstoreValue};
use meshfilter_etcd::{Backoff, Change, EtcdConfig, WatchEvent, Watcher};
use meshfilter_filter_runtime::FilterRuntime;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::caches::{IdentityCache, NodeCache};
use crate::drain::Disabled;
use crate::error::SyncError;
use crate::metrics::SyncMetrics;
use crate::mirrors::{ImportMirror, VerbatimMirror};
use crate::reflector::{MAX_ERROR_CHARS, Mirror, Reflector, ReflectorLimits, bounded};
use crate::target::TargetKeys;
use crate::writer::TargetWriter;

/// How one remote is mirrored.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Import hook in shadow mode: decisions are made, counted and shown, but every
    /// endpoint is mirrored, so a new filter can be judged before it removes anything.
    pub shadow_import: bool,
    /// Bounds on what each resource accepts from the remote.
    pub limits: BTreeMap<Resource, ReflectorLimits>,
    /// How often the cached cluster config is written again even if nothing changed
    /// (Cilium's enforcer: every 5 minutes).
    pub config_enforce_period: Duration,
    /// Retry delays: connecting, relisting, rewriting.
    pub backoff: Backoff,
}

impl Default for RemoteOptions {
    fn default() -> RemoteOptions {
        RemoteOptions {
            shadow_import: false,
            limits: BTreeMap::new(),
            config_enforce_period: Duration::from_secs(5 * 60),
            backoff: Backoff::default(),
        }
    }
}

impl RemoteOptions {
    fn limits(&self, resource: Resource) -> ReflectorLimits {
        self.limits.get(&resource).copied().unwrap_or_default()
    }
}

type ResourceHandles = BTreeMap<String, (Arc<Mutex<ReflectorStatus>>, watch::Receiver<bool>)>;

/// Everything needed to mirror one remote cluster.
pub struct RemoteCluster {
    name: ClusterName,
    etcd: EtcdConfig,
    local: Arc<TargetWriter>,
    runtime: Arc<FilterRuntime>,
    options: RemoteOptions,
    metrics: SyncMetrics,
    handle: RemoteStatusHandle,
}

impl RemoteCluster {
    /// A remote cluster `name` reached with `etcd`, mirrored through `local`.
    pub fn new(
        name: ClusterName,
        etcd: EtcdConfig,
        local: Arc<TargetWriter>,
        runtime: Arc<FilterRuntime>,
        options: RemoteOptions,
        metrics: SyncMetrics,
    ) -> RemoteCluster {
        let handle = RemoteStatusHandle::default();
        handle.status.lock().cluster = name.to_string();
        RemoteCluster {
            name,
            etcd,
            local,
            runtime,
            options,
            metrics,
            handle,
        }
    }

    /// Live status, including every reflector's.
    pub fn status_handle(&self) -> RemoteStatusHandle {
        self.handle.clone()
    }

    /// Connects (retrying with backoff), reads the remote's cluster config, enforces the
    /// cached config locally and runs the reflectors until `cancel`. A change of the
    /// remote's cluster config (its cluster ID, or what it exports) ends the session and
    /// starts a new one with the new config.
    pub async fn run(mut self, cancel: CancellationToken) {
        let span = tracing::info_span!("remote", cluster = %self.name);
        async move {
            loop {
                let session = cancel.child_token();
                let changed = self.run_session(session.clone()).await;
                session.cancel();
                if cancel.is_cancelled() || !changed {
                    return;
                }
                self.metrics
                    .config_changes
                    .get_or_create(&self.metrics.cluster(self.name.as_str()))
                    .inc();
                let mut s = self.handle.status.lock();
                s.config_changes += 1;
                s.connected = false;
                s.synced = false;
            }
        }
        .instrument(span)
        .await
    }

    /// One connection: returns whether it ended because the remote's config changed.
    async fn run_session(&mut self, cancel: CancellationToken) -> bool {
        let Some((client, remote_config)) = self.connect(&cancel).await else {
            return false;
        };
        let label = self.metrics.cluster(self.name.as_str());
        self.metrics.connected.get_or_create(&label).set(1);
        {
            let mut s = self.handle.status.lock();
            s.connected = true;
            s.last_error = None;
        }
        let mut tasks = JoinSet::new();
        *self.handle.resources.lock() = BTreeMap::new();
        // Agents start watching a cluster only once its config is there.
        tasks.spawn(
            ConfigEnforcer {
                cluster: self.name.clone(),
                writer: self.local.clone(),
                value: Bytes::from(remote_config.as_cached().to_json_bytes()),
                period: self.options.config_enforce_period,
                backoff: self.options.backoff.clone(),
                metrics: self.metrics.clone(),
                handle: self.handle.clone(),
            }
            .run(cancel.clone())
            .in_current_span(),
        );
        let session = Session {
            remote: self,
            client: client.clone(),
            config: remote_config.clone(),
        };
        let nodes = NodeCache::new(self.name.clone());
        *self.handle.nodes.lock() = Some(nodes.clone());
        let identities = IdentityCache::new(self.name.clone());

        let node_cache = nodes.clone();
        let nodes_mirror = session
            .verbatim(Resource::Nodes)
            .observed_by(move |suffix, value| node_cache.update(suffix, value));
        let identity_cache = identities.clone();
        let identities_mirror = session
            .verbatim(Resource::Identities)
            .observed_by(move |suffix, value| identity_cache.update(suffix, value));
        let mut nodes_synced =
            session.spawn(&mut tasks, &cancel, Arc::new(nodes_mirror), Resource::Nodes);
        let mut identities_synced = session.spawn(
            &mut tasks,
            &cancel,
            Arc::new(identities_mirror),
            Resource::Identities,
        );
        for resource in [
            Resource::Services,
            Resource::ServiceExports,
            Resource::EndpointSlices,
        ] {
            if session.config.exports(resource) {
                let mirror = Arc::new(session.verbatim(resource));
                session.spawn(&mut tasks, &cancel, mirror, resource);
            } else {
                session.spawn_disabled(&mut tasks, &cancel, resource);
            }
        }
        // Endpoints are decided with their node's region and their identity's labels, so
        // they start once both are known.
        let both_synced = async {
            let _ = nodes_synced.wait_for(|s| *s).await;
            let _ = identities_synced.wait_for(|s| *s).await;
        };
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = both_synced => {
                let source_prefix = session.source_prefix(Resource::Endpoints);
                *self.handle.source.lock() = Some((client.clone(), source_prefix.clone()));
                let endpoints = ImportMirror::new(
                    self.options.shadow_import,
                    self.name.clone(),
                    source_prefix,
                    Resource::Endpoints.cache_prefix(&self.name),
                    Resource::Endpoints.cache_canary_key(&self.name),
                    self.runtime.clone(),
                    nodes.clone(),
                    identities.clone(),
                    self.metrics.clone(),
                    cancel.clone(),
                );
                endpoints.check_identity_range(remote_config.id, remote_config.capabilities.max_connected_clusters);
                *self.handle.endpoints.lock() = Some(endpoints.clone());
                session.spawn(&mut tasks, &cancel, endpoints, Resource::Endpoints);
            }
        }
        let changed = tokio::select! {
            _ = cancel.cancelled() => false,
            () = self.config_changed(&client, &remote_config, &cancel) => true,
        };
        cancel.cancel();
        while tasks.join_next().await.is_some() {}
        self.metrics.connected.get_or_create(&label).set(0);
        changed
    }

    /// Connects and reads the remote's cluster config, retrying with backoff; `None` when
    /// cancelled first.
    async fn connect(
        &mut self,
        cancel: &CancellationToken,
    ) -> Option<(Client, CiliumClusterConfig)> {
        let mut backoff = self.options.backoff.clone();
        loop {
            let attempt = async {
                let client = self.etcd.connect(self.name.as_str()).await?;
                let config = self.read_config(&client).await?;
                Ok::<_, SyncError>((client, config))
            };
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return None,
                outcome = attempt => outcome,
            };
            match outcome {
                Ok(connected) => return Some(connected),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the remote cluster");
                    self.metrics
                        .connect_failures
                        .get_or_create(&self.metrics.cluster(self.name.as_str()))
                        .inc();
                    {
                        let mut s = self.handle.status.lock();
                        s.connect_failures += 1;
                        s.last_error = Some(bounded(e.to_string(), MAX_ERROR_CHARS));
                    }
                    if !backoff.wait(cancel).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Reads the remote's cluster config through `client`.
    async fn read_config(&self, client: &Client) -> Result<CiliumClusterConfig, SyncError> {
        let key = cluster_config_key(&self.name);
        let mut kv = client.kv_client();
        let resp = tokio::time::timeout(Duration::from_secs(10), kv.get(key.as_bytes(), None))
            .await
            .map_err(|_| SyncError::timeout(self.name.as_str(), "reading the cluster config"))?
            .map_err(SyncError::etcd(self.name.as_str()))?;
        let Some(kv) = resp.kvs().first() else {
            return Err(SyncError::ClusterConfig {
                cluster: self.name.to_string(),
                message: format!("{key} is missing (is the clustermesh-apiserver running?)"),
            });
        };
        CiliumClusterConfig::parse(&self.name, &key, kv.value()).map_err(|e| {
            SyncError::ClusterConfig {
                cluster: self.name.to_string(),
                message: e.to_string(),
            }
        })
    }

    /// Resolves when the remote's cluster config differs from `current`; never while it
    /// stays the same (a missing or unparsable config is not a change: the reflectors
    /// keep going with what they have).
    async fn config_changed(
        &self,
        client: &Client,
        current: &CiliumClusterConfig,
        cancel: &CancellationToken,
    ) {
        let key = cluster_config_key(&self.name);
        let (mut events, _task) = Watcher::key(self.name.as_str(), client.clone(), key.clone())
            .with_backoff(self.options.backoff.clone())
            .spawn(4, cancel.child_token());
        let differs =
            |value: &[u8]| {
                CiliumClusterConfig::parse(&self.name, &key, value).is_ok_and(|now| {
                let changed = &now != current;
                if changed {
                    tracing::warn!(old_id = current.id, new_id = now.id,
                        "remote cluster config changed: reconnecting and listing everything again");
                }
                changed
            })
            };
        while let Some(event) = events.recv().await {
            let changed = match event {
                WatchEvent::InitPage(entries) => entries.iter().any(|e| differs(&e.value)),
                WatchEvent::Changes(changes) => changes.iter().any(|c| match c {
                    Change::Put(e) => differs(&e.value),
                    Change::Delete { .. } => false,
                }),
                _ => false,
            };
            if changed {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

/// What one session of a remote knows: its client and its config.
struct Session<'a> {
    remote: &'a RemoteCluster,
    client: Client,
    config: CiliumClusterConfig,
}

impl Session<'_> {
    /// Where `resource` is read at the remote: its state prefix, or its cache prefix when
    /// the remote is itself a kvstoremesh cache (`cmapisrv-mock`, chained kvstoremesh).
    fn source_prefix(&self, resource: Resource) -> String {
        if self.config.capabilities.cached {
            resource.cache_prefix(&self.remote.name)
        } else {
            resource.source_prefix(&self.remote.name)
        }
    }

    /// The remote's own canary for `resource`, which gates every list, when its config
    /// says it writes canaries.
    fn gate(&self, resource: Resource) -> Option<String> {
        let name = &self.remote.name;
        self.config.capabilities.synced_canaries.then(|| {
            if self.config.capabilities.cached {
                resource.cache_canary_key(name)
            } else {
                resource.source_canary_key(name)
            }
        })
    }

    /// A verbatim mirror of `resource` into the cache (what kvstoremesh does).
    fn verbatim(&self, resource: Resource) -> VerbatimMirror {
        let name = &self.remote.name;
        VerbatimMirror::new(
            resource.name(),
            self.source_prefix(resource),
            resource.cache_prefix(name),
            Some(resource.cache_canary_key(name)),
        )
    }

    fn spawn<M: Mirror>(
        &self,
        tasks: &mut JoinSet<()>,
        cancel: &CancellationToken,
        mirror: Arc<M>,
        resource: Resource,
    ) -> watch::Receiver<bool> {
        let remote = self.remote;
        let reflector = Reflector::new(
            remote.name.as_str(),
            self.client.clone(),
            remote.local.clone(),
            mirror,
            remote.options.backoff.clone(),
            remote.metrics.clone(),
        )
        .gated_on(self.gate(resource))
        .with_limits(remote.options.limits(resource));
        let synced = reflector.synced();
        remote.handle.resources.lock().insert(
            reflector.name().to_string(),
            (reflector.status(), synced.clone()),
        );
        tasks.spawn(reflector.run(cancel.clone()).in_current_span());
        synced
    }

    /// For a resource the remote does not export: drains what an earlier session left in
    /// the cache and writes its canary (agents wait for every canary).
    fn spawn_disabled(
        &self,
        tasks: &mut JoinSet<()>,
        cancel: &CancellationToken,
        resource: Resource,
    ) {
        let remote = self.remote;
        let status: Arc<Mutex<ReflectorStatus>> = Arc::default();
        let (synced_tx, synced) = watch::channel(false);
        remote
            .handle
            .resources
            .lock()
            .insert(resource.name().to_string(), (status.clone(), synced));
        let disabled = Disabled {
            target: TargetKeys::new(remote.local.clone(), resource.cache_prefix(&remote.name)),
            canary: resource.cache_canary_key(&remote.name),
            writer: remote.local.clone(),
            backoff: remote.options.backoff.clone(),
            status,
            synced: synced_tx,
        };
        tasks.spawn(disabled.run(cancel.clone()).in_current_span());
    }
}

/// Keeps `cilium/cluster-config/<cluster>` in the local etcd: written at start, every
/// `period`, after a lost lease, and whenever someone else changes or deletes it.
struct ConfigEnforcer {
    cluster: ClusterName,
    writer: Arc<TargetWriter>,
    value: Bytes,
    period: Duration,
    backoff: Backoff,
    metrics: SyncMetrics,
    handle: RemoteStatusHandle,
}

impl ConfigEnforcer {
    async fn run(mut self, cancel: CancellationToken) {
        let key = cluster_config_key(&self.cluster);
        let mut target = TargetKeys::exact(self.writer.clone(), key.clone());
        let (mut events, _task) = Watcher::key("local", self.writer.client(), key.clone())
            .with_backoff(self.backoff.clone())
            .spawn(4, cancel.child_token());
        let mut lost = self.writer.lease_lost();
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        loop {
            // Read what is there, then put ours unless it is there on our lease.
            let enforced = async {
                target.adopt().await?;
                let before = target.get(&key).cloned();
                target
                    .converge([(key.clone(), Some(self.value.clone()))])
                    .await?;
                Ok::<_, SyncError>(before.as_ref() != Some(&self.value))
            };
            match enforced.await {
                Ok(rewritten) => {
                    self.backoff.reset();
                    self.metrics
                        .config_enforced
                        .get_or_create(&self.metrics.cluster(self.cluster.as_str()))
                        .inc();
                    self.handle.status.lock().config_enforced += 1;
                    if rewritten {
                        tracing::debug!(key, "cluster config written");
                    }
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "cannot write the cluster config; retrying");
                    if !self.backoff.wait(&cancel).await {
                        return;
                    }
                    continue;
                }
            }
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => break,
                    changed = lost.changed() => if changed.is_ok() { break } else { return },
                    event = events.recv() => match event {
                        // Someone else wrote or deleted it.
                        Some(WatchEvent::Changes(changes)) => {
                            let ours = changes.iter().all(|c| matches!(c, Change::Put(e) if e.value == self.value && self.writer.live_leases().contains(&e.lease)));
                            if !ours {
                                tracing::warn!(key, "the cluster config was changed or deleted by someone else: writing it again");
                                break;
                            }
                        }
                        Some(_) => {}
                        None => return,
                    },
                }
            }
        }
    }
}

/// Reads a remote cluster's live status.
#[derive(Clone, Default)]
pub struct RemoteStatusHandle {
    status: Arc<Mutex<RemoteStatus>>,
    endpoints: Arc<Mutex<Option<Arc<ImportMirror>>>>,
    source: Arc<Mutex<Option<(Client, String)>>>,
    nodes: Arc<Mutex<Option<Arc<NodeCache>>>>,
    resources: Arc<Mutex<ResourceHandles>>,
}

impl RemoteStatusHandle {
    /// A snapshot of the status.
    pub fn snapshot(&self) -> RemoteStatus {
        let mut s = self.status.lock().clone();
        let resources = self.resources.lock();
        s.resources = resources
            .iter()
            .map(|(k, (st, _))| (k.clone(), st.lock().clone()))
            .collect();
        let endpoints = self.endpoints.lock().clone();
        s.synced = endpoints.is_some()
            && resources.contains_key("endpoints")
            && resources.values().all(|(_, synced)| *synced.borrow());
        if let Some(e) = endpoints {
            s.endpoints = e.stats();
        }
        s
    }

    /// Why the endpoint `ip` of this cluster is or is not mirrored: reads its current
    /// source value from the remote etcd and asks the import hook again.
    pub async fn explain(&self, ip: &str) -> Result<crate::mirrors::Explanation, SyncError> {
        let cluster = self.status.lock().cluster.clone();
        let (Some(mirror), Some((client, prefix))) = (self.endpoints(), self.source.lock().clone())
        else {
            return Err(SyncError::ClusterConfig {
                cluster,
                message: "endpoints are not mirrored yet".into(),
            });
        };
        let mut kv = client.kv_client();
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            kv.get(format!("{prefix}{ip}"), None),
        )
        .await
        .map_err(|_| SyncError::timeout(&cluster, "reading an endpoint"))?
        .map_err(SyncError::etcd(&cluster))?;
        let value = resp.kvs().first().map(|kv| kv.value().to_vec());
        Ok(tokio::task::block_in_place(|| {
            mirror.explain(ip, value.as_deref())
        }))
    }

    /// Whether one of this cluster's node pod CIDRs holds `ip`.
    pub fn owns(&self, ip: &std::net::IpAddr) -> bool {
        self.nodes
            .lock()
            .as_ref()
            .is_some_and(|n| n.by_pod_ip(ip).is_some())
    }

    /// The remote etcd client and the prefix endpoints are read from, once connected.
    pub fn source(&self) -> Option<(Client, String)> {
        self.source.lock().clone()
    }

    /// The import mirror, once the endpoints reflector runs.
    pub fn endpoints(&self) -> Option<Arc<ImportMirror>> {
        self.endpoints.lock().clone()
    }
}
