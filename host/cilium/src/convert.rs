//! Kubernetes objects to kvstore entries, exactly as clustermesh-apiserver converts them
//! (mirrors `clustermesh-apiserver/clustermesh/converters.go` `ciliumEndpointMapper` and
//! `CiliumNodeConverter` with `ParseCiliumNode`).
//!
//! The object types are plain serde structs holding the subset of CiliumEndpoint,
//! CiliumNode, Namespace and Pod that Cluster Mesh uses; unknown fields are ignored, so
//! they read the JSON (or YAML) the Kubernetes API serves.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Deserialize;

use crate::go_json::parse_ip;
use crate::ipcache::{IpIdentityPair, NamedPort};
use crate::keys::{ClusterName, ENDPOINTS_SOURCE_PREFIX};
use crate::node::{Node, NodeAddress, SOURCE_CUSTOM_RESOURCE};

/// CiliumNode annotation carrying the WireGuard public key (`annotation.WireguardPubKey`).
pub const WIREGUARD_PUB_KEY_ANNOTATION: &str = "network.cilium.io/wg-pub-key";
/// Older spelling of [`WIREGUARD_PUB_KEY_ANNOTATION`] (`annotation.WireguardPubKeyAlias`).
pub const WIREGUARD_PUB_KEY_ANNOTATION_ALIAS: &str = "io.cilium.network.wg-pub-key";

/// The `metadata` of a Kubernetes object (subset of `metav1.ObjectMeta`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name.
    #[serde(default)]
    pub name: String,
    /// Namespace, empty for cluster-scoped objects.
    #[serde(default)]
    pub namespace: String,
    /// Object UID.
    #[serde(default)]
    pub uid: String,
    /// Labels; `None` when the object has none.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations; `None` when the object has none.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Owner references.
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
}

impl ObjectMeta {
    /// Value of label `key`, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }

    /// Value of annotation `key`, if set.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// An owner reference (subset of `metav1.OwnerReference`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    /// API version of the owner, e.g. `v1`.
    #[serde(default)]
    pub api_version: String,
    /// Kind of the owner, e.g. `Pod`.
    #[serde(default)]
    pub kind: String,
    /// Name of the owner.
    #[serde(default)]
    pub name: String,
    /// UID of the owner.
    #[serde(default)]
    pub uid: String,
}

/// A Namespace: its annotations carry `clustermesh.cilium.io/global`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Namespace {
    /// Object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// A Pod, for its labels and annotations (`clustermesh.cilium.io/sync`,
/// `clustermesh.cilium.io/sync-scope`), joined with its CiliumEndpoint by namespace/name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Pod {
    /// Object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// A CiliumEndpoint (`cilium.io/v2`, subset of `types.CiliumEndpoint`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CiliumEndpoint {
    /// Object metadata: namespace and name become `K8sNamespace` / `K8sPodName`.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Endpoint status.
    #[serde(default)]
    pub status: EndpointStatus,
}

/// `status` of a CiliumEndpoint (subset of `EndpointStatus`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EndpointStatus {
    /// Local endpoint ID on its node.
    #[serde(default)]
    pub id: i64,
    /// Security identity.
    #[serde(default)]
    pub identity: Option<EndpointIdentity>,
    /// Addresses and hosting node.
    #[serde(default)]
    pub networking: Option<EndpointNetworking>,
    /// IPsec key.
    #[serde(default)]
    pub encryption: Option<EncryptionSpec>,
    /// Named ports of the pod.
    #[serde(default, rename = "named-ports")]
    pub named_ports: Vec<EndpointNamedPort>,
    /// Service account of the pod.
    #[serde(default, rename = "service-account")]
    pub service_account: String,
    /// Endpoint state, e.g. `ready`.
    #[serde(default)]
    pub state: String,
}

/// `status.identity` of a CiliumEndpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EndpointIdentity {
    /// Numeric identity.
    #[serde(default)]
    pub id: i64,
    /// Security labels, `source:key=value`.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// `status.networking` of a CiliumEndpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EndpointNetworking {
    /// Address pairs, each with an IPv4 and/or an IPv6 address.
    #[serde(default)]
    pub addressing: Vec<AddressPair>,
    /// IP of the hosting node.
    #[serde(default)]
    pub node: String,
}

