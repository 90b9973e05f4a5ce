//! etcd plumbing every meshfilter role shares, each concept once:
//!
//! - [`EtcdConfig`]: Cilium's clustermesh connection files (endpoints, mutual TLS), and
//!   connecting with Cilium's keepalives;
//! - [`Backoff`]: the jittered exponential backoff of every retry loop, with
//!   [`Backoff::wait`] that gives way to shutdown;
//! - [`Pages`]: reading a whole prefix in pages at one revision;
//! - [`Watcher`]: the one list/watch loop (sync-canary gate, cluster-ID pinning, relist
//!   after compaction), used by the sync engine's reflectors and by the node agent's view.

mod backoff;
mod config;
mod error;
mod list;
mod watcher;

pub use backoff::Backoff;
pub use config::{ClusterFile, EtcdConfig, scan_clusters_dir};
pub use error::EtcdError;
pub use list::{DEFAULT_PAGE_KEYS, Entry, MAX_RESPONSE_BYTES, Page, Pages, prefix_end};
pub use watcher::{Change, WatchEvent, Watcher};
// The node agent reads through these rather than depending on the client crate itself.
pub use etcd_client::Client;
pub use list::read_serializable;
