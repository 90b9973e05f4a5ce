//! Cilium's kvstore keys and values as the soak writes them into the remote clusters and
//! expects them back, written down here on purpose rather than taken from
//! `meshfilter-cilium`: the model must not share code with what it checks, or a wrong key
//! or a wrong field would be expected as well as produced.
//!
//! The layouts follow Cilium's (clustermesh-apiserver's state
//! prefixes, kvstoremesh's cache prefixes, base-prefix canaries, the compact JSON of
//! `IPIdentityPair` with `SyncScope` last and of `CiliumClusterConfig` with `omitempty`).

use std::collections::BTreeMap;

use serde_json::Value;

/// Where clustermesh-apiserver writes endpoints (not keyed by cluster, cilium/cilium#41429).
pub(crate) const ENDPOINTS: &str = "cilium/state/ip/v1/default/";
/// Where clustermesh-apiserver writes identities.
pub(crate) const IDENTITIES: &str = "cilium/state/identities/v1/id/";
/// The label a pod opts in with (CFP-44921 Part A); identities carry the pod's labels.
pub(crate) const SYNC_LABEL: &str = "clustermesh.cilium.io/sync";
/// The scope label (CFP-44921 Part B), read when the pod has no annotation.
pub(crate) const SCOPE_LABEL: &str = "clustermesh.cilium.io/sync-scope";
/// The node label the regional filter keys on.
pub(crate) const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// The node label of the zone.
pub(crate) const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Resources clustermesh-apiserver writes a canary for with the config of
/// [`config_value`] (legacy services, no service exports, no endpoint slices).
pub(crate) const SOURCE_RESOURCES: [&str; 4] = ["ip", "identities", "nodes", "services"];
/// Every resource kvstoremesh (and `meshfilter export`) writes a canary for: the disabled
/// ones too, because agents wait for all of them.
pub(crate) const ALL_RESOURCES: [&str; 6] = [
    "ip",
    "identities",
    "nodes",
    "services",
    "serviceexports",
    "endpointslices",
];

/// `cilium/state/nodes/v1/<cluster>/`.
pub(crate) fn nodes_prefix(cluster: &str) -> String {
    format!("cilium/state/nodes/v1/{cluster}/")
}

/// `cilium/state/services/v1/<cluster>/`.
pub(crate) fn services_prefix(cluster: &str) -> String {
    format!("cilium/state/services/v1/{cluster}/")
}

/// `cilium/cluster-config/<cluster>`.
pub(crate) fn config_key(cluster: &str) -> String {
    format!("cilium/cluster-config/{cluster}")
}

/// The canary a cluster writes at its source once `resource`'s initial list is in etcd.
pub(crate) fn source_canary(cluster: &str, resource: &str) -> String {
    format!("cilium/synced/{cluster}/cilium/state/{resource}/v1")
}

/// The canary kvstoremesh writes in its cache once `resource` of `cluster` is mirrored.
pub(crate) fn cache_canary(cluster: &str, resource: &str) -> String {
    format!("cilium/synced/{cluster}/cilium/cache/{resource}/v1")
}

/// The cache key of a mirrored entry: `resource` of `cluster`, key `suffix` after its
/// source prefix. Identities keep their `id/` segment after the cluster.
pub(crate) fn cache_key(resource: &str, cluster: &str, suffix: &str) -> String {
    match resource {
        "identities" => format!("cilium/cache/identities/v1/{cluster}/id/{suffix}"),
        _ => format!("cilium/cache/{resource}/v1/{cluster}/{suffix}"),
    }
}