/// One entry of `status.networking.addressing`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AddressPair {
    /// IPv4 address, empty when none.
    #[serde(default)]
    pub ipv4: String,
    /// IPv6 address, empty when none.
    #[serde(default)]
    pub ipv6: String,
}

/// `encryption` of a CiliumEndpoint status or CiliumNode spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EncryptionSpec {
    /// IPsec key index.
    #[serde(default)]
    pub key: i64,
}

/// One entry of `status.named-ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EndpointNamedPort {
    /// Port name.
    #[serde(default)]
    pub name: String,
    /// Port number.
    #[serde(default)]
    pub port: u16,
    /// Protocol, e.g. `TCP`.
    #[serde(default)]
    pub protocol: String,
}

/// A CiliumNode (`cilium.io/v2`, subset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CiliumNode {
    /// Object metadata: name, labels (topology) and annotations.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Node spec.
    #[serde(default)]
    pub spec: CiliumNodeSpec,
}

/// `spec` of a CiliumNode (subset of `NodeSpec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CiliumNodeSpec {
    /// Node addresses.
    #[serde(default)]
    pub addresses: Vec<CiliumNodeAddress>,
    /// Boot ID.
    #[serde(default)]
    pub bootid: String,
    /// IPsec key.
    #[serde(default)]
    pub encryption: EncryptionSpec,
    /// cilium-health addresses.
    #[serde(default)]
    pub health: DualStackAddressing,
    /// Ingress addresses.
    #[serde(default)]
    pub ingress: DualStackAddressing,
    /// IPAM settings: the pod CIDRs.
    #[serde(default)]
    pub ipam: IpamSpec,
}

/// One entry of `spec.addresses`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CiliumNodeAddress {
    /// The address.
    #[serde(default)]
    pub ip: String,
    /// `InternalIP`, `ExternalIP`, `CiliumInternalIP`, ...
    #[serde(default, rename = "type")]
    pub kind: String,
}

/// `spec.health` and `spec.ingress`: one IPv4 and one IPv6 address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DualStackAddressing {
    /// IPv4 address, empty when none.
    #[serde(default)]
    pub ipv4: String,
    /// IPv6 address, empty when none.
    #[serde(default)]
    pub ipv6: String,
}

/// `spec.ipam` (subset of `IPAMSpec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IpamSpec {
    /// Pod CIDRs, e.g. `10.244.0.0/24`.
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
}

/// The kvstore entries clustermesh-apiserver writes for a CiliumEndpoint: one
/// `cilium/state/ip/v1/default/<ip>` key per address of `status.networking.addressing`
/// (IPv4 then IPv6), with `HostIP` = `networking.node`, `ID` = `identity.id`, `Key` =
/// `encryption.key`, `K8sNamespace` / `K8sPodName` = the endpoint's namespace and name,
/// `K8sPodUID` = the UID of its owner Pod, `K8sServiceAccount` = `service-account` and
/// `NamedPorts` = `named-ports` in order. An endpoint without networking yields nothing;
/// an address that is not an IP is skipped (Cilium would write a `<nil>` key). The scope is
/// left unset for the exporter to fill in.
pub fn ciliumendpoint_to_pairs(endpoint: &CiliumEndpoint) -> Vec<(String, IpIdentityPair)> {
    let status = &endpoint.status;
    let Some(networking) = &status.networking else {
        return Vec::new();
    };
    let pod_uid = endpoint
        .metadata
        .owner_references
        .iter()
        .find(|owner| owner.kind == "Pod")
        .map(|owner| owner.uid.as_str())
        .unwrap_or_default();
    let named_ports: Vec<NamedPort> = status
        .named_ports
        .iter()
        .map(|p| NamedPort {
            name: p.name.clone(),
            port: p.port,
            protocol: p.protocol.clone(),
        })
        .collect();

    let mut pairs = Vec::new();
    for address in &networking.addressing {
        for text in [&address.ipv4, &address.ipv6] {
            let Some(ip) = parse_ip(text) else { continue };
            let mut pair = IpIdentityPair::new(ip);
            pair.host_ip = parse_ip(&networking.node);
            // Go converts with NumericIdentity(id) and uint8(key): plain truncation.
            pair.id = status.identity.as_ref().map_or(0, |i| i.id as u32);
            pair.key = status.encryption.as_ref().map_or(0, |e| e.key as u8);
            pair.k8s_namespace.clone_from(&endpoint.metadata.namespace);
            pair.k8s_pod_name.clone_from(&endpoint.metadata.name);
            pair.k8s_pod_uid = pod_uid.to_owned();
            pair.k8s_service_account.clone_from(&status.service_account);
            pair.named_ports.clone_from(&named_ports);
            pairs.push((
                format!("{ENDPOINTS_SOURCE_PREFIX}{}", pair.prefix_string()),
                pair,
            ));
        }
    }
    pairs
}

