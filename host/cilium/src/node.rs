//! The node value under `cilium/state/nodes/v1/<cluster>/<node>` (and
//! `cilium/cache/nodes/v1/<cluster>/<node>`).
//!
//! Mirrors `pkg/node/types` `Node`, which has no JSON tags: fields are named as in Go, nil
//! slices, maps and CIDRs are `null`, nil IPs are `""`, CIDRs are `{"IP", "Mask"}` with a
//! base64 net mask. Cilium's readers add `pkg/node/store` `NameValidator` and
//! `ClusterNameValidator`, which [`Node::parse`] applies too.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use meshfilter_contract::labels::{TOPOLOGY_REGION, TOPOLOGY_ZONE};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::go_json::{self, null_as_default};
use crate::keys::ClusterName;
use crate::value::{KvstoreValue, ValueError, parse_json};

/// Address type of the Kubernetes node's internal IP (`addressing.NodeInternalIP`).
pub const INTERNAL_IP: &str = "InternalIP";
/// Address type of the Kubernetes node's external IP (`addressing.NodeExternalIP`).
pub const EXTERNAL_IP: &str = "ExternalIP";
/// Address type of the IP of `cilium_host` (`addressing.NodeCiliumInternalIP`).
pub const CILIUM_INTERNAL_IP: &str = "CiliumInternalIP";
/// `Source` of nodes published by clustermesh-apiserver from CiliumNodes
/// (`source.CustomResource`).
pub const SOURCE_CUSTOM_RESOURCE: &str = "custom-resource";

/// One address of a node (mirrors `pkg/node/types` `Address`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    /// `InternalIP`, `ExternalIP`, `CiliumInternalIP`, ...
    #[serde(rename = "Type", default, deserialize_with = "null_as_default")]
    pub kind: String,
    /// The address.
    #[serde(rename = "IP", with = "go_json::ip")]
    pub ip: IpAddr,
}

/// A node as stored in the kvstore (mirrors `pkg/node/types` `Node`). Optional fields are
/// `Option` where Go distinguishes nil (written `null`) from empty; unknown fields are kept
/// in [`extra`](Self::extra) and written back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Node name, the last key segment.
    #[serde(rename = "Name", default, deserialize_with = "null_as_default")]
    pub name: String,
    /// Cluster name.
    #[serde(rename = "Cluster", default, deserialize_with = "null_as_default")]
    pub cluster: String,
    /// Node addresses (`null` when nil).
    #[serde(rename = "IPAddresses", default, deserialize_with = "null_as_default")]
    pub ip_addresses: Option<Vec<NodeAddress>>,
    /// Primary IPv4 pod CIDR.
    #[serde(rename = "IPv4AllocCIDR", default, with = "go_json::opt_ipnet")]
    pub ipv4_alloc_cidr: Option<IpNet>,
    /// Further IPv4 pod CIDRs.
    #[serde(
        rename = "IPv4SecondaryAllocCIDRs",
        default,
        with = "go_json::opt_ipnet_list"
    )]
    pub ipv4_secondary_alloc_cidrs: Option<Vec<IpNet>>,
    /// Primary IPv6 pod CIDR.
    #[serde(rename = "IPv6AllocCIDR", default, with = "go_json::opt_ipnet")]
    pub ipv6_alloc_cidr: Option<IpNet>,
    /// Further IPv6 pod CIDRs.
    #[serde(
        rename = "IPv6SecondaryAllocCIDRs",
        default,
        with = "go_json::opt_ipnet_list"
    )]
    pub ipv6_secondary_alloc_cidrs: Option<Vec<IpNet>>,
    /// IPv4 of the cilium-health endpoint.
    #[serde(rename = "IPv4HealthIP", default, with = "go_json::opt_ip")]
    pub ipv4_health_ip: Option<IpAddr>,
    /// IPv6 of the cilium-health endpoint.
    #[serde(rename = "IPv6HealthIP", default, with = "go_json::opt_ip")]
    pub ipv6_health_ip: Option<IpAddr>,
    /// IPv4 of the ingress endpoint.
    #[serde(rename = "IPv4IngressIP", default, with = "go_json::opt_ip")]
    pub ipv4_ingress_ip: Option<IpAddr>,
    /// IPv6 of the ingress endpoint.
    #[serde(rename = "IPv6IngressIP", default, with = "go_json::opt_ip")]
    pub ipv6_ingress_ip: Option<IpAddr>,
    /// Numeric cluster ID.
    #[serde(rename = "ClusterID", default, deserialize_with = "null_as_default")]
    pub cluster_id: u32,
    /// Where the node came from, e.g. [`SOURCE_CUSTOM_RESOURCE`].
    #[serde(rename = "Source", default, deserialize_with = "null_as_default")]
    pub source: String,
    /// IPsec key index, 0 without encryption.
    #[serde(
        rename = "EncryptionKey",
        default,
        deserialize_with = "null_as_default"
    )]
    pub encryption_key: u8,
    /// CiliumNode labels (`null` when nil); carries the topology labels.
    #[serde(rename = "Labels", default, deserialize_with = "null_as_default")]
    pub labels: Option<BTreeMap<String, String>>,
    /// CiliumNode annotations (`null` when nil).
    #[serde(rename = "Annotations", default, deserialize_with = "null_as_default")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// WireGuard public key.
    #[serde(
        rename = "WireguardPubKey",
        default,
        deserialize_with = "null_as_default"
    )]
    pub wireguard_pub_key: String,
    /// Boot ID of the node.
    #[serde(rename = "BootID", default, deserialize_with = "null_as_default")]
    pub boot_id: String,
    /// Fields this crate does not know, kept verbatim so a value round-trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `key` is the key suffix, the node name, after `cilium/state/nodes/v1/<cluster>/` or