/// The cluster config a clustermesh-apiserver writes (canaries, a mesh of 255).
pub(crate) fn config_value(id: u32) -> String {
    format!(r#"{{"id":{id},"capabilities":{{"syncedCanaries":true,"maxConnectedClusters":255}}}}"#)
}

/// The config kvstoremesh writes for a cluster it mirrors: the source's with `cached`.
pub(crate) fn cached_config_value(id: u32, max_connected_clusters: u32) -> String {
    format!(
        r#"{{"id":{id},"capabilities":{{"syncedCanaries":true,"cached":true,"maxConnectedClusters":{max_connected_clusters}}}}}"#
    )
}

/// A cluster config's ID and mesh size.
pub(crate) fn parse_config(value: &[u8]) -> Option<(u32, u32)> {
    let v: Value = serde_json::from_slice(value).ok()?;
    let id = u32::try_from(v.get("id")?.as_u64()?).ok()?;
    let max = v["capabilities"]["maxConnectedClusters"]
        .as_u64()
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(255);
    Some((id, max))
}

/// Whether identity `id` belongs to cluster `cluster_id` in a mesh of `max` clusters, as
/// agents (and so the mirror) accept it: reserved identities (< 256) anywhere, others only
/// inside `[cluster_id << shift, ((cluster_id + 1) << shift) - 1]`.
pub(crate) fn identity_in_range(id: u32, cluster_id: u32, max: u32) -> bool {
    if id < 256 {
        return true;
    }
    let shift = if max == 511 { 15 } else { 16 };
    let (id, cluster_id) = (u64::from(id), u64::from(cluster_id));
    (cluster_id << shift..(cluster_id + 1) << shift).contains(&id)
}

/// An identity value: `k8s:<key>=<value>;` per label, sorted by key (`SortedList`).
pub(crate) fn identity_value(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("k8s:{k}={v};"))
        .collect()
}