/// The node value clustermesh-apiserver writes for a CiliumNode of `cluster`
/// (`ParseCiliumNode`, then `Cluster` / `ClusterID` set): addresses that parse as IPs in
/// spec order, the first IPv4 / IPv6 pod CIDR as primary and the rest as secondary
/// (network address, as `net.ParseCIDR` gives it), health and ingress IPs, `Source` =
/// `custom-resource`, labels and annotations of the object, the WireGuard key annotation
/// and the boot ID. Its key is `Resource::Nodes.source_key(cluster, &node.name)`.
pub fn ciliumnode_to_node(ciliumnode: &CiliumNode, cluster: &ClusterName, cluster_id: u32) -> Node {
    let meta = &ciliumnode.metadata;
    let spec = &ciliumnode.spec;
    let mut node = Node::new(meta.name.clone(), cluster, cluster_id);
    node.source = SOURCE_CUSTOM_RESOURCE.to_owned();
    // Go converts with uint8(key): plain truncation.
    node.encryption_key = spec.encryption.key as u8;
    node.labels.clone_from(&meta.labels);
    node.annotations.clone_from(&meta.annotations);
    node.wireguard_pub_key = meta
        .annotation(WIREGUARD_PUB_KEY_ANNOTATION)
        .or_else(|| meta.annotation(WIREGUARD_PUB_KEY_ANNOTATION_ALIAS))
        .unwrap_or_default()
        .to_owned();
    node.boot_id.clone_from(&spec.bootid);

    for cidr in spec
        .ipam
        .pod_cidrs
        .iter()
        .filter_map(|c| c.parse::<IpNet>().ok())
    {
        let cidr = cidr.trunc();
        let (primary, secondary) = match cidr {
            IpNet::V4(_) => (
                &mut node.ipv4_alloc_cidr,
                &mut node.ipv4_secondary_alloc_cidrs,
            ),
            IpNet::V6(_) => (
                &mut node.ipv6_alloc_cidr,
                &mut node.ipv6_secondary_alloc_cidrs,
            ),
        };
        if primary.is_none() {
            *primary = Some(cidr);
        } else {
            secondary.get_or_insert_with(Vec::new).push(cidr);
        }
    }

    node.ipv4_health_ip = parse_ip(&spec.health.ipv4);
    node.ipv6_health_ip = parse_ip(&spec.health.ipv6);
    node.ipv4_ingress_ip = parse_ip(&spec.ingress.ipv4);
    node.ipv6_ingress_ip = parse_ip(&spec.ingress.ipv6);

    let addresses: Vec<NodeAddress> = spec
        .addresses
        .iter()
        .filter_map(|a| {
            parse_ip(&a.ip).map(|ip| NodeAddress {
                kind: a.kind.clone(),
                ip,
            })
        })
        .collect();
    if !addresses.is_empty() {
        node.ip_addresses = Some(addresses);
    }
    node
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use super::*;
    use crate::keys::Resource;
    use crate::testdata;

    /// The documents of `kind` in a multi-document YAML stream.
    fn documents<T: DeserializeOwned>(yaml: &str, kind: &str) -> Vec<T> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
            .filter(|doc| doc["kind"].as_str() == Some(kind))
            .map(|doc| serde_yaml::from_value(doc).unwrap())
            .collect()
    }

    fn expected(json: &str) -> BTreeMap<String, Value> {
        testdata::expected_entries(json).into_iter().collect()
    }

    #[test]
    fn ciliumendpoints_convert_as_clustermesh_apiserver_does() {
        let endpoints: Vec<CiliumEndpoint> = documents(testdata::ENDPOINTS_INPUT, "CiliumEndpoint");
        assert_eq!(endpoints.len(), 2);
        let got: BTreeMap<String, Value> = endpoints
            .iter()
            .flat_map(ciliumendpoint_to_pairs)
            .map(|(key, pair)| (key, serde_json::from_slice(&pair.to_json_bytes()).unwrap()))
            .collect();
        assert_eq!(got, expected(testdata::ENDPOINTS_EXPECTED));

        let namespaces: Vec<Namespace> = documents(testdata::ENDPOINTS_INPUT, "Namespace");
        let names: Vec<&str> = namespaces
            .iter()
            .map(|n| n.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["foo", "bar"]);
    }

    #[test]
    fn ciliumnodes_convert_as_clustermesh_apiserver_does() {
        let cluster = ClusterName::new("cluster3").unwrap();
        let nodes: Vec<CiliumNode> = documents(testdata::NODES_INPUT, "CiliumNode");
        assert_eq!(nodes.len(), 2);
        let got: BTreeMap<String, Value> = nodes
            .iter()
            .map(|cn| ciliumnode_to_node(cn, &cluster, 3))
            .map(|node| {
                let key = Resource::Nodes.source_key(&cluster, node.key_suffix());
                (key, serde_json::from_slice(&node.to_json_bytes()).unwrap())
            })
            .collect();
        assert_eq!(got, expected(testdata::NODES_EXPECTED));
    }

    #[test]
    fn endpoint_edge_cases() {
        let endpoint: CiliumEndpoint = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns",
                "ownerReferences": [{"kind": "ReplicaSet", "uid": "rs"}, {"kind": "Pod", "uid": "u1"}]},
            "status": {"identity": {"id": 70000}, "networking": {"node": "",
                "addressing": [{"ipv4": "10.0.0.1"}, {"ipv6": "not-an-ip"}, {"ipv6": "FD00::1"}]}}
        }))
        .unwrap();
        let pairs = ciliumendpoint_to_pairs(&endpoint);
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cilium/state/ip/v1/default/10.0.0.1",
                "cilium/state/ip/v1/default/fd00::1"
            ]
        );
        let pair = &pairs[0].1;
        assert_eq!((pair.id, pair.key, pair.host_ip), (70000, 0, None));
        assert_eq!(pair.k8s_pod_uid, "u1");
        assert!(pair.named_ports.is_empty() && pair.k8s_service_account.is_empty());

        let no_networking: CiliumEndpoint = serde_json::from_value(
            json!({"metadata": {"name": "p"}, "status": {"identity": {"id": 1}}}),
        )
        .unwrap();
        assert!(ciliumendpoint_to_pairs(&no_networking).is_empty());
    }

    #[test]
    fn node_edge_cases() {
        let cluster = ClusterName::new("c1").unwrap();
        let ciliumnode: CiliumNode = serde_json::from_value(json!({
            "metadata": {"name": "n1", "annotations": {WIREGUARD_PUB_KEY_ANNOTATION_ALIAS: "k"}},
            "spec": {"addresses": [{"ip": "bad", "type": "InternalIP"}],
                "ipam": {"podCIDRs": ["10.1.0.5/24", "10.2.0.0/24", "bad", "fd00::/64", "fd01::/64"]},
                "ingress": {"ipv4": "10.1.0.9"}}
        }))
        .unwrap();
        let node = ciliumnode_to_node(&ciliumnode, &cluster, 1);
        assert_eq!(node.wireguard_pub_key, "k");
        assert_eq!(node.ip_addresses, None);
        assert_eq!(node.labels, None);
        let cidrs: Vec<String> = node.pod_cidrs().iter().map(ToString::to_string).collect();
        assert_eq!(
            cidrs,
            ["10.1.0.0/24", "10.2.0.0/24", "fd00::/64", "fd01::/64"]
        );
        assert_eq!(node.ipv4_ingress_ip, Some("10.1.0.9".parse().unwrap()));
        assert_eq!((node.cluster.as_str(), node.cluster_id), ("c1", 1));
    }
}
