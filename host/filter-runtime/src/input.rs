//! What the host hands a filter: endpoints and miss requests, owned by the host and read
//! by the guest through resource methods.

use std::collections::BTreeMap;

/// Where a cluster or node is. Deserialising refuses unknown fields, so a misspelt key
/// in a cases file or sample is an error instead of an empty field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    /// Cluster name.
    pub cluster: String,
    /// Zone (`topology.kubernetes.io/zone`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Region (`topology.kubernetes.io/region`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl Locality {
    /// A locality with only a cluster name.
    pub fn cluster(name: impl Into<String>) -> Locality {
        Locality {
            cluster: name.into(),
            zone: None,
            region: None,
        }
    }

    /// Borrowed form used by [`meshfilter_contract::scope::SyncScope::admits`].
    pub fn as_borrowed(&self) -> meshfilter_contract::scope::Locality<'_> {
        meshfilter_contract::scope::Locality {
            cluster: &self.cluster,
            zone: self.zone.as_deref(),
            region: self.region.as_deref(),
        }
    }
}

/// One endpoint as a filter sees it. The export side fills pod labels, annotations and
/// namespace annotations; the import side fills labels from the security identity and the
/// `SyncScope` recorded at the source. Deserialising refuses unknown fields (`annotation:`
/// for `annotations:` is an error, not an endpoint without annotations).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointInput {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// IP address, canonical text.
    pub ip: String,
    /// Node IP (Cilium's `HostIP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<String>,
    /// Numeric security identity.
    #[serde(default)]
    pub identity: u32,
    /// Kubernetes service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Pod labels (or identity labels of source `k8s` on the import side).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Pod annotations (export side).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Annotations of the pod's namespace (export side).
    #[serde(default)]
    pub namespace_annotations: BTreeMap<String, String>,
    /// Raw `SyncScope` recorded at the source (import side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_scope: Option<String>,
    /// The endpoint's cluster and its node's zone and region.
    #[serde(default)]
    pub origin: Locality,
}

impl EndpointInput {
    /// `namespace/pod (ip)`, for log lines.
    pub fn display_name(&self) -> String {
        format!("{}/{} ({})", self.namespace, self.pod_name, self.ip)
    }
}

/// A remote cluster that may own a missed address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CandidateCluster {
    /// The cluster and where it is.
    pub locality: Locality,
    /// Whether one of its node pod CIDRs covers the address.
    #[serde(default)]
    pub owns_prefix: bool,
}

/// A datapath ipcache miss, as the miss hook sees it. Deserialising refuses unknown
/// fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MissInput {
    /// The missed address.
    pub address: String,
    /// The ipcache prefix that covered it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covering_prefix: Option<String>,
    /// Tunnel endpoint of that prefix, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_endpoint: Option<String>,
    /// Node that saw the miss.
    #[serde(default)]
    pub local_node: String,
    /// Clusters that could own the address, owners of the covering prefix first.
    #[serde(default)]
    pub candidates: Vec<CandidateCluster>,
}

/// Resource type of the endpoint handed to the guest. The store keeps one handle for its
/// whole life and points it at the current call's input, so a call allocates no table
/// entry; the data lives in [`crate::store::StoreState`].
#[derive(Debug, Clone, Copy)]
pub struct EndpointHandle;

/// Resource type of the miss request handed to the guest (see [`EndpointHandle`]).
#[derive(Debug, Clone, Copy)]
pub struct MissHandle;
