//! Per-remote Prometheus metrics of `meshfilter mesh`, refreshed from live status at every
//! scrape (the status handles are the single source of truth).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    cluster: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    cluster: String,
    resource: String,
}

/// Gauges per remote cluster and of the resolver.
#[derive(Debug, Clone, Default)]
pub struct MeshMetrics {
    connected: Family<ClusterLabel, Gauge>,
    synced: Family<ClusterLabel, Gauge>,
    mirrored: Family<ClusterLabel, Gauge>,
    filtered: Family<ClusterLabel, Gauge>,
    invalid: Family<ClusterLabel, Gauge>,
    retries: Family<ClusterLabel, Gauge>,
    config_changes: Family<ClusterLabel, Gauge>,
    resource_synced: Family<ResourceLabel, Gauge>,
    resource_source: Family<ResourceLabel, Gauge>,
    resource_target: Family<ResourceLabel, Gauge>,
    resource_lists: Family<ResourceLabel, Gauge>,
    resource_retries: Family<ResourceLabel, Gauge>,
    resolver_requests: Gauge,
    resolver_remote_reads: Gauge,
    resolver_resolved: Gauge,
    resolver_rate_limited: Gauge,
}

impl MeshMetrics {
    /// Registers every metric under `meshfilter_remote_*` and `meshfilter_resolver_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("meshfilter_remote");
        r.register(
            "connected",
            "Remote cluster reachable and its config read",
            self.connected.clone(),
        );
        r.register(
            "synced",
            "Every reflector of the remote finished its first sync",
            self.synced.clone(),
        );
        r.register(
            "entries_mirrored",
            "Endpoint entries mirrored into the local cache",
            self.mirrored.clone(),
        );
        r.register(
            "entries_filtered",
            "Endpoint entries the import hook kept out",
            self.filtered.clone(),
        );
        r.register(
            "entries_invalid",
            "Endpoint entries that could not be parsed",
            self.invalid.clone(),
        );
        r.register(
            "retries",
            "Connection and watch failures that led to a retry",
            self.retries.clone(),
        );
        r.register(
            "config_changes",
            "Times the remote's cluster config changed and everything was re-listed",
            self.config_changes.clone(),
        );
        let r = registry.sub_registry_with_prefix("meshfilter_reflector");
        r.register(
            "synced",
            "The reflector's first list is written and its canary in place",
            self.resource_synced.clone(),
        );
        r.register(
            "source_entries",
            "Entries at the remote, per resource",
            self.resource_source.clone(),
        );
        r.register(
            "target_entries",
            "Entries written into the local cache, per resource",
            self.resource_target.clone(),
        );
        r.register(
            "lists",
            "Lists done (the first plus every re-list), per resource",
            self.resource_lists.clone(),
        );
        r.register(
            "retries",
            "Connection and watch failures that led to a retry, per resource",
            self.resource_retries.clone(),
        );
        let r = registry.sub_registry_with_prefix("meshfilter_resolver");
        r.register(
            "requests",
            "On-demand resolution requests",
            self.resolver_requests.clone(),
        );
        r.register(
            "remote_reads",
            "Lookups sent to remote etcds",
            self.resolver_remote_reads.clone(),
        );
        r.register(
            "resolved",
            "Addresses resolved and installed",
            self.resolver_resolved.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused by the rate limit",
            self.resolver_rate_limited.clone(),
        );
    }

    /// Sets every gauge from a status snapshot.
    pub fn refresh(&self, status: &super::mesh::MeshStatus) {
        for r in &status.remotes {
            let label = ClusterLabel {
                cluster: r["cluster"].as_str().unwrap_or("?").to_string(),
            };
            let flag = |v: &serde_json::Value| i64::from(v.as_bool().unwrap_or(false));
            self.connected
                .get_or_create(&label)
                .set(flag(&r["connected"]));
            self.synced.get_or_create(&label).set(flag(&r["synced"]));
            self.mirrored
                .get_or_create(&label)
                .set(r["endpoints"]["kept"].as_i64().unwrap_or(0));
            let filtered: i64 = r["endpoints"]["skipped"]
                .as_object()
                .map(|m| m.values().filter_map(serde_json::Value::as_i64).sum())
                .unwrap_or(0);
            self.filtered.get_or_create(&label).set(filtered);
            self.invalid
                .get_or_create(&label)
                .set(r["endpoints"]["invalid"].as_i64().unwrap_or(0));
            let retries: i64 = r["resources"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v["retries"].as_i64()).sum())
                .unwrap_or(0)
                + r["connectFailures"].as_i64().unwrap_or(0);
            self.retries.get_or_create(&label).set(retries);
            self.config_changes
                .get_or_create(&label)
                .set(r["configChanges"].as_i64().unwrap_or(0));
            for (resource, st) in r["resources"].as_object().into_iter().flatten() {
                let label = ResourceLabel {
                    cluster: label.cluster.clone(),
                    resource: resource.clone(),
                };
                let int = |k: &str| st[k].as_i64().unwrap_or(0);
                self.resource_synced
                    .get_or_create(&label)
                    .set(i64::from(st["synced"].as_bool().unwrap_or(false)));
                self.resource_source
                    .get_or_create(&label)
                    .set(int("sourceEntries"));
                self.resource_target
                    .get_or_create(&label)
                    .set(int("targetEntries"));
                self.resource_lists.get_or_create(&label).set(int("lists"));
                self.resource_retries
                    .get_or_create(&label)
                    .set(int("retries"));
            }
        }
        let counter = |k: &str| status.resolver[k].as_i64().unwrap_or(0);
        self.resolver_requests.set(counter("requests"));
        self.resolver_remote_reads.set(counter("remoteReads"));
        self.resolver_resolved.set(counter("resolved"));
        self.resolver_rate_limited.set(counter("rateLimited"));
    }
}
