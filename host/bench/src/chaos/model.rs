//! The model: what the local cache and the export etcd must hold, computed from the final
//! content of the source etcds by rules written down here, independently of the code
//! under test.
//!
//! The rules are the subset of the shipped cfp-scope filter (`filters/cfp-scope`) that the
//! generator exercises, and kvstoremesh's mirroring as Cilium's
//! `pkg/clustermesh/kvstoremesh/reflector` does it:
//! - **export** (`meshfilter export` from an etcd source, which has no annotations): an
//!   endpoint is published when its identity carries the label
//!   `clustermesh.cilium.io/sync=true`; its scope is the identity's
//!   `clustermesh.cilium.io/sync-scope` label (`regional`), `global` when it has none, and
//!   a `cluster` scope never leaves. The published value is the entry with `SyncScope`
//!   set, in Cilium's field order. Nodes, identities, services and the cluster config
//!   travel verbatim; every resource gets its canary.
//! - **import** (`meshfilter mesh`): an endpoint is mirrored verbatim unless its
//!   `SyncScope` is `regional` and the node holding its `HostIP` carries a region label
//!   other than the local cluster's (an unknown region keeps it: fail open), or its scope
//!   is `cluster`, or its identity lies outside the remote's cluster ID range (agents drop
//!   those). Everything else is mirrored verbatim under `cilium/cache/...`, with the
//!   cluster config marked `cached` and a canary per resource.

use std::collections::{BTreeMap, HashMap};

use super::wire::{self, EndpointValue};

/// Every key under `cilium/` of one etcd, with its value.
pub(crate) type Snapshot = BTreeMap<String, Vec<u8>>;

/// What one key must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Want {
    /// Exactly these bytes.
    Exact(Vec<u8>),
    /// An RFC 3339 timestamp (canaries, the heartbeat: written with the time of writing).
    Timestamp,
}

/// The expected content of one etcd (of the part the soak checks).
pub(crate) type Expected = BTreeMap<String, Want>;

/// The entries of `snapshot` under `prefix`, by key suffix.
fn under<'a>(snapshot: &'a Snapshot, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> {
    snapshot
        .range(prefix.to_string()..)
        .take_while(move |(k, _)| k.starts_with(prefix))
        .map(move |(k, v)| (&k[prefix.len()..], v.as_slice()))
}

/// What `meshfilter export` of `cluster` publishes from its unfiltered source etcd.
pub(crate) fn export(cluster: &str, source: &Snapshot) -> Expected {
    let mut expected = Expected::new();
    let config = wire::config_key(cluster);
    if let Some(value) = source.get(&config) {
        expected.insert(config, Want::Exact(value.clone()));
    }
    for resource in wire::ALL_RESOURCES {
        expected.insert(wire::source_canary(cluster, resource), Want::Timestamp);
    }
    for prefix in [
        wire::IDENTITIES.to_string(),
        wire::nodes_prefix(cluster),
        wire::services_prefix(cluster),
    ] {
        for (suffix, value) in under(source, &prefix) {
            expected.insert(format!("{prefix}{suffix}"), Want::Exact(value.to_vec()));
        }
    }
    for (ip, value) in under(source, wire::ENDPOINTS) {
        let Some(endpoint) = EndpointValue::parse(value).filter(|e| e.ip == ip) else {
            continue;
        };
        let labels = source
            .get(&format!("{}{}", wire::IDENTITIES, endpoint.id))
            .map(|v| wire::parse_identity(v))
            .unwrap_or_default();
        if labels.get(wire::SYNC_LABEL).map(String::as_str) != Some("true") {
            continue;
        }
        let scope = match labels.get(wire::SCOPE_LABEL).map(|s| s.trim()) {
            None | Some("") | Some("global") => "global",
            Some("regional") | Some("region") => "regional",
            // `cluster` never leaves; the generator writes no other value.
            Some(_) => continue,
        };
        let published = EndpointValue {
            scope: Some(scope.to_string()),
            ..endpoint
        };
        expected.insert(
            format!("{}{ip}", wire::ENDPOINTS),
            Want::Exact(published.render().into_bytes()),
        );
    }
    expected
}

/// The exact entries of an expectation, as the etcd that holds them would list them: what
/// the mesh reads from an export etcd the exporter keeps as the model says.
pub(crate) fn as_snapshot(expected: &Expected) -> Snapshot {
    expected
        .iter()
        .filter_map(|(k, w)| match w {
            Want::Exact(v) => Some((k.clone(), v.clone())),
            Want::Timestamp => None,
        })
        .collect()
}

