//! Writes what a clustermesh-apiserver writes for a cluster: its cluster config, nodes
//! (with topology labels and pod CIDRs), identities and endpoints, in Cilium's layout.

use etcd_client::Client;
use serde_json::json;

/// One synthetic source cluster.
#[derive(Debug, Clone)]
pub struct SourceCluster {
    /// Cluster name.
    pub name: String,
    /// Cluster ID (1-255).
    pub id: u32,
    /// Region label of its nodes.
    pub region: String,
    /// Zone label of its nodes.
    pub zone: String,
}

impl SourceCluster {
    /// A cluster with nodes in `region`/`zone`.
    pub fn new(name: &str, id: u32, region: &str, zone: &str) -> SourceCluster {
        SourceCluster {
            name: name.into(),
            id,
            region: region.into(),
            zone: zone.into(),
        }
    }

    /// IP of node `n` (also its `HostIP`).
    pub fn node_ip(&self, n: u32) -> String {
        format!("172.20.{}.{}", self.id, n + 1)
    }

    /// Pod IP `i` on node `n`, inside that node's /24 pod CIDR.
    pub fn pod_ip(&self, n: u32, i: u32) -> String {
        format!("10.{}.{}.{}", self.id, n, i + 10)
    }

    /// `cilium/cluster-config/<name>` as clustermesh-apiserver writes it.
    pub fn config_kv(&self) -> (String, String) {
        (
            format!("cilium/cluster-config/{}", self.name),
            json!({"id": self.id, "capabilities": {"syncedCanaries": true, "maxConnectedClusters": 255}}).to_string(),
        )
    }

    /// The sync canaries clustermesh-apiserver writes once its initial lists are in etcd
    /// (for the resources the config above exports: endpoints, identities, nodes, legacy
    /// services). Readers list nothing before they exist.
    pub fn synced_kvs(&self) -> Vec<(String, String)> {
        ["ip", "identities", "nodes", "services"]
            .iter()
            .map(|r| {
                (
                    format!("cilium/synced/{}/cilium/state/{r}/v1", self.name),
                    "2026-11-30T00:00:00Z".to_string(),
                )
            })
            .collect()
    }

    /// A node record.
    pub fn node_kv(&self, n: u32) -> (String, String) {
        let name = format!("{}-node-{n}", self.name);
        let value = json!({
            "Name": name, "Cluster": self.name,
            "IPAddresses": [{"Type": "InternalIP", "IP": self.node_ip(n)}],
            "IPv4AllocCIDR": {"IP": format!("10.{}.{}.0", self.id, n), "Mask": "////AA=="},
            "IPv4SecondaryAllocCIDRs": null, "IPv6AllocCIDR": null, "IPv6SecondaryAllocCIDRs": null,
            "IPv4HealthIP": "", "IPv6HealthIP": "", "IPv4IngressIP": "", "IPv6IngressIP": "",
            "ClusterID": self.id, "Source": "custom-resource", "EncryptionKey": 0,
            "Labels": {"topology.kubernetes.io/region": self.region, "topology.kubernetes.io/zone": self.zone,
                       "kubernetes.io/hostname": name},
            "Annotations": {}, "WireguardPubKey": "", "BootID": "00000000-0000-0000-0000-000000000000"
        });
        (
            format!("cilium/state/nodes/v1/{}/{name}", self.name),
            value.to_string(),
        )
    }

    /// An identity in this cluster's range with an `app` label.
    pub fn identity_kv(&self, local_id: u32, app: &str, namespace: &str) -> (String, String) {
        (
            format!("cilium/state/identities/v1/id/{}", self.identity(local_id)),
            format!(
                "k8s:app={app};k8s:io.cilium.k8s.policy.cluster={};k8s:io.kubernetes.pod.namespace={namespace};",
                self.name
            ),
        )
    }

    /// Numeric identity `local_id` of this cluster (in its `id << 16` range).
    pub fn identity(&self, local_id: u32) -> u32 {
        (self.id << 16) + 256 + local_id
    }

    /// The smallest published cluster: its config, node 0, identity 0 (`app=web` in
    /// namespace `shop`), pod 0 of node 0 with `scope`, and the sync canaries.
    pub fn one_pod(&self, scope: Option<&str>) -> Vec<(String, String)> {
        let mut kvs = vec![
            self.config_kv(),
            self.node_kv(0),
            self.identity_kv(0, "web", "shop"),
            self.endpoint_kv(0, 0, 0, scope),
        ];
        kvs.extend(self.synced_kvs());
        kvs
    }

    /// An ipcache entry for pod `i` on node `n`, with an optional `SyncScope`.
    pub fn endpoint_kv(
        &self,
        n: u32,
        i: u32,
        local_id: u32,
        scope: Option<&str>,
    ) -> (String, String) {
        let ip = self.pod_ip(n, i);
        let mut value = json!({
            "IP": ip, "HostIP": self.node_ip(n), "ID": self.identity(local_id), "Key": 0, "Metadata": "",
            "K8sNamespace": "shop", "K8sPodName": format!("pod-{n}-{i}"), "K8sServiceAccount": "default"
        });
        if let Some(scope) = scope {
            value["SyncScope"] = json!(scope);
        }
        (
            format!("cilium/state/ip/v1/default/{ip}"),
            value.to_string(),
        )
    }
}

/// Puts `kvs` into `client`'s etcd.
pub async fn put_all(client: &Client, kvs: impl IntoIterator<Item = (String, String)>) {
    let mut kv = client.kv_client();
    for (k, v) in kvs {
        kv.put(k, v, None).await.expect("put");
    }
}

/// Every key/value under `prefix`, sorted by key.
pub async fn list(client: &Client, prefix: &str) -> Vec<(String, String)> {
    let mut kv = client.kv_client();
    let resp = kv
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("get");
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap_or("<binary>").to_string(),
            )
        })
        .collect()
}

/// Every key under `prefix` with the lease it is attached to (0: none), sorted by key.
pub async fn list_leases(client: &Client, prefix: &str) -> Vec<(String, i64)> {
    let mut kv = client.kv_client();
    let resp = kv
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("get");
    resp.kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.lease()))
        .collect()
}

/// Revokes every lease of `client`'s etcd except `keep`, as etcd does when their TTL runs
/// out; returns how many were revoked.
pub async fn revoke_leases_except(client: &Client, keep: &[i64]) -> usize {
    let mut leases = client.lease_client();
    let mut revoked = 0;
    for lease in leases.leases().await.expect("list leases").leases() {
        if !keep.contains(&lease.id()) {
            leases.revoke(lease.id()).await.expect("revoke");
            revoked += 1;
        }
    }
    revoked
}