/// The `k8s` labels of an identity value.
pub(crate) fn parse_identity(value: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(value)
        .split(';')
        .filter_map(|label| {
            let (source, rest) = label.split_once(':')?;
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            (source == "k8s").then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

/// A node record, in `pkg/node/types` `Node`'s Go field names.
pub(crate) struct NodeRecord<'a> {
    pub(crate) cluster: &'a str,
    pub(crate) cluster_id: u32,
    pub(crate) name: &'a str,
    pub(crate) ip: &'a str,
    pub(crate) pod_cidr_ip: &'a str,
    pub(crate) region: Option<&'a str>,
    pub(crate) zone: Option<&'a str>,
}

impl NodeRecord<'_> {
    /// The JSON clustermesh-apiserver writes.
    pub(crate) fn render(&self) -> String {
        let mut labels = serde_json::Map::new();
        labels.insert("kubernetes.io/hostname".into(), self.name.into());
        if let Some(region) = self.region {
            labels.insert(REGION_LABEL.into(), region.into());
        }
        if let Some(zone) = self.zone {
            labels.insert(ZONE_LABEL.into(), zone.into());
        }
        serde_json::json!({
            "Name": self.name, "Cluster": self.cluster,
            "IPAddresses": [{"Type": "InternalIP", "IP": self.ip}],
            "IPv4AllocCIDR": {"IP": self.pod_cidr_ip, "Mask": "////AA=="},
            "IPv4HealthIP": "", "IPv6HealthIP": "", "IPv4IngressIP": "", "IPv6IngressIP": "",
            "ClusterID": self.cluster_id, "Source": "custom-resource", "EncryptionKey": 0,
            "Labels": labels, "Annotations": {}, "WireguardPubKey": "",
            "BootID": "00000000-0000-0000-0000-000000000000"
        })
        .to_string()
    }
}

/// A node's addresses and region label, as the regional filter looks them up.
pub(crate) fn parse_node(value: &[u8]) -> Option<(Vec<String>, Option<String>)> {
    let v: Value = serde_json::from_slice(value).ok()?;
    let ips = v["IPAddresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|addr| addr["IP"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let region = v["Labels"][REGION_LABEL].as_str().map(str::to_string);
    Some((ips, region))
}

/// An ipcache entry (`IPIdentityPair`), with the fields the soak writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointValue {
    pub(crate) ip: String,
    pub(crate) host_ip: String,
    pub(crate) id: u32,
    pub(crate) namespace: String,
    pub(crate) pod: String,
    pub(crate) scope: Option<String>,
}

impl EndpointValue {
    /// Compact JSON in Cilium's field order (no `Mask` for a host entry, the newest form),
    /// `SyncScope` last when set.
    pub(crate) fn render(&self) -> String {
        let text = |s: &str| Value::String(s.to_string()).to_string();
        let mut out = format!(
            r#"{{"IP":{},"HostIP":{},"ID":{},"Key":0,"Metadata":"","K8sNamespace":{},"K8sPodName":{},"K8sServiceAccount":"default""#,
            text(&self.ip),
            text(&self.host_ip),
            self.id,
            text(&self.namespace),
            text(&self.pod),
        );
        if let Some(scope) = &self.scope {
            out.push_str(&format!(r#","SyncScope":{}"#, text(scope)));
        }
        out.push('}');
        out
    }

    /// Reads what [`EndpointValue::render`] writes (the scope also as `syncScope`, empty
    /// as none); `None` for anything else.
    pub(crate) fn parse(value: &[u8]) -> Option<EndpointValue> {
        let v: Value = serde_json::from_slice(value).ok()?;
        let field = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_string);
        Some(EndpointValue {
            ip: field("IP")?,
            host_ip: field("HostIP").unwrap_or_default(),
            id: u32::try_from(v.get("ID")?.as_u64()?).ok()?,
            namespace: field("K8sNamespace").unwrap_or_default(),
            pod: field("K8sPodName").unwrap_or_default(),
            scope: field("SyncScope")
                .or_else(|| field("syncScope"))
                .filter(|s| !s.is_empty()),
        })
    }
}

/// A legacy global service (`ClusterService`), enough of it for a verbatim mirror.
pub(crate) fn service_value(
    cluster: &str,
    cluster_id: u32,
    namespace: &str,
    name: &str,
    port: u16,
) -> String {
    serde_json::json!({
        "cluster": cluster, "namespace": namespace, "name": name,
        "frontends": {"10.96.0.10": {"http": {"Protocol": "TCP", "Port": port}}},
        "backends": {}, "labels": {}, "selector": {}, "includeExternal": true, "shared": true,
        "clusterID": cluster_id
    })
    .to_string()
}

/// Whether a canary or heartbeat value is an RFC 3339 timestamp, as `time.Now()
/// .Format(time.RFC3339)` writes it.
pub(crate) fn is_timestamp(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok_and(|t| humantime::parse_rfc3339_weak(t).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_values_round_trip() {
        let e = EndpointValue {
            ip: "10.1.0.10".into(),
            host_ip: "172.20.1.1".into(),
            id: 65_792,
            namespace: "shop".into(),
            pod: "pod-1".into(),
            scope: Some("regional".into()),
        };
        assert_eq!(
            e.render(),
            r#"{"IP":"10.1.0.10","HostIP":"172.20.1.1","ID":65792,"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"pod-1","K8sServiceAccount":"default","SyncScope":"regional"}"#
        );
        assert_eq!(EndpointValue::parse(e.render().as_bytes()), Some(e));
    }

    #[test]
    fn identity_ranges_follow_the_cluster_id() {
        assert!(identity_in_range(65_536 + 300, 1, 255));
        assert!(!identity_in_range(2 * 65_536 + 300, 1, 255));
        assert!(identity_in_range(100, 7, 255));
    }

    #[test]
    fn labels_and_configs() {
        let labels: BTreeMap<String, String> = [("b", "2"), ("a", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(identity_value(&labels), "k8s:a=1;k8s:b=2;");
        assert_eq!(parse_identity(b"k8s:a=1;reserved:x;k8s:b=2;"), labels);
        assert_eq!(parse_config(config_value(9).as_bytes()), Some((9, 255)));
        assert!(is_timestamp(b"2026-11-30T00:00:00Z"));
        assert!(!is_timestamp(b"yesterday"));
    }
}
