//! What the node knows about the mesh, kept in step with the local etcd that
//! `meshfilter mesh` (or kvstoremesh) fills, and the program's maps kept in step with
//! that knowledge. Three parts with one job each:
//!
//! - [`MeshIndex`] holds and decides (pure: cluster IDs, nodes, endpoints, what the maps
//!   must hold);
//! - [`MapWriter`] applies the index's changes to the maps and counts what fails;
//! - [`MeshView`] follows the local etcd with one [`Watcher`] per prefix (paged lists,
//!   etcd cluster-ID pinning, a relist after compaction or reconnect), hands each
//!   complete list to the index as a replacement, so what was deleted while the watch was
//!   down goes too, and runs both off the async workers.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use meshfilter_cilium::IpIdentityPair;
use meshfilter_etcd::{Backoff, Change, Client, Entry, WatchEvent, Watcher};
use meshfilter_filter_runtime::CandidateCluster;
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use crate::datapath::{Datapath, IpcacheMode};
use crate::error::InstallError;
use crate::index::{IndexConfig, MeshIndex, Source, StaticCidr};
use crate::maps::{MapKind, MapWriter, WriteFailure, WriteReport};

/// The local etcd's name in logs and errors.
const LOCAL: &str = "local";
/// Events buffered per watched prefix (each a page or a watch response).
const WATCH_QUEUE: usize = 16;
/// How often writes that failed (a full map) are tried again when nothing else made
/// room for them.
const RETRY_EVERY: Duration = Duration::from_secs(10);

/// The local etcd is next to the node: reconnect fast.
fn watch_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
}

/// Counts shown in status and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewStatus {
    /// Known clusters and their IDs.
    pub clusters: BTreeMap<String, u32>,
    /// Remote nodes known.
    pub nodes: usize,
    /// Mesh pod CIDRs in the program's map.
    pub mesh_cidrs: usize,
    /// Endpoints in the local cache.
    pub endpoints: usize,
    /// Endpoints resolved on a miss and wanted in the standalone ipcache.
    pub resolved: usize,
    /// Entries in the standalone ipcache (endpoints, pod CIDRs, world routes).
    pub ipcache_entries: usize,
    /// Entries wanted in a map but not there (failed writes waiting for a retry).
    pub pending: usize,
    /// Failed map writes, by `map/reason` (`ipcache/map-full`, `mesh-cidrs/error`).
    pub write_errors: BTreeMap<String, u64>,
    /// Values that did not parse.
    pub invalid: u64,
    /// Complete lists of the local cache's prefixes so far.
    pub lists: u64,
    /// Interrupted lists and watches.
    pub watch_errors: u64,
    /// Every watched prefix finished its first list.
    pub synced: bool,
}

/// The node's view of the mesh. See the module documentation.
pub struct MeshView {
    datapath: Arc<Datapath>,
    index: RwLock<MeshIndex>,
    /// Also orders writes: the index's changes are taken and applied under this lock.
    writer: Mutex<MapWriter>,
    standalone: bool,
    lists: AtomicU64,
    watch_errors: AtomicU64,
}

impl std::fmt::Debug for MeshView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshView")
            .field("standalone", &self.standalone)
            .finish_non_exhaustive()
    }
}

impl MeshView {
    /// A view feeding `datapath`, with `static_cidrs` always present. In standalone mode
    /// with `mirror_cache`, every endpoint of the local cache is installed as Cilium's
    /// agent would; without it the standalone ipcache holds only what was resolved on a
    /// miss (on-demand only).
    pub fn new(
        datapath: Arc<Datapath>,
        static_cidrs: Vec<StaticCidr>,
        mirror_cache: bool,
    ) -> Arc<MeshView> {
        let standalone = matches!(datapath.mode(), IpcacheMode::Standalone);
        let index = MeshIndex::new(IndexConfig {
            standalone,
            mirror_cache: standalone && mirror_cache,
            static_cidrs,
        });
        let view = Arc::new(MeshView {
            datapath,
            index: RwLock::new(index),
            writer: Mutex::new(MapWriter::new()),
            standalone,
            lists: AtomicU64::new(0),
            watch_errors: AtomicU64::new(0),
        });
        view.flush();
        view
    }

    /// Status counts.
    pub fn status(&self) -> ViewStatus {
        let counts = self.index.read().counts();
        let writer = self.writer.lock();
        let (ipcache_entries, mesh_cidrs) = writer.written();
        ViewStatus {
            clusters: counts.clusters,
            nodes: counts.nodes,
            mesh_cidrs,
            endpoints: counts.endpoints,
            resolved: counts.resolved,
            ipcache_entries,
            pending: writer.pending(),
            write_errors: writer
                .errors()
                .iter()
                .map(|((map, why), n)| (format!("{}/{}", map.as_str(), why.as_str()), *n))
                .collect(),
            invalid: counts.invalid,
            lists: self.lists.load(Ordering::Relaxed),
            watch_errors: self.watch_errors.load(Ordering::Relaxed),
            synced: counts.synced,
        }
    }

    /// Failed map writes so far, by map and reason (for metrics).
    pub fn write_errors(&self) -> Vec<(MapKind, WriteFailure, u64)> {
        let writer = self.writer.lock();
        writer
            .errors()
            .iter()
            .map(|((map, why), n)| (*map, *why, *n))
            .collect()
    }

    /// Name of the cluster with this ID.
    pub fn cluster_name(&self, id: u16) -> Option<String> {
        self.index.read().cluster_name(id).map(str::to_owned)
    }

    /// The mesh pod CIDR containing `addr` and its owner.
    pub fn owner_of(&self, addr: IpAddr) -> Option<(IpNet, String)> {
        let index = self.index.read();
        index.owner_of(addr).map(|(net, c)| (net, c.to_owned()))
    }

