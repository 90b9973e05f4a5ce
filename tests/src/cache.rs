//! What kvstoremesh (or `meshfilter mesh`) writes into a cluster's local cache, the view
//! node agents read: cluster configs, remote nodes with pod CIDRs, endpoints. Built with
//! `meshfilter-cilium`'s types, so they are the values Cilium writes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use etcd_client::Client;
use meshfilter_cilium::keys::cluster_config_key;
use meshfilter_cilium::node::{INTERNAL_IP, NodeAddress};
use meshfilter_cilium::{CiliumClusterConfig, ClusterName, IpIdentityPair, Node, Resource};
use meshfilter_contract::labels::TOPOLOGY_REGION;

/// A cluster name the tests know is valid.
pub fn cluster(name: &str) -> ClusterName {
    ClusterName::new(name).unwrap()
}

/// The cluster config kvstoremesh writes for a mirrored cluster.
pub async fn put_cluster_config(client: &mut Client, name: &str, id: u32) {
    let config = CiliumClusterConfig {
        id,
        ..Default::default()
    };
    client
        .put(
            cluster_config_key(&cluster(name)),
            config.as_cached().to_json_bytes(),
            None,
        )
        .await
        .unwrap();
}

/// A remote node with one pod CIDR, tunnelled to `internal`, in `region`.
pub async fn put_node(
    client: &mut Client,
    name: &str,
    node: &str,
    cidr: &str,
    internal: &str,
    region: &str,
) {
    let c = cluster(name);
    let mut n = Node::new(node, &c, 0);
    n.ipv4_alloc_cidr = Some(cidr.parse().unwrap());
    n.ip_addresses = Some(vec![NodeAddress {
        kind: INTERNAL_IP.into(),
        ip: internal.parse().unwrap(),
    }]);
    n.labels = Some(BTreeMap::from([(
        TOPOLOGY_REGION.to_owned(),
        region.to_owned(),
    )]));
    client
        .put(Resource::Nodes.cache_key(&c, node), n.to_json_bytes(), None)
        .await
        .unwrap();
}

/// An endpoint of `name` on the node `host`.
pub async fn put_endpoint(
    client: &mut Client,
    name: &str,
    addr: IpAddr,
    identity: u32,
    host: &str,
) {
    let mut pair = IpIdentityPair::new(addr);
    pair.id = identity;
    pair.host_ip = Some(host.parse().unwrap());
    client
        .put(
            Resource::Endpoints.cache_key(&cluster(name), &pair.prefix_string()),
            pair.to_json_bytes(),
            None,
        )
        .await
        .unwrap();
}

/// Cluster B as the tests know it: cluster ID 2, node b1 (pod CIDR 198.51.100.0/24 on
/// 203.0.113.2, us-east-1), and `endpoints` on that node.
pub async fn put_cluster_b(client: &mut Client, endpoints: &[(IpAddr, u32)]) {
    put_cluster_config(client, "cluster-b", 2).await;
    put_node(
        client,
        "cluster-b",
        "b1",
        "198.51.100.0/24",
        "203.0.113.2",
        "us-east-1",
    )
    .await;
    for (addr, identity) in endpoints {
        put_endpoint(client, "cluster-b", *addr, *identity, "203.0.113.2").await;
    }
}

pub async fn delete_endpoint(client: &mut Client, name: &str, addr: IpAddr) {
    client
        .delete(
            Resource::Endpoints.cache_key(&cluster(name), &addr.to_string()),
            None,
        )
        .await
        .unwrap();
}
