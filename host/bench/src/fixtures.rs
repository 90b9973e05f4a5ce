//! Cilium values for the demo and the benchmarks, built through `host/cilium`'s types so
//! they are what Cilium writes, never hand-written JSON; and the bulk writer that loads
//! them into etcd.

use std::collections::BTreeMap;
use std::net::IpAddr;

use etcd_client::{Client, Txn, TxnOp};

use meshfilter_cilium::cluster_config::Capabilities;
use meshfilter_cilium::node::NodeAddress;
use meshfilter_cilium::{CiliumClusterConfig, ClusterName, IpIdentityPair, Node, Resource};

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

/// The sync canaries of `cluster`'s endpoints, identities, nodes and services: in a
/// source etcd (`cached` false) what clustermesh-apiserver writes once its lists are in,
/// in a cache what kvstoremesh writes once its mirror is complete. The mesh lists nothing
/// of a cluster before them.
pub fn canaries(cluster: &ClusterName, cached: bool) -> Vec<(String, String)> {
    [
        Resource::Endpoints,
        Resource::Identities,
        Resource::Nodes,
        Resource::Services,
    ]
    .into_iter()
    .map(|resource| {
        let key = if cached {
            resource.cache_canary_key(cluster)
        } else {
            resource.source_canary_key(cluster)
        };
        (key, "2026-11-30T00:00:00Z".to_string())
    })
    .collect()
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

/// Writes `kvs` in 128-operation transactions from four concurrent writers: how a
/// benchmark fills an etcd at the rate etcd takes it.
pub async fn write_batched(
    client: &Client,
    kvs: impl IntoIterator<Item = (String, String)>,
) -> Result<(), etcd_client::Error> {
    let kvs: Vec<(String, String)> = kvs.into_iter().collect();
    let mut lanes: Vec<Vec<&[(String, String)]>> = vec![Vec::new(); 4];
    for (i, chunk) in kvs.chunks(128).enumerate() {
        lanes[i % 4].push(chunk);
    }
    futures::future::try_join_all(lanes.into_iter().map(|lane| {
        let mut kv = client.kv_client();
        async move {
            for chunk in lane {
                let ops: Vec<TxnOp> = chunk
                    .iter()
                    .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                    .collect();
                kv.txn(Txn::new().and_then(ops)).await?;
            }
            Ok::<_, etcd_client::Error>(())
        }
    }))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Expected values are Cilium's own, from its testdata and types (see the format
    //! notes' ipcache, cluster config and node sections), not from these builders.

    use super::*;

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn endpoint_carries_the_fields_cilium_writes_for_a_pod() {
        let value = json(&endpoint(
            "10.244.1.79".parse().unwrap(),
            "172.18.0.3".parse().unwrap(),
            199_472,
            "foo",
            "cep-001",
            None,
        ));
        // clustermesh-apiserver's testdata: ciliumendpoints.txtar.
        let cilium = json(
            r#"{"IP":"10.244.1.79","Mask":null,"HostIP":"172.18.0.3","ID":199472,"Key":0,"Metadata":"","K8sNamespace":"foo","K8sPodName":"cep-001"}"#,
        );
        for (field, want) in cilium.as_object().unwrap() {
            assert_eq!(&value[field], want, "field {field} of {value}");
        }
        assert!(value.get("SyncScope").is_none(), "no scope asked: {value}");
    }

    #[test]
    fn endpoint_scope_is_the_sync_scope_field() {
        let value = json(&endpoint(
            "10.0.0.1".parse().unwrap(),
            "172.16.0.1".parse().unwrap(),
            65_792,
            "ns",
            "pod",
            Some("regional"),
        ));
        assert_eq!(value["SyncScope"], "regional");
    }

    #[test]
    fn cluster_config_has_cilium_capability_names() {
        let source = json(&cluster_config(3, false));
        assert_eq!(source["id"], 3);
        assert_eq!(source["capabilities"]["syncedCanaries"], true);
        assert_eq!(source["capabilities"]["maxConnectedClusters"], 255);
        assert_ne!(source["capabilities"]["cached"], true);
        let cached = json(&cluster_config(3, true));
        assert_eq!(cached["capabilities"]["cached"], true);
    }

    #[test]
    fn node_has_its_address_cidr_and_topology() {
        let value = json(&node(
            &ClusterName::new("cluster3").unwrap(),
            3,
            "test-node-1",
            "172.18.0.3".parse().unwrap(),
            &[("topology.kubernetes.io/region", "eu-west-1")],
            Some("10.244.1.0/24".parse().unwrap()),
        ));
        assert_eq!(value["Name"], "test-node-1");
        assert_eq!(value["Cluster"], "cluster3");
        assert_eq!(value["ClusterID"], 3);
        assert_eq!(
            value["IPAddresses"],
            json(r#"[{"Type":"InternalIP","IP":"172.18.0.3"}]"#)
        );
        // Go's net.IPNet: the mask as base64 bytes.
        assert_eq!(
            value["IPv4AllocCIDR"],
            json(r#"{"IP":"10.244.1.0","Mask":"////AA=="}"#)
        );
        assert_eq!(
            value["Labels"]["topology.kubernetes.io/region"],
            "eu-west-1"
        );
        assert_eq!(value["Source"], "custom-resource");
    }
}
