//! Errors of the Kubernetes source.

use std::path::PathBuf;

/// Why the Kubernetes API cannot be reached. Watch and write failures are not errors of
/// this kind: the source retries them and reports them in its status.
#[derive(Debug, thiserror::Error)]
pub enum K8sSourceError {
    /// The in-cluster service account config is missing or unreadable.
    #[error("in-cluster Kubernetes config: {0}")]
    InCluster(kube::config::InClusterError),
    /// The kubeconfig file cannot be read or has no usable context.
    #[error("kubeconfig {}: {error}", path.as_ref().map_or("(default)".into(), |p| p.display().to_string()))]
    Kubeconfig {
        /// The file, `None` for the default (`$KUBECONFIG` or `~/.kube/config`).
        path: Option<PathBuf>,
        /// What is wrong.
        error: kube::config::KubeconfigError,
    },
    /// A client cannot be built from the config (TLS material, proxy settings).
    #[error("Kubernetes client: {0}")]
    Client(kube::Error),
}
