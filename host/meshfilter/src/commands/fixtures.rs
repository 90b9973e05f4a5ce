//! Cilium values for the demo and the benchmarks, built through `host/cilium`'s types so
//! they are what Cilium writes, never hand-written JSON.

use std::collections::BTreeMap;
use std::net::IpAddr;

use meshfilter_cilium::cluster_config::Capabilities;
use meshfilter_cilium::node::NodeAddress;
use meshfilter_cilium::{CiliumClusterConfig, ClusterName, IpIdentityPair, Node};

/// `cilium/cluster-config/<name>` of a cluster with sync canaries and 255 clusters at most;
/// `cached` when the data is in kvstoremesh's cache layout.
pub fn cluster_config(id: u32, cached: bool) -> String {
    let config = CiliumClusterConfig {
        id,
        capabilities: Capabilities {
            synced_canaries: true,
            cached,
            max_connected_clusters: 255,
            ..Capabilities::default()
        },
        ..CiliumClusterConfig::default()
    };
    text(config.to_json_bytes())
}

/// A node with one internal IP, a topology, and optionally a pod CIDR.
pub fn node(
    cluster: &ClusterName,
    cluster_id: u32,
    name: &str,
    ip: IpAddr,
    topology: &[(&str, &str)],
    pod_cidr: Option<ipnet::IpNet>,
) -> String {
    let mut node = Node::new(name, cluster, cluster_id);
    node.ip_addresses = Some(vec![NodeAddress {
        kind: "InternalIP".into(),
        ip,
    }]);
    node.ipv4_alloc_cidr = pod_cidr;
    node.source = "custom-resource".into();
    node.labels = Some(
        topology
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    text(node.to_json_bytes())
}

/// A pod's ipcache entry.
pub fn endpoint(
    ip: IpAddr,
    host_ip: IpAddr,
    id: u32,
    namespace: &str,
    pod: &str,
    scope: Option<&str>,
) -> String {
    let mut pair = IpIdentityPair::new(ip);
    pair.host_ip = Some(host_ip);
    pair.id = id;
    pair.k8s_namespace = namespace.into();
    pair.k8s_pod_name = pod.into();
    pair.sync_scope = scope.map(str::to_string);
    text(pair.to_json_bytes())
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("serde_json writes UTF-8")
}
