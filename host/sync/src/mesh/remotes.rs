//! The set of remotes the leader mirrors, kept in step with the clustermesh directory, and
//! Cilium's drain of a removed cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meshfilter_cilium::ClusterName;
use meshfilter_cilium::keys::{Resource, cluster_config_key, synced_prefix};
use meshfilter_etcd::{EtcdConfig, scan_clusters_dir};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{MeshOptions, Running, State};
use crate::error::SyncError;
use crate::metrics::SyncMetrics;
use crate::remote::RemoteCluster;
use crate::target::TargetKeys;
use crate::writer::TargetWriter;

/// The remotes of one leadership term.
pub(super) struct RemoteSet<'a> {
    pub(super) options: &'a MeshOptions,
    pub(super) state: &'a Arc<State>,
    pub(super) writer: &'a Arc<TargetWriter>,
    pub(super) metrics: &'a SyncMetrics,
    /// Drains of removed clusters in progress.
    pub(super) drains: JoinSet<()>,
}

impl RemoteSet<'_> {
    /// Starts clusters whose connection file appeared, drains clusters whose file is gone.
    /// An unreadable directory changes nothing (a remounting secret must not drain the
    /// mesh); an invalid file is logged and skipped.
    pub(super) fn reconcile(&mut self, cancel: &CancellationToken) {
        let wanted = match self.scan() {
            Ok(wanted) => wanted,
            Err(e) => {
                tracing::warn!(dir = %self.options.clusters_dir.display(), error = %e, "cannot read the clustermesh directory");
                return;
            }
        };
        let mut remotes = self.state.remotes.lock();
        for (name, etcd) in &wanted {
            if remotes.contains_key(name) {
                continue;
            }
            tracing::info!(cluster = %name, endpoints = ?etcd.endpoints, "connecting a remote cluster");
            let remote = RemoteCluster::new(
                name.clone(),
                etcd.clone(),
                self.writer.clone(),
                self.state.runtime.clone(),
                self.options.remote.clone(),
                self.metrics.clone(),
            );
            let handle = remote.status_handle();
            let child = cancel.child_token();
            let task = tokio::spawn(remote.run(child.clone()));
            remotes.insert(
                name.clone(),
                Running {
                    handle,
                    cancel: child,
                    task,
                },
            );
        }
        let gone: Vec<ClusterName> = remotes
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(running) = remotes.remove(&name) {
                running.cancel.cancel();
                let writer = self.writer.clone();
                let grace = self.options.drain_grace;
                let cancel = cancel.clone();
                self.drains.spawn(async move {
                    let _ = running.task.await;
                    if let Err(e) = drain_cluster(&writer, &name, grace, &cancel).await {
                        tracing::warn!(cluster = %name, error = %e, "drain interrupted; the entries go when their leases run out");
                    }
                });
            }
        }
    }

    fn scan(&self) -> Result<BTreeMap<ClusterName, EtcdConfig>, SyncError> {
        let files = scan_clusters_dir(
            &self.options.clusters_dir,
            Some(self.options.cluster.as_str()),
        )?;
        let mut wanted = BTreeMap::new();
        for (file, config) in files {
            let Ok(name) = ClusterName::new(file.clone()) else {
                tracing::warn!(
                    file,
                    "ignoring a file that is not named after a valid cluster"
                );
                continue;
            };
            match config {
                Ok(config) => {
                    wanted.insert(name, config);
                }
                Err(e) => {
                    tracing::warn!(cluster = %name, error = %e, "ignoring an invalid cluster file")
                }
            }
        }
        Ok(wanted)
    }

    /// Stops every remote (at the end of a leadership term) and the drains in progress.
    pub(super) async fn stop_all(&mut self) {
        let running: Vec<Running> = std::mem::take(&mut *self.state.remotes.lock())
            .into_values()
            .collect();
        for r in &running {
            r.cancel.cancel();
        }
        for r in running {
            let _ = tokio::time::timeout(Duration::from_secs(10), r.task).await;
        }
        self.drains.abort_all();
        while self.drains.join_next().await.is_some() {}
    }
}

/// Removes a cluster the way Cilium drains it: its config first (agents stop connecting to
/// it), then after `grace` its canaries and cached entries, every delete through the
/// leader's fenced writer.
pub async fn drain_cluster(
    writer: &Arc<TargetWriter>,
    cluster: &ClusterName,
    grace: Duration,
    cancel: &CancellationToken,
) -> Result<(), SyncError> {
    tracing::info!(cluster = %cluster, grace = ?grace, "remote cluster removed: draining");
    let mut config = TargetKeys::exact(writer.clone(), cluster_config_key(cluster));
    config.adopt().await?;
    config
        .converge([(cluster_config_key(cluster), None::<Bytes>)])
        .await?;
    tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        _ = tokio::time::sleep(grace) => {}
    }
    let mut prefixes = vec![synced_prefix(cluster)];
    prefixes.extend(Resource::ALL.iter().map(|r| r.cache_prefix(cluster)));
    for prefix in prefixes {
        let mut keys = TargetKeys::new(writer.clone(), prefix);
        keys.adopt().await?;
        keys.converge_all(&Default::default()).await?;
    }
    tracing::info!(cluster = %cluster, "remote cluster drained");
    Ok(())
}
