//! One remote cluster mirrored into the local cache, as kvstoremesh does it, with the
//! endpoint reflector asking the import hook.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::Client;
use meshfilter_cilium::cluster_config::EndpointSlicesExportMode;
use meshfilter_cilium::keys::{Resource, cluster_config_key};
use meshfilter_cilium::{CiliumClusterConfig, ClusterName, KvstoreValue};
use meshfilter_filter_runtime::FilterRuntime;
use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::caches::{IdentityCache, NodeCache};
use crate::error::SyncError;
use crate::etcd::EtcdConfig;
use crate::mirrors::{ImportMirror, ImportStats, VerbatimMirror};
use crate::reflector::{Mirror, Reflector, ReflectorStatus};
use crate::writer::{TargetWriter, WriteOp};

/// Status of one remote cluster.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteStatus {
    /// Cluster name.
    pub cluster: String,
    /// Connected and its cluster config read.
    pub connected: bool,
    /// Every reflector finished its first sync.
    pub synced: bool,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Last connection error.
    pub last_error: Option<String>,
    /// Times the remote's cluster config changed and everything was re-listed.
    pub config_changes: u64,
    /// Per resource.
    pub resources: BTreeMap<String, ReflectorStatus>,
    /// What the import hook kept and filtered.
    pub endpoints: ImportStats,
}

/// Everything needed to mirror one remote cluster.
pub struct RemoteCluster {
    name: ClusterName,
    etcd: EtcdConfig,
    local: Arc<TargetWriter>,
    runtime: Arc<FilterRuntime>,
    backoff: Backoff,
    status: Arc<Mutex<RemoteStatus>>,
    endpoints: Arc<Mutex<Option<Arc<ImportMirror>>>>,
    source: Arc<Mutex<Option<(Client, String)>>>,
    nodes: Arc<Mutex<Option<Arc<NodeCache>>>>,
    shadow_import: bool,
}

impl RemoteCluster {
    /// Shadow mode for the import hook: decisions are made, counted and shown, but every
    /// endpoint is mirrored, so a new filter can be judged before it removes anything.
    pub fn with_shadow_import(mut self, shadow: bool) -> RemoteCluster {
        self.shadow_import = shadow;
        self
    }

    /// A remote cluster `name` reached with `etcd`, mirrored through `local`.
    pub fn new(
        name: ClusterName,
        etcd: EtcdConfig,
        local: Arc<TargetWriter>,
        runtime: Arc<FilterRuntime>,
        backoff: Backoff,
    ) -> RemoteCluster {
        let status = Arc::new(Mutex::new(RemoteStatus {
            cluster: name.to_string(),
            ..Default::default()
        }));
        RemoteCluster {
            name,
            etcd,
            local,
            runtime,
            backoff,
            status,
            endpoints: Arc::default(),
            source: Arc::default(),
            nodes: Arc::default(),
            shadow_import: false,
        }
    }

    /// Live status, including every reflector's.
    pub fn status_handle(&self) -> RemoteStatusHandle {
        RemoteStatusHandle {
            status: self.status.clone(),
            endpoints: self.endpoints.clone(),
            source: self.source.clone(),
            nodes: self.nodes.clone(),
            resources: Arc::default(),
        }
    }

    /// Connects (retrying with backoff), reads the remote's cluster config, writes the
    /// cached config locally and runs the reflectors until `cancel`. A change of the
    /// remote's cluster config (its cluster ID, or what it exports) ends the session and
    /// starts a new one with the new config: the reflectors re-list, the identity range
    /// follows the new ID, and the cached config is rewritten.
    pub async fn run(mut self, cancel: CancellationToken, handle: RemoteStatusHandle) {
        loop {
            let session = cancel.child_token();
            let changed = self.run_session(session.clone(), &handle).await;
            if cancel.is_cancelled() || !changed {
                return;
            }
            let mut s = self.status.lock();
            s.config_changes += 1;
            s.connected = false;
            s.synced = false;
        }
    }