    /// Clusters that could own `addr`, as the miss hook sees them (see
    /// [`MeshIndex::candidates`]).
    pub fn candidates(&self, addr: IpAddr, hinted_cluster: Option<&str>) -> Vec<CandidateCluster> {
        self.index.read().candidates(addr, hinted_cluster)
    }

    /// The local cache's entry for `addr`, if one of `clusters` has it.
    pub fn cached(&self, addr: IpAddr, clusters: &[String]) -> Option<(String, IpIdentityPair)> {
        self.index.read().cached(addr, clusters)
    }

    /// Installs an endpoint of `cluster` resolved on a miss into the standalone ipcache
    /// (a no-op in cilium mode, where the agent installs what the local cache holds).
    /// `Ok` only once the entry is in the map; a failed write is forgotten again, so the
    /// next miss of the address tries anew.
    pub fn install_endpoint(
        &self,
        cluster: &str,
        pair: IpIdentityPair,
    ) -> Result<(), InstallError> {
        if !self.standalone {
            return Ok(());
        }
        let mut writer = self.writer.lock();
        let (prefix, changes) = {
            let mut index = self.index.write();
            let prefix = index
                .add_resolved(cluster, pair)
                .ok_or(InstallError::NotAPrefix)?;
            (prefix, index.take_changes())
        };
        let report = writer.apply(changes, &*self.datapath);
        let Some(failure) = report.failure_of((MapKind::Ipcache, prefix)) else {
            return Ok(());
        };
        let changes = {
            let mut index = self.index.write();
            index.forget_resolved(prefix);
            index.take_changes()
        };
        writer.apply(changes, &*self.datapath);
        Err(match failure {
            WriteFailure::MapFull => InstallError::MapFull(MapKind::Ipcache.as_str()),
            WriteFailure::Error => InstallError::Failed(MapKind::Ipcache.as_str()),
        })
    }

    /// Writes what changed in the index to the maps.
    pub fn flush(&self) -> WriteReport {
        let mut writer = self.writer.lock();
        let changes = self.index.write().take_changes();
        writer.apply(changes, &*self.datapath)
    }

    /// Follows the local etcd until cancelled: one watcher per prefix, each retrying with
    /// its own backoff; index and map updates run off the async workers.
    pub async fn run(self: Arc<Self>, client: Client, cancel: CancellationToken) {
        let watch = |source: Source| {
            let span = tracing::info_span!("local_cache", etcd = LOCAL, source = source.name());
            span.in_scope(|| {
                Watcher::new(LOCAL, client.clone(), source.prefix())
                    .with_backoff(watch_backoff())
                    .spawn(WATCH_QUEUE, cancel.clone())
            })
        };
        let (mut configs, configs_task) = watch(Source::ClusterConfigs);
        let (mut nodes, nodes_task) = watch(Source::Nodes);
        let (mut endpoints, endpoints_task) = watch(Source::Endpoints);
        let mut listing: [Vec<Entry>; 3] = Default::default();
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (source, event) = tokio::select! {
                _ = cancel.cancelled() => break,
                Some(event) = configs.recv() => (Source::ClusterConfigs, event),
                Some(event) = nodes.recv() => (Source::Nodes, event),
                Some(event) = endpoints.recv() => (Source::Endpoints, event),
                _ = retry.tick() => {
                    self.off_workers(MeshView::retry_pending).await;
                    continue;
                }
            };
            let staged = &mut listing[source.slot()];
            match event {
                WatchEvent::Init => staged.clear(),
                WatchEvent::InitPage(entries) => staged.extend(entries),
                WatchEvent::InitDone { revision, .. } => {
                    let entries = std::mem::take(staged);
                    tracing::debug!(
                        source = source.name(),
                        revision,
                        entries = entries.len(),
                        "local cache listed"
                    );
                    self.lists.fetch_add(1, Ordering::Relaxed);
                    self.off_workers(move |view| view.replace(source, &entries))
                        .await;
                }
                WatchEvent::Changes(changes) => {
                    self.off_workers(move |view| view.apply(source, &changes))
                        .await;
                }
                WatchEvent::Error(error) => {
                    // The watcher logged it and retries; a relist follows.
                    tracing::debug!(source = source.name(), %error, "local cache watch interrupted");
                    self.watch_errors.fetch_add(1, Ordering::Relaxed);
                }
                WatchEvent::Gated { .. } => {}
            }
        }
        for task in [configs_task, nodes_task, endpoints_task] {
            let _ = task.await;
        }
    }

    /// Runs `work` on a blocking thread: parsing a listing and writing thousands of map
    /// entries must not hold an async worker.
    async fn off_workers(self: &Arc<Self>, work: impl FnOnce(&MeshView) + Send + 'static) {
        let view = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || work(&view)).await {
            tracing::error!(error = %e, "updating the mesh view failed");
        }
    }

    fn replace(&self, source: Source, entries: &[Entry]) {
        self.index.write().replace(
            source,
            entries.iter().map(|e| (e.key.as_str(), &e.value[..])),
        );
        self.flush();
    }

    fn apply(&self, source: Source, changes: &[Change]) {
        {
            let mut index = self.index.write();
            for change in changes {
                match change {
                    Change::Put(entry) => index.put(source, &entry.key, &entry.value),
                    Change::Delete { key } => index.delete(source, key),
                }
            }
        }
        self.flush();
    }

    fn retry_pending(&self) {
        let mut writer = self.writer.lock();
        if writer.pending() > 0 {
            let report = writer.retry(&*self.datapath);
            tracing::debug!(
                written = report.written,
                still_failing = report.failed.len(),
                "retried failed map writes"
            );
        }
    }
}
