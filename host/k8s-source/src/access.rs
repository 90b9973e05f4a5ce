//! How the source reaches the Kubernetes API.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::K8sSourceError;

/// Where the API server and credentials come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ApiAccess {
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted token and CA):
    /// how `meshfilter export` runs in its cluster.
    #[default]
    InCluster,
    /// A kubeconfig: `path`, or `$KUBECONFIG` / `~/.kube/config` when `None`; `context`, or
    /// its current context when `None`.
    Kubeconfig {
        /// The file.
        path: Option<PathBuf>,
        /// The context to use.
        context: Option<String>,
    },
}

impl ApiAccess {
    /// A client for the API server.
    pub async fn client(&self) -> Result<kube::Client, K8sSourceError> {
        kube::Client::try_from(self.config().await?).map_err(K8sSourceError::Client)
    }

    /// The client config: API server address, credentials, TLS.
    pub async fn config(&self) -> Result<kube::Config, K8sSourceError> {
        Ok(match self {
            ApiAccess::InCluster => kube::Config::incluster().map_err(K8sSourceError::InCluster)?,
            ApiAccess::Kubeconfig { path, context } => {
                let options = KubeConfigOptions {
                    context: context.clone(),
                    ..Default::default()
                };
                let error = |source| K8sSourceError::Kubeconfig {
                    path: path.clone(),
                    error: source,
                };
                match path {
                    Some(path) => {
                        let kubeconfig = Kubeconfig::read_from(path).map_err(error)?;
                        kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                            .await
                            .map_err(error)?
                    }
                    None => kube::Config::from_kubeconfig(&options)
                        .await
                        .map_err(error)?,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: east
  cluster: {server: "http://127.0.0.1:1"}
- name: west
  cluster: {server: "http://127.0.0.1:2"}
users:
- name: reader
  user: {token: not-a-secret}
contexts:
- name: east
  context: {cluster: east, user: reader}
- name: west
  context: {cluster: west, user: reader}
current-context: east
"#;

    #[tokio::test]
    async fn kubeconfig_context_selects_the_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, KUBECONFIG).unwrap();
        for (context, port) in [(None, 1), (Some("west"), 2)] {
            let access = ApiAccess::Kubeconfig {
                path: Some(path.clone()),
                context: context.map(String::from),
            };
            let config = access.config().await.unwrap();
            assert_eq!(config.cluster_url.port_u16(), Some(port), "{context:?}");
            access.client().await.unwrap();
        }
        let missing = ApiAccess::Kubeconfig {
            path: Some(path.clone()),
            context: Some("north".into()),
        };
        let error = missing.config().await.unwrap_err().to_string();
        assert!(
            error.contains("north") && error.contains("kubeconfig"),
            "{error}"
        );
    }
}
