//! What import decisions join an endpoint with: its node's topology (by `HostIP`) and its
//! identity's labels (by `ID`), both fed by reflectors of the same remote cluster.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use ipnet::IpNet;
use meshfilter_cilium::{ClusterName, IdentityLabels, KvstoreValue, Node};
use parking_lot::RwLock;
use tokio::sync::watch;

/// Topology of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
    /// `topology.kubernetes.io/region`.
    pub region: Option<String>,
}

#[derive(Default)]
struct NodeMaps {
    /// Node key suffix to what it contributed, to undo it on update or delete.
    by_key: HashMap<String, (Vec<IpAddr>, Vec<IpNet>, NodeInfo)>,
    by_ip: HashMap<IpAddr, NodeInfo>,
    cidrs: Vec<(IpNet, NodeInfo)>,
}

/// Nodes of one remote cluster, by IP and by pod CIDR.
pub struct NodeCache {
    cluster: ClusterName,
    maps: RwLock<NodeMaps>,
    version: watch::Sender<u64>,
}

impl std::fmt::Debug for NodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCache")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl NodeCache {
    /// An empty cache for `cluster`.
    pub fn new(cluster: ClusterName) -> Arc<NodeCache> {
        Arc::new(NodeCache {
            cluster,
            maps: RwLock::default(),
            version: watch::channel(0).0,
        })
    }

    /// Bumped whenever a node's addresses or topology change.
    pub fn version(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Topology of the node owning `ip` (one of its addresses).
    pub fn by_ip(&self, ip: &IpAddr) -> Option<NodeInfo> {
        self.maps.read().by_ip.get(ip).cloned()
    }

    /// The node whose pod CIDR holds `ip`.
    pub fn by_pod_ip(&self, ip: &IpAddr) -> Option<NodeInfo> {
        self.maps
            .read()
            .cidrs
            .iter()
            .find(|(net, _)| net.contains(ip))
            .map(|(_, n)| n.clone())
    }

    /// Number of nodes known.
    pub fn len(&self) -> usize {
        self.maps.read().by_key.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a node record (`None`: deleted). `suffix` is the key after the prefix.
    pub fn update(&self, suffix: &str, value: Option<&Bytes>) {
        let node = value.and_then(|v| match Node::parse(&self.cluster, suffix, v) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(cluster = %self.cluster, key = suffix, error = %e, "skipping invalid node record");
                None
            }
        });
        let mut maps = self.maps.write();
        let before = maps.by_key.get(suffix).map(|(_, _, info)| info.clone());
        if let Some((ips, _, _)) = maps.by_key.remove(suffix) {
            for ip in ips {
                maps.by_ip.remove(&ip);
            }
            maps.cidrs.retain(|(_, info)| info.name != suffix);
        }
        let mut after = None;
        if let Some(node) = node {
            let info = NodeInfo {
                name: suffix.to_string(),
                zone: node.zone().map(str::to_string),
                region: node.region().map(str::to_string),
            };
            let ips: Vec<IpAddr> = node.addresses().iter().map(|a| a.ip).collect();
            let cidrs = node.pod_cidrs();
            for ip in &ips {
                maps.by_ip.insert(*ip, info.clone());
            }
            for net in &cidrs {
                maps.cidrs.push((*net, info.clone()));
            }
            maps.by_key
                .insert(suffix.to_string(), (ips, cidrs, info.clone()));
            after = Some(info);
        }
        drop(maps);
        if before != after {
            self.version.send_modify(|v| *v += 1);
        }
    }
}

/// Identities of one remote cluster: numeric ID to labels.
pub struct IdentityCache {
    cluster: ClusterName,
    labels: RwLock<HashMap<u32, Arc<BTreeMap<String, String>>>>,
    version: watch::Sender<u64>,
}

impl std::fmt::Debug for IdentityCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityCache")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl IdentityCache {
    /// An empty cache for `cluster`.
    pub fn new(cluster: ClusterName) -> Arc<IdentityCache> {
        Arc::new(IdentityCache {
            cluster,
            labels: RwLock::default(),
            version: watch::channel(0).0,
        })
    }

    /// Bumped whenever an identity's labels change.
    pub fn version(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The `k8s` labels of identity `id` (the pod's labels as the import hook sees them).
    pub fn k8s_labels(&self, id: u32) -> Option<Arc<BTreeMap<String, String>>> {
        self.labels.read().get(&id).cloned()
    }

    /// Applies an identity record (`None`: deleted). `suffix` is the numeric ID.
    pub fn update(&self, suffix: &str, value: Option<&Bytes>) {
        let Ok(id) = suffix.parse::<u32>() else {
            tracing::warn!(cluster = %self.cluster, key = suffix, "skipping identity with a non-numeric key");
            return;
        };
        let parsed = value.and_then(|v| match IdentityLabels::parse(&self.cluster, suffix, v) {
            Ok(l) => Some(Arc::new(
                l.k8s_labels().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            )),
            Err(e) => {
                tracing::warn!(cluster = %self.cluster, key = suffix, error = %e, "skipping invalid identity");
                None
            }
        });
        let mut labels = self.labels.write();
        let changed = match parsed {
            Some(l) => labels.insert(id, l.clone()).is_none_or(|old| old != l),
            None => labels.remove(&id).is_some(),
        };
        drop(labels);
        if changed {
            self.version.send_modify(|v| *v += 1);
        }
    }
}

/// What a filter sees of an ipcache entry stored under key suffix `ip`: the pair joined
/// with its node's topology (by `HostIP`) and the pod `labels` the caller joined it with
/// (identity labels from etcd, or the Pod's own labels from Kubernetes). `cluster` is the
/// entry's cluster; `fallback` supplies zone and region when the node is unknown.
/// Annotations are left empty for sources that have them to fill in.
pub fn endpoint_input(
    ip: &str,
    pair: &meshfilter_cilium::IpIdentityPair,
    cluster: &str,
    nodes: &NodeCache,
    labels: BTreeMap<String, String>,
    fallback: Option<&meshfilter_filter_runtime::Locality>,
) -> meshfilter_filter_runtime::EndpointInput {
    let node = pair.host_ip.and_then(|h| nodes.by_ip(&h));
    meshfilter_filter_runtime::EndpointInput {
        namespace: pair.k8s_namespace.clone(),
        pod_name: pair.k8s_pod_name.clone(),
        ip: ip.to_string(),
        node_ip: pair.host_ip.map(|h| h.to_string()),
        identity: pair.id,
        service_account: Some(pair.k8s_service_account.clone()).filter(|s| !s.is_empty()),
        labels,
        sync_scope: pair.sync_scope.clone(),
        origin: meshfilter_filter_runtime::Locality {
            cluster: cluster.to_string(),
            zone: node
                .as_ref()
                .and_then(|n| n.zone.clone())
                .or_else(|| fallback.and_then(|f| f.zone.clone())),
            region: node
                .and_then(|n| n.region)
                .or_else(|| fallback.and_then(|f| f.region.clone())),
        },
        ..Default::default()
    }
}

impl IdentityCache {
    /// The `k8s` labels of identity `id` as an owned map, empty when the identity is
    /// unknown: what [`endpoint_input`] joins an etcd entry with.
    pub(crate) fn labels_of(&self, id: u32) -> BTreeMap<String, String> {
        self.k8s_labels(id)
            .map(|l| (*l).clone())
            .unwrap_or_default()
    }
}
