//! The Kubernetes source of `meshfilter export`.
//!
//! Watches the cluster's CiliumEndpoints, Pods, Namespaces and CiliumNodes (kube watchers
//! feeding reflector stores), joins every endpoint with its Pod by namespace and name and
//! with its Namespace, asks the export hook about each address with the Pod's labels and
//! annotations and the Namespace's annotations as input, and writes what it lets out into
//! the export etcd in Cilium's layout, with the scope in `SyncScope`. A Pod or Namespace
//! change re-decides the endpoints it affects; an endpoint that is deleted, loses its Pod
//! or is kept in by the hook has its keys deleted. [`export`] says exactly what is written.
//!
//! - [`ApiAccess`]: in-cluster, or a kubeconfig and context.
//! - [`KubernetesExport`]: the watchers and the exporting task; [`KubernetesStatusHandle`]
//!   reports on them.
//! - [`resources`]: the watched objects, typed for kube.
#![deny(missing_docs)]

mod access;
mod claims;
mod error;
pub mod export;
mod metrics;
pub mod resources;
mod watch;

pub use access::ApiAccess;
pub use error::K8sSourceError;
pub use export::{KubernetesExport, KubernetesStatus, KubernetesStatusHandle, LocalCluster};
pub use metrics::SourceMetrics;
pub use watch::WatchStatus;

/// The kube client this crate is built with, for callers that build their own (tests
/// pointing it at a local server).
pub use kube;