    /// One connection: returns whether it ended because the remote's config changed.
    async fn run_session(
        &mut self,
        cancel: CancellationToken,
        handle: &RemoteStatusHandle,
    ) -> bool {
        let handle = handle.clone();
        let (client, remote_config) = loop {
            match self.connect().await {
                Ok(ok) => break ok,
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(cluster = %self.name, error = %e, retry_in = ?delay, "cannot reach remote cluster");
                    {
                        let mut s = self.status.lock();
                        s.connect_failures += 1;
                        s.last_error = Some(e.to_string());
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        {
            let mut s = self.status.lock();
            s.connected = true;
            s.last_error = None;
        }
        // Agents start watching a cluster only once its config is there.
        let cached = remote_config.as_cached();
        let key = cluster_config_key(&self.name);
        loop {
            match self
                .local
                .apply(&[WriteOp::Put {
                    key: key.clone(),
                    value: Bytes::from(cached.to_json_bytes()),
                }])
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(cluster = %self.name, error = %e, "cannot write the cluster config locally; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return false,
                        _ = tokio::time::sleep(self.backoff.next_delay()) => {}
                    }
                }
            }
        }
        self.backoff.reset();
        let source_is_cache = remote_config.capabilities.cached;
        let prefix = |r: Resource| {
            if source_is_cache {
                r.cache_prefix(&self.name)
            } else {
                r.source_prefix(&self.name)
            }
        };
        let nodes = NodeCache::new(self.name.clone());
        *self.nodes.lock() = Some(nodes.clone());
        let identities = IdentityCache::new(self.name.clone());
        let mut tasks = JoinSet::new();

        let node_cache = nodes.clone();
        let nodes_mirror = VerbatimMirror::new(
            "nodes",
            prefix(Resource::Nodes),
            Resource::Nodes.cache_prefix(&self.name),
            Some(Resource::Nodes.cache_canary_key(&self.name)),
        )
        .observed_by(move |suffix, value| node_cache.update(suffix, value));
        let identity_cache = identities.clone();
        let identities_mirror = VerbatimMirror::new(
            "identities",
            prefix(Resource::Identities),
            Resource::Identities.cache_prefix(&self.name),
            Some(Resource::Identities.cache_canary_key(&self.name)),
        )
        .observed_by(move |suffix, value| identity_cache.update(suffix, value));
        let mut nodes_synced = self.spawn(&mut tasks, &cancel, &handle, nodes_mirror, &client);
        let mut identities_synced =
            self.spawn(&mut tasks, &cancel, &handle, identities_mirror, &client);
        // As kvstoremesh enables them: service exports when the remote says it exports
        // them, endpoint slices (opaque zstd protobuf, copied as bytes) when it runs
        // service v2, legacy services unless it runs service v2 only.
        let slices = &remote_config.capabilities.endpoint_slices_export_mode;
        for resource in [
            Resource::Services,
            Resource::ServiceExports,
            Resource::EndpointSlices,
        ] {
            let enabled = match resource {
                Resource::ServiceExports => {
                    remote_config.capabilities.service_exports_enabled.is_some()
                }
                Resource::EndpointSlices => *slices != EndpointSlicesExportMode::ServicesOnly,
                Resource::Services => *slices != EndpointSlicesExportMode::EndpointSlicesOnly,
                _ => true,
            };
            if !enabled {
                continue;
            }
            let mirror = VerbatimMirror::new(
                resource.name(),
                prefix(resource),
                resource.cache_prefix(&self.name),
                Some(resource.cache_canary_key(&self.name)),
            );
            self.spawn(&mut tasks, &cancel, &handle, mirror, &client);
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
                *self.source.lock() = Some((client.clone(), prefix(Resource::Endpoints)));
                let endpoints = ImportMirror::new(
                    self.shadow_import,
                    self.name.clone(),
                    prefix(Resource::Endpoints),
                    Resource::Endpoints.cache_prefix(&self.name),
                    Resource::Endpoints.cache_canary_key(&self.name),
                    self.runtime.clone(),
                    nodes.clone(),
                    identities.clone(),
                    cancel.clone(),
                );
                endpoints.check_identity_range(remote_config.id, remote_config.capabilities.max_connected_clusters);
                *self.endpoints.lock() = Some(endpoints.clone());
                self.spawn_arc(&mut tasks, &cancel, &handle, endpoints, &client);
            }
        }
        let changed = tokio::select! {
            _ = cancel.cancelled() => false,
            () = self.config_changed(&client, &remote_config) => true,
        };
        cancel.cancel();
        while tasks.join_next().await.is_some() {}
        changed
    }