/// What `meshfilter mesh` in a cluster of region `local_region` caches of remote
/// `cluster`, whose etcd holds `remote`.
pub(crate) fn import(cluster: &str, remote: &Snapshot, local_region: &str) -> Expected {
    let mut expected = Expected::new();
    let Some((id, max)) = remote
        .get(&wire::config_key(cluster))
        .and_then(|v| wire::parse_config(v))
    else {
        // Without a cluster config nothing can be mirrored; the check then lists
        // whatever is cached as stale.
        return expected;
    };
    expected.insert(
        wire::config_key(cluster),
        Want::Exact(wire::cached_config_value(id, max).into_bytes()),
    );
    for resource in wire::ALL_RESOURCES {
        expected.insert(wire::cache_canary(cluster, resource), Want::Timestamp);
    }
    let mut region_of: HashMap<String, Option<String>> = HashMap::new();
    for (resource, prefix) in [
        ("nodes", wire::nodes_prefix(cluster)),
        ("identities", wire::IDENTITIES.to_string()),
        ("services", wire::services_prefix(cluster)),
    ] {
        for (suffix, value) in under(remote, &prefix) {
            if resource == "nodes"
                && let Some((ips, region)) = wire::parse_node(value)
            {
                for ip in ips {
                    region_of.insert(ip, region.clone());
                }
            }
            expected.insert(
                wire::cache_key(resource, cluster, suffix),
                Want::Exact(value.to_vec()),
            );
        }
    }
    for (ip, value) in under(remote, wire::ENDPOINTS) {
        let Some(endpoint) = EndpointValue::parse(value).filter(|e| e.ip == ip) else {
            continue;
        };
        if !wire::identity_in_range(endpoint.id, id, max) {
            continue;
        }
        let keep = match endpoint.scope.as_deref().map(str::trim) {
            None | Some("") | Some("global") => true,
            Some("regional") | Some("region") => {
                // Kept in the region it comes from; an unknown region fails open.
                match region_of.get(&endpoint.host_ip).cloned().flatten() {
                    Some(origin) => origin == local_region,
                    None => true,
                }
            }
            Some("cluster") => false,
            // Unparsable scopes are kept (fail open); the generator writes no other value.
            Some(_) => true,
        };
        if keep {
            expected.insert(
                wire::cache_key("ip", cluster, ip),
                Want::Exact(value.to_vec()),
            );
        }
    }
    expected
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(kvs: &[(&str, &str)]) -> Snapshot {
        kvs.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn endpoint(ip: &str, id: u32, scope: Option<&str>) -> String {
        EndpointValue {
            ip: ip.into(),
            host_ip: "172.20.1.1".into(),
            id,
            namespace: "shop".into(),
            pod: "p".into(),
            scope: scope.map(str::to_string),
        }
        .render()
    }

    const NODE_US: &str = r#"{"Name":"n","Cluster":"c","IPAddresses":[{"Type":"InternalIP","IP":"172.20.1.1"}],"Labels":{"topology.kubernetes.io/region":"us-east-1"}}"#;

    #[test]
    fn import_drops_regional_endpoints_of_other_regions_only() {
        let config = wire::config_value(1);
        let global = endpoint("10.1.0.10", 65_792, None);
        let regional = endpoint("10.1.0.11", 65_792, Some("regional"));
        let foreign_id = endpoint("10.1.0.12", 2 * 65_536 + 256, None);
        let remote = snapshot(&[
            ("cilium/cluster-config/c", &config),
            ("cilium/state/nodes/v1/c/n", NODE_US),
            ("cilium/state/ip/v1/default/10.1.0.10", &global),
            ("cilium/state/ip/v1/default/10.1.0.11", &regional),
            ("cilium/state/ip/v1/default/10.1.0.12", &foreign_id),
        ]);
        let in_eu = import("c", &remote, "eu-west-1");
        assert!(in_eu.contains_key("cilium/cache/ip/v1/c/10.1.0.10"));
        assert!(!in_eu.contains_key("cilium/cache/ip/v1/c/10.1.0.11"));
        assert!(!in_eu.contains_key("cilium/cache/ip/v1/c/10.1.0.12"));
        assert!(in_eu.contains_key("cilium/cache/nodes/v1/c/n"));
        assert_eq!(
            in_eu["cilium/synced/c/cilium/cache/endpointslices/v1"],
            Want::Timestamp
        );
        let in_us = import("c", &remote, "us-east-1");
        assert!(in_us.contains_key("cilium/cache/ip/v1/c/10.1.0.11"));
    }

    #[test]
    fn export_publishes_opted_in_endpoints_with_their_scope() {
        let id = |n: u32| (1 << 16) + 256 + n;
        let source = snapshot(&[
            ("cilium/cluster-config/c", &wire::config_value(1)),
            (
                &format!("cilium/state/identities/v1/id/{}", id(0)),
                "k8s:app=a;k8s:clustermesh.cilium.io/sync=true;",
            ),
            (
                &format!("cilium/state/identities/v1/id/{}", id(1)),
                "k8s:app=b;k8s:clustermesh.cilium.io/sync=true;k8s:clustermesh.cilium.io/sync-scope=regional;",
            ),
            (
                &format!("cilium/state/identities/v1/id/{}", id(2)),
                "k8s:app=c;",
            ),
            (
                "cilium/state/ip/v1/default/10.1.0.1",
                &endpoint("10.1.0.1", id(0), None),
            ),
            (
                "cilium/state/ip/v1/default/10.1.0.2",
                &endpoint("10.1.0.2", id(1), None),
            ),
            (
                "cilium/state/ip/v1/default/10.1.0.3",
                &endpoint("10.1.0.3", id(2), None),
            ),
        ]);
        let out = export("c", &source);
        assert_eq!(
            out["cilium/state/ip/v1/default/10.1.0.1"],
            Want::Exact(endpoint("10.1.0.1", id(0), Some("global")).into_bytes())
        );
        assert_eq!(
            out["cilium/state/ip/v1/default/10.1.0.2"],
            Want::Exact(endpoint("10.1.0.2", id(1), Some("regional")).into_bytes())
        );
        assert!(!out.contains_key("cilium/state/ip/v1/default/10.1.0.3"));
        assert!(out.contains_key("cilium/synced/c/cilium/state/serviceexports/v1"));
    }
}
