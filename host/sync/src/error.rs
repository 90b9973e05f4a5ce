//! Errors of the sync engine.

use std::path::PathBuf;

/// Why a sync step failed. Reflectors retry every one of them with backoff; they are
/// returned only by set-up functions and recorded in status.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// An etcd request failed.
    #[error("etcd of cluster {cluster}: {source}")]
    Etcd {
        /// Which etcd.
        cluster: String,
        /// The client error.
        #[source]
        source: etcd_client::Error,
    },
    /// A request did not answer in time.
    #[error("etcd of cluster {cluster}: {what} timed out")]
    Timeout {
        /// Which etcd.
        cluster: String,
        /// What timed out.
        what: &'static str,
    },
    /// A connection file is unusable.
    #[error("etcd config {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The source etcd is another cluster than the one first seen (a replaced
    /// clustermesh-apiserver with an ephemeral etcd, or a load balancer failover).
    #[error("etcd of cluster {cluster}: cluster ID changed from {from:x} to {to:x}")]
    ClusterIdChanged {
        /// Which etcd.
        cluster: String,
        /// The pinned ID.
        from: u64,
        /// The new ID.
        to: u64,
    },
    /// The watch fell behind a compaction.
    #[error("etcd of cluster {cluster}: watch compacted at revision {revision}")]
    Compacted {
        /// Which etcd.
        cluster: String,
        /// The compaction revision.
        revision: i64,
    },
    /// The watch was cancelled or closed by the server.
    #[error("etcd of cluster {cluster}: watch closed: {reason}")]
    WatchClosed {
        /// Which etcd.
        cluster: String,
        /// The server's reason, if any.
        reason: String,
    },
    /// The remote cluster's `cilium/cluster-config/<name>` is missing or invalid.
    #[error("cluster {cluster}: {message}")]
    ClusterConfig {
        /// Which cluster.
        cluster: String,
        /// What is wrong.
        message: String,
    },
}

impl SyncError {
    pub(crate) fn etcd(cluster: &str) -> impl FnOnce(etcd_client::Error) -> SyncError + '_ {
        move |source| SyncError::Etcd {
            cluster: cluster.to_string(),
            source,
        }
    }
}