/// `cilium/cache/nodes/v1/<cluster>/`. The node's `Name` must be the key and its `Cluster`
/// must be `cluster`, as Cilium's validators demand.
impl KvstoreValue for Node {
    fn parse_with_limit(
        cluster: &ClusterName,
        key_suffix: &str,
        value: &[u8],
        max_len: usize,
    ) -> Result<Self, ValueError> {
        let node: Node = parse_json(cluster, key_suffix, value, max_len, "node")?;
        if node.name != key_suffix {
            return Err(ValueError::NodeNameMismatch {
                cluster: cluster.to_string(),
                key: key_suffix.to_owned(),
                name: node.name,
            });
        }
        if node.cluster != cluster.as_str() {
            return Err(ValueError::NodeClusterMismatch {
                cluster: cluster.to_string(),
                key: key_suffix.to_owned(),
                node_cluster: node.cluster,
            });
        }
        Ok(node)
    }
}

impl Node {
    /// A node with only its identity set; every other field is Go's zero value.
    pub fn new(name: impl Into<String>, cluster: &ClusterName, cluster_id: u32) -> Self {
        Node {
            name: name.into(),
            cluster: cluster.to_string(),
            cluster_id,
            ..Node::default()
        }
    }

    /// Compact JSON, as Cilium writes it.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Node always serialises: string keys, no fallible fields")
    }

    /// The key suffix of this node at a source or in a cache: its name (`GetKeyName()` is
    /// `<cluster>/<name>`, relative to `cilium/state/nodes/v1`).
    pub fn key_suffix(&self) -> &str {
        &self.name
    }

    /// Value of label `key`, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }

    /// The node's region, from label `topology.kubernetes.io/region`.
    pub fn region(&self) -> Option<&str> {
        self.label(TOPOLOGY_REGION)
    }

    /// The node's zone, from label `topology.kubernetes.io/zone`.
    pub fn zone(&self) -> Option<&str> {
        self.label(TOPOLOGY_ZONE)
    }

    /// The node's addresses (empty when nil).
    pub fn addresses(&self) -> &[NodeAddress] {
        self.ip_addresses.as_deref().unwrap_or_default()
    }

    /// Addresses of type `kind` (e.g. [`INTERNAL_IP`]), in order.
    pub fn ips_of_type<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = IpAddr> + 'a {
        self.addresses()
            .iter()
            .filter(move |a| a.kind == kind)
            .map(|a| a.ip)
    }

    /// The node's `InternalIP` addresses: what endpoints on it carry as `HostIP` in the
    /// usual set-ups (Cilium prefers the internal IP as node IP).
    pub fn internal_ips(&self) -> Vec<IpAddr> {
        self.ips_of_type(INTERNAL_IP).collect()
    }

    /// Every pod CIDR of the node: primary IPv4, secondary IPv4, primary IPv6, secondary
    /// IPv6. Remote agents install each as a world-identity ipcache entry tunnelled to this
    /// node (the "/24 fallback").
    pub fn pod_cidrs(&self) -> Vec<IpNet> {
        let mut cidrs = Vec::new();
        for (primary, secondary) in [
            (&self.ipv4_alloc_cidr, &self.ipv4_secondary_alloc_cidrs),
            (&self.ipv6_alloc_cidr, &self.ipv6_secondary_alloc_cidrs),
        ] {
            cidrs.extend(primary.iter().copied());
            cidrs.extend(secondary.iter().flatten().copied());
        }
        cidrs
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::keys::parse_key;
    use crate::testdata;

    fn c3() -> ClusterName {
        ClusterName::new("cluster3").unwrap()
    }

    fn sample(name: &str) -> Value {
        testdata::expected_entries(testdata::NODES_EXPECTED)
            .into_iter()
            .find(|(k, _)| k.ends_with(name))
            .map(|(_, v)| v)
            .unwrap()
    }

    #[test]
    fn cilium_samples_round_trip() {
        for (key, value) in testdata::expected_entries(testdata::NODES_EXPECTED) {
            let suffix = parse_key(&key).unwrap().suffix;
            let node = Node::parse(&c3(), suffix, &serde_json::to_vec(&value).unwrap()).unwrap();
            let again: Value = serde_json::from_slice(&node.to_json_bytes()).unwrap();
            assert_eq!(again, value, "{key}");
            assert_eq!(node.key_suffix(), suffix);
        }
    }

    #[test]
    fn typed_accessors() {
        let node: Node = serde_json::from_value(sample("test-node-1")).unwrap();
        assert_eq!(node.cluster_id, 3);
        assert_eq!(
            node.internal_ips(),
            [
                "172.18.0.2".parse::<IpAddr>().unwrap(),
                "fc00:c111::2".parse().unwrap()
            ]
        );
        assert_eq!(node.ips_of_type(CILIUM_INTERNAL_IP).count(), 2);
        let cidrs: Vec<String> = node.pod_cidrs().iter().map(ToString::to_string).collect();
        assert_eq!(cidrs, ["10.244.0.0/24", "fd00:10:244::/64"]);
        assert_eq!(node.region(), None);
        assert_eq!(node.label("kubernetes.io/hostname"), Some("test-node-1"));

        let mut value = sample("test-node-2");
        value["Labels"][TOPOLOGY_REGION] = json!("eu-west-1");
        value["Labels"][TOPOLOGY_ZONE] = json!("eu-west-1a");
        value["IPv4SecondaryAllocCIDRs"] = json!([{"IP": "10.245.0.0", "Mask": "//8AAA=="}]);
        let node: Node = serde_json::from_value(value).unwrap();
        assert_eq!(
            (node.region(), node.zone()),
            (Some("eu-west-1"), Some("eu-west-1a"))
        );
        let cidrs: Vec<String> = node.pod_cidrs().iter().map(ToString::to_string).collect();
        assert_eq!(
            cidrs,
            ["10.244.1.0/24", "10.245.0.0/16", "fd00:10:244:1::/64"]
        );
    }

    #[test]
    fn tolerant_reader_keeps_unknown_fields() {
        // An older agent's value: no secondary CIDRs, ingress IPs, annotations or boot ID,
        // plus NodeIdentity, which newer Cilium no longer writes.
        let old = json!({"Name":"n1","Cluster":"cluster3","IPAddresses":null,
            "IPv4AllocCIDR":null,"IPv6AllocCIDR":null,"IPv4HealthIP":"","IPv6HealthIP":"",
            "ClusterID":3,"Source":"kvstore","EncryptionKey":0,"Labels":null,"NodeIdentity":7,
            "WireguardPubKey":""});
        let node = Node::parse(&c3(), "n1", &serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(node.extra.get("NodeIdentity"), Some(&json!(7)));
        assert!(node.pod_cidrs().is_empty() && node.addresses().is_empty());
        let again: Value = serde_json::from_slice(&node.to_json_bytes()).unwrap();
        assert_eq!(again["NodeIdentity"], 7);
        assert_eq!(again["IPv4IngressIP"], "");
    }

    #[test]
    fn refuses_what_cilium_refuses() {
        let c = c3();
        let value = serde_json::to_vec(&sample("test-node-1")).unwrap();
        assert!(matches!(
            Node::parse(&c, "test-node-2", &value),
            Err(ValueError::NodeNameMismatch { key, name, .. }) if key == "test-node-2" && name == "test-node-1"
        ));
        let other = ClusterName::new("cluster4").unwrap();
        assert!(matches!(
            Node::parse(&other, "test-node-1", &value),
            Err(ValueError::NodeClusterMismatch { cluster, node_cluster, .. })
                if cluster == "cluster4" && node_cluster == "cluster3"
        ));
        for bad in [
            json!({"Name":"n1","Cluster":"cluster3","IPv4AllocCIDR":{"IP":"10.0.0.0","Mask":"/wD/AA=="}}),
            json!({"Name":"n1","Cluster":"cluster3","IPv4AllocCIDR":{"IP":"10.0.0.0"}}),
            json!({"Name":"n1","Cluster":"cluster3","IPAddresses":[{"Type":"InternalIP","IP":"nope"}]}),
            json!({"Name":"n1","Cluster":"cluster3","ClusterID":-1}),
        ] {
            let err = Node::parse(&c, "n1", &serde_json::to_vec(&bad).unwrap()).unwrap_err();
            assert!(
                matches!(&err, ValueError::Json { cluster, key, kind: "node", .. } if cluster == "cluster3" && key == "n1"),
                "{bad}: {err}"
            );
        }
        assert!(matches!(
            Node::parse_with_limit(&c, "test-node-1", &value, 100),
            Err(ValueError::TooLarge { .. })
        ));
    }
}
