//! What filters see of one cluster, read from its clustermesh etcd in one pass: the input
//! of `meshfilter snapshot` and, through it, of `meshfilter filter diff`.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use meshfilter_cilium::{ClusterName, IpIdentityPair, KvstoreValue, Resource};
use meshfilter_etcd::{Client, Pages};
use meshfilter_whatif::ClusterSnapshot;

use crate::caches::{IdentityCache, NodeCache, endpoint_input};
use crate::error::SyncError;

/// Reads `cluster`'s nodes, identities and endpoints from `client` (an etcd written the
/// way clustermesh-apiserver writes, named `etcd` in errors), paged, and joins them the
/// way the mirrors do: what the cluster's export hook, and every consumer's import hook
/// before the scope is recorded, sees. Entries that do not parse are skipped and
/// counted in the second value.
pub async fn capture_cluster(
    client: &Client,
    etcd: &str,
    cluster: &ClusterName,
) -> Result<(ClusterSnapshot, usize), SyncError> {
    let nodes = NodeCache::new(cluster.clone());
    let identities = IdentityCache::new(cluster.clone());
    let list = |resource: Resource| {
        let prefix = resource.source_prefix(cluster);
        async move {
            let (entries, _) = Pages::new(client, etcd, &prefix).collect().await?;
            Ok::<_, SyncError>(
                entries
                    .into_iter()
                    .filter_map(|e| {
                        let suffix = e.key.strip_prefix(prefix.as_str())?.to_string();
                        Some((suffix, e.value))
                    })
                    .collect::<Vec<(String, Bytes)>>(),
            )
        }
    };
    let node_entries = list(Resource::Nodes).await?;
    for (suffix, value) in &node_entries {
        nodes.update(suffix, Some(value));
    }
    let identity_entries = list(Resource::Identities).await?;
    for (suffix, value) in &identity_entries {
        identities.update(suffix, Some(value));
    }
    let mut invalid = 0;
    let mut endpoints = Vec::new();
    for (ip, value) in list(Resource::Endpoints).await? {
        match IpIdentityPair::parse(cluster, &ip, &value) {
            // Entries of pods only: host, world and CIDR entries are not endpoints any
            // filter decides about.
            Ok(pair) if !pair.k8s_pod_name.is_empty() => {
                let labels = identities.labels_of(pair.id);
                endpoints.push(Arc::new(endpoint_input(
                    &ip,
                    &pair,
                    cluster.as_str(),
                    &nodes,
                    labels,
                    None,
                )));
            }
            Ok(_) => {}
            Err(e) => {
                invalid += 1;
                tracing::warn!(%cluster, key = %ip, error = %e, "skipping an invalid endpoint entry");
            }
        }
    }
    let agreed = |field: fn(&meshfilter_filter_runtime::EndpointInput) -> Option<&String>| {
        let values: BTreeSet<_> = endpoints.iter().map(|e| field(e)).collect();
        match values.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(one)] => Some((*one).clone()),
            _ => None,
        }
    };
    let region = agreed(|e| e.origin.region.as_ref());
    let zone = agreed(|e| e.origin.zone.as_ref());
    Ok((
        ClusterSnapshot {
            name: cluster.to_string(),
            region,
            zone,
            nodes: nodes.len(),
            identities: identity_entries.len(),
            endpoints,
        },
        invalid,
    ))
}
