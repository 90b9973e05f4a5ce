//! Errors of the etcd plumbing.

use std::path::PathBuf;

/// Why talking to one etcd failed. Each carries the name of the etcd (a cluster name, or
/// `local`/`export`) so an operator knows which one to look at.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A request failed.
    #[error("etcd of {etcd}: {error}")]
    Request {
        /// Which etcd.
        etcd: String,
        /// The client error.
        error: etcd_client::Error,
    },
    /// A request did not answer in time.
    #[error("etcd of {etcd}: {what} timed out")]
    Timeout {
        /// Which etcd.
        etcd: String,
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
    /// Another etcd cluster answers than the one first seen: a replaced
    /// clustermesh-apiserver with an ephemeral etcd, or a load balancer failover.
    #[error("etcd of {etcd}: cluster ID changed from {from:x} to {to:x}")]
    ClusterIdChanged {
        /// Which etcd.
        etcd: String,
        /// The pinned ID.
        from: u64,
        /// The new ID.
        to: u64,
    },
    /// The revision a list or watch reads at was compacted away: list again.
    #[error("etcd of {etcd}: revision {revision} was compacted")]
    Compacted {
        /// Which etcd.
        etcd: String,
        /// The revision asked for.
        revision: i64,
    },
    /// The server cancelled or closed a watch.
    #[error("etcd of {etcd}: watch closed: {reason}")]
    WatchClosed {
        /// Which etcd.
        etcd: String,
        /// The server's reason, if any.
        reason: String,
    },
}

impl EtcdError {
    /// Wraps a client error of `etcd`, for `map_err`.
    pub fn request(etcd: &str) -> impl FnOnce(etcd_client::Error) -> EtcdError + '_ {
        move |error| EtcdError::Request {
            etcd: etcd.to_string(),
            error,
        }
    }
}