    /// Resolves when the remote's cluster config differs from `current`; never while it
    /// stays the same (watch errors are retried, a missing or unparsable config is not a
    /// change: the reflectors keep going with what they have).
    async fn config_changed(&self, client: &Client, current: &CiliumClusterConfig) {
        let key = cluster_config_key(&self.name);
        loop {
            let mut watch = client.watch_client();
            if let Ok(mut stream) = watch.watch(key.as_bytes(), None).await {
                // A change between the first read and this watch would be missed: read
                // once more now that the watch is in place.
                if let Ok((_, now)) = self.connect_with(client).await
                    && &now != current
                {
                    self.log_config_change(current, &now);
                    return;
                }
                while let Ok(Some(resp)) = stream.message().await {
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        if event.event_type() != etcd_client::EventType::Put {
                            continue;
                        }
                        if let Ok(now) = CiliumClusterConfig::parse(&self.name, &key, kv.value())
                            && &now != current
                        {
                            self.log_config_change(current, &now);
                            return;
                        }
                    }
                }
            }
            tokio::time::sleep(self.backoff.ceiling()).await;
        }
    }

    fn log_config_change(&self, old: &CiliumClusterConfig, new: &CiliumClusterConfig) {
        tracing::warn!(
            cluster = %self.name,
            old_id = old.id,
            new_id = new.id,
            "remote cluster config changed: reconnecting and re-listing everything"
        );
    }

    fn spawn<M: Mirror>(
        &self,
        tasks: &mut JoinSet<()>,
        cancel: &CancellationToken,
        handle: &RemoteStatusHandle,
        mirror: M,
        client: &Client,
    ) -> tokio::sync::watch::Receiver<bool> {
        self.spawn_arc(tasks, cancel, handle, Arc::new(mirror), client)
    }

    fn spawn_arc<M: Mirror>(
        &self,
        tasks: &mut JoinSet<()>,
        cancel: &CancellationToken,
        handle: &RemoteStatusHandle,
        mirror: Arc<M>,
        client: &Client,
    ) -> tokio::sync::watch::Receiver<bool> {
        let name = mirror.name().to_string();
        let reflector = Reflector::new(
            self.name.as_str(),
            client.clone(),
            self.local.clone(),
            mirror,
            self.backoff.clone(),
        );
        handle
            .resources
            .lock()
            .insert(name, (reflector.status(), reflector.synced()));
        let synced = reflector.synced();
        tasks.spawn(reflector.run(cancel.clone()));
        synced
    }

    async fn connect(&self) -> Result<(Client, CiliumClusterConfig), SyncError> {
        let client = self.etcd.connect(self.name.as_str()).await?;
        self.connect_with(&client).await
    }

    /// Reads the cluster config through `client`.
    async fn connect_with(
        &self,
        client: &Client,
    ) -> Result<(Client, CiliumClusterConfig), SyncError> {
        let client = client.clone();
        let key = cluster_config_key(&self.name);
        let mut kv = client.kv_client();
        let resp = tokio::time::timeout(Duration::from_secs(10), kv.get(key.as_bytes(), None))
            .await
            .map_err(|_| SyncError::Timeout {
                cluster: self.name.to_string(),
                what: "reading the cluster config",
            })?
            .map_err(SyncError::etcd(self.name.as_str()))?;
        let Some(kv) = resp.kvs().first() else {
            return Err(SyncError::ClusterConfig {
                cluster: self.name.to_string(),
                message: format!("{key} is missing (is the clustermesh-apiserver running?)"),
            });
        };
        let config = CiliumClusterConfig::parse(&self.name, &key, kv.value()).map_err(|e| {
            SyncError::ClusterConfig {
                cluster: self.name.to_string(),
                message: e.to_string(),
            }
        })?;
        Ok((client, config))
    }
}

/// Reads a remote cluster's live status.
#[derive(Clone, Default)]
pub struct RemoteStatusHandle {
    status: Arc<Mutex<RemoteStatus>>,
    endpoints: Arc<Mutex<Option<Arc<ImportMirror>>>>,
    source: Arc<Mutex<Option<(Client, String)>>>,
    nodes: Arc<Mutex<Option<Arc<NodeCache>>>>,
    #[allow(clippy::type_complexity)]
    resources: Arc<
        Mutex<
            BTreeMap<
                String,
                (
                    Arc<Mutex<ReflectorStatus>>,
                    tokio::sync::watch::Receiver<bool>,
                ),
            >,
        >,
    >,
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
        s.synced = endpoints.is_some() && resources.values().all(|(_, synced)| *synced.borrow());
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
        let resp = kv
            .get(format!("{prefix}{ip}"), None)
            .await
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
