//! Where a missed address is looked up: the local kvstoremesh cache first (one etcd read
//! per candidate cluster), then the mesh's on-demand resolve API, which finds it in the
//! owning remote cluster even when filters kept it out, and writes it into the local
//! cache under a short lease so unmodified agents see it too.

use std::net::IpAddr;
use std::time::Duration;

use meshfilter_cilium::{ClusterName, IpIdentityPair, KvstoreValue, Resource};
use meshfilter_etcd::{Client, EtcdError, read_serializable};

use meshfilter_api::MeshClient;

use crate::error::ResolveError;

/// Where a resolution came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResolvedFrom {
    /// Already in the local cache.
    LocalCache,
    /// From the owning remote cluster, through `meshfilter mesh`.
    Mesh,
    /// Read directly from the owning remote cluster's etcd.
    RemoteEtcd,
}

impl ResolvedFrom {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ResolvedFrom::LocalCache => "local-cache",
            ResolvedFrom::Mesh => "mesh",
            ResolvedFrom::RemoteEtcd => "remote-etcd",
        }
    }
}

/// A found endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// Cluster that owns it.
    pub cluster: String,
    /// Its ipcache entry.
    pub pair: IpIdentityPair,
    /// Where it came from.
    pub from: ResolvedFrom,
}

/// The configured lookup sources.
#[derive(Clone)]
pub struct Resolvers {
    local: Option<Client>,
    /// Remote clusters' etcds (the clustermesh-apiserver's), read directly.
    remotes: std::collections::BTreeMap<String, Client>,
    /// The mesh's resolve API (one client: connections are kept alive between lookups).
    mesh: Option<MeshClient>,
    timeout: Duration,
}

impl std::fmt::Debug for Resolvers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolvers")
            .field("local_cache", &self.local.is_some())
            .field("remotes", &self.remotes.keys().collect::<Vec<_>>())
            .field("mesh_api", &self.mesh.as_ref().map(MeshClient::base))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Resolvers {
    /// Sources: the local etcd (if given) and the mesh API base URL (if given).
    pub fn new(local: Option<Client>, mesh_api: Option<String>, timeout: Duration) -> Resolvers {
        Resolvers {
            local,
            remotes: std::collections::BTreeMap::new(),
            mesh: mesh_api.map(|url| MeshClient::new(&url, timeout)),
            timeout,
        }
    }

    /// Also reads remote clusters' etcds directly (cluster name to client), tried after
    /// the local cache and before the mesh.
    pub fn with_remotes(mut self, remotes: std::collections::BTreeMap<String, Client>) -> Self {
        self.remotes = remotes;
        self
    }

    /// Looks `addr` up in `clusters` (the miss hook's order): in the local cache, in the
    /// remote clusters' etcds, then through the mesh.
    pub async fn resolve(
        &self,
        addr: IpAddr,
        clusters: &[String],
    ) -> Result<Resolution, ResolveError> {
        let suffix = addr.to_string();
        // The local cache for every candidate first, then each candidate's own etcd.
        let mut lookups: Vec<(&Client, &String, ResolvedFrom)> = Vec::new();
        if let Some(local) = &self.local {
            lookups.extend(
                clusters
                    .iter()
                    .map(|c| (local, c, ResolvedFrom::LocalCache)),
            );
        }
        for cluster in clusters {
            if let Some(remote) = self.remotes.get(cluster) {
                lookups.push((remote, cluster, ResolvedFrom::RemoteEtcd));
            }
        }
        for (client, cluster, from) in lookups {
            let Ok(name) = ClusterName::new(cluster.as_str()) else {
                continue;
            };
            let (etcd, key) = match from {
                ResolvedFrom::LocalCache => {
                    ("local", Resource::Endpoints.cache_key(&name, &suffix))
                }
                _ => (
                    cluster.as_str(),
                    Resource::Endpoints.source_key(&name, &suffix),
                ),
            };
            let read = read_entry(client, etcd, &name, &key, &suffix);
            match tokio::time::timeout(self.timeout, read).await {
                Ok(Ok(Some(pair))) => {
                    return Ok(Resolution {
                        cluster: cluster.clone(),
                        pair,
                        from,
                    });
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!(key, error = %e, "etcd lookup failed"),
                Err(_) => tracing::debug!(key, "etcd lookup timed out"),
            }
        }
        match &self.mesh {
            Some(mesh) => mesh_lookup(mesh.clone(), addr).await,
            None => Err(ResolveError::NotFound),
        }
    }
}

/// The entry of `cluster` under `key` of `etcd`, if there is a valid one. Serializable:
/// answered by the member itself, no quorum round trip; a value a few milliseconds stale
/// is as good here.
async fn read_entry(
    client: &Client,
    etcd: &str,
    cluster: &ClusterName,
    key: &str,
    ip: &str,
) -> Result<Option<IpIdentityPair>, EtcdError> {
    let Some(entry) = read_serializable(client, etcd, key).await? else {
        return Ok(None);
    };
    match IpIdentityPair::parse(cluster, ip, &entry.value) {
        Ok(pair) => Ok(Some(pair)),
        Err(e) => {
            tracing::warn!(key, error = %e, "skipping an invalid ipcache entry");
            Ok(None)
        }
    }
}

/// Asks `meshfilter mesh` (the shared API client, off the async workers).
async fn mesh_lookup(mesh: MeshClient, addr: IpAddr) -> Result<Resolution, ResolveError> {
    let answer = tokio::task::spawn_blocking(move || mesh.resolve(addr))
        .await
        .map_err(|e| ResolveError::Unavailable(e.to_string()))?
        .map_err(|e| ResolveError::Unavailable(e.to_string()))?;
    let resolved = match answer {
        Ok(resolved) => resolved,
        Err(
            meshfilter_api::ResolveError::NotFound { .. }
            | meshfilter_api::ResolveError::NegativeCached { .. },
        ) => return Err(ResolveError::NotFound),
        Err(e) if e.is_transient() => return Err(ResolveError::Busy(e.to_string())),
        Err(e) => return Err(ResolveError::Unavailable(e.to_string())),
    };
    let name = ClusterName::new(resolved.cluster.as_str())
        .map_err(|e| ResolveError::Unavailable(format!("mesh answer for {addr}: {e}")))?;
    let pair = IpIdentityPair::parse(&name, &addr.to_string(), resolved.value.as_bytes())
        .map_err(|e| ResolveError::Unavailable(format!("mesh answer for {addr}: {e}")))?;
    Ok(Resolution {
        cluster: resolved.cluster,
        pair,
        from: ResolvedFrom::Mesh,
    })
}
