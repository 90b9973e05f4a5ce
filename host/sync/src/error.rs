//! Errors of the sync engine.

use meshfilter_etcd::EtcdError;

/// Why a sync step failed. Reflectors retry every one of them with backoff; they are
/// returned only by set-up functions and recorded in status.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Talking to an etcd failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The write was refused: this process no longer holds the leader lock.
    #[error("writes to {etcd} are fenced: this process no longer holds the leader lock")]
    Fenced {
        /// The etcd written to.
        etcd: String,
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
    /// Wraps a client error of the etcd named `etcd`, for `map_err`.
    pub(crate) fn etcd(etcd: &str) -> impl FnOnce(etcd_client::Error) -> SyncError + '_ {
        move |source| SyncError::Etcd(EtcdError::request(etcd)(source))
    }

    /// A request to the etcd named `etcd` that did not answer in time.
    pub(crate) fn timeout(etcd: &str, what: &'static str) -> SyncError {
        SyncError::Etcd(EtcdError::Timeout {
            etcd: etcd.to_string(),
            what,
        })
    }
}
