//! Metrics of the sync engine, recorded where each event happens (the writer counts its
//! transactions and leases, each reflector its lists, retries and refusals, each remote its
//! connection failures), registered once under `meshfilter_*`.
//!
//! One [`SyncMetrics`] is shared (cheap clones of the same families) by every writer,
//! reflector and remote of a process. An unregistered one records into families nobody
//! reads, which is what tests want.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// An etcd written to (`local`, `export`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EtcdLabel {
    pub(crate) etcd: String,
}

/// A transaction's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TxnLabel {
    pub(crate) etcd: String,
    pub(crate) outcome: &'static str,
}

/// One reflector: a resource of a cluster.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResourceLabel {
    pub(crate) cluster: String,
    pub(crate) resource: String,
}

/// An entry refused by a bound.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusedLabel {
    pub(crate) cluster: String,
    pub(crate) resource: String,
    pub(crate) reason: &'static str,
}

/// Endpoints of a cluster by import decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DecisionLabel {
    pub(crate) cluster: String,
    pub(crate) decision: &'static str,
}

/// What became of a resolve request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub(crate) outcome: &'static str,
}

/// A remote cluster.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClusterLabel {
    pub(crate) cluster: String,
}

/// Every metric of the sync engine.
#[derive(Debug, Clone, Default)]
pub struct SyncMetrics {
    pub(crate) txns: Family<TxnLabel, Counter>,
    pub(crate) puts: Family<EtcdLabel, Counter>,
    pub(crate) deletes: Family<EtcdLabel, Counter>,
    pub(crate) leases: Family<EtcdLabel, Gauge>,
    pub(crate) lease_grants: Family<EtcdLabel, Counter>,
    pub(crate) lease_revokes: Family<EtcdLabel, Counter>,
    pub(crate) leases_lost: Family<EtcdLabel, Counter>,
    pub(crate) fenced: Family<EtcdLabel, Counter>,
    pub(crate) synced: Family<ResourceLabel, Gauge>,
    pub(crate) source_entries: Family<ResourceLabel, Gauge>,
    pub(crate) target_entries: Family<ResourceLabel, Gauge>,
    pub(crate) lists: Family<ResourceLabel, Counter>,
    pub(crate) retries: Family<ResourceLabel, Counter>,
    pub(crate) refused: Family<RefusedLabel, Counter>,
    pub(crate) connected: Family<ClusterLabel, Gauge>,
    pub(crate) connect_failures: Family<ClusterLabel, Counter>,
    pub(crate) config_changes: Family<ClusterLabel, Counter>,
    pub(crate) config_enforced: Family<ClusterLabel, Counter>,
    pub(crate) import_endpoints: Family<DecisionLabel, Gauge>,
    pub(crate) import_invalid: Family<ClusterLabel, Gauge>,
    pub(crate) import_failures: Family<ClusterLabel, Counter>,
    pub(crate) resolver: Family<OutcomeLabel, Counter>,
    pub(crate) export_endpoints: Family<ExportLabel, Gauge>,
    pub(crate) export_invalid: Gauge,
}

/// An export decision: the scope an endpoint goes out with, or `skipped`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ExportLabel {
    pub(crate) outcome: String,
}

impl SyncMetrics {
    /// Registers every family in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let w = registry.sub_registry_with_prefix("meshfilter_writer");
        w.register(
            "txns",
            "Transactions sent to a target etcd, by outcome (ok, failed, fenced)",
            self.txns.clone(),
        );
        w.register("puts", "Keys written", self.puts.clone());
        w.register("deletes", "Keys deleted", self.deletes.clone());
        w.register(
            "leases",
            "Leases this process holds keys under",
            self.leases.clone(),
        );
        w.register("lease_grants", "Leases granted", self.lease_grants.clone());
        w.register(
            "lease_revokes",
            "Leases revoked because no key was left on them (own, or left by an earlier writer)",
            self.lease_revokes.clone(),
        );
        w.register(
            "leases_lost",
            "Leases that expired under this process; their keys were written again",
            self.leases_lost.clone(),
        );
        w.register(
            "fenced",
            "Writes refused because this process no longer holds the leader lock",
            self.fenced.clone(),
        );
        let r = registry.sub_registry_with_prefix("meshfilter_reflector");
        r.register(
            "synced",
            "The first list is written and the canary is in place",
            self.synced.clone(),
        );
        r.register(
            "source_entries",
            "Entries at the source",
            self.source_entries.clone(),
        );
        r.register(
            "target_entries",
            "Entries written at the target",
            self.target_entries.clone(),
        );
        r.register("lists", "Complete lists of the source", self.lists.clone());
        r.register(
            "retries",
            "Source or target failures that led to a retry",
            self.retries.clone(),
        );
        r.register(
            "refused",
            "Source entries refused by a bound (too large, over the key cap, outside the cluster's identity range, unparsable)",
            self.refused.clone(),
        );
        let c = registry.sub_registry_with_prefix("meshfilter_remote");
        c.register(
            "connected",
            "Remote cluster reachable and its config read",
            self.connected.clone(),
        );
        c.register(
            "connect_failures",
            "Failed attempts to reach a remote cluster",
            self.connect_failures.clone(),
        );
        c.register(
            "config_changes",
            "Times a remote's cluster config changed and everything was listed again",
            self.config_changes.clone(),
        );
        c.register(
            "config_enforced",
            "Times the cached cluster config was written (start, periodic, lease loss, external edit)",
            self.config_enforced.clone(),
        );
        let i = registry.sub_registry_with_prefix("meshfilter_import");
        i.register(
            "endpoints",
            "Remote endpoints by the import hook's decision (kept ones are mirrored; in shadow mode all are)",
            self.import_endpoints.clone(),
        );
        i.register(
            "invalid",
            "Remote endpoints that cannot be used (malformed, IP not matching its key, identity outside the cluster's range)",
            self.import_invalid.clone(),
        );
        i.register(
            "failures",
            "Import decisions made by a failure policy because a filter failed",
            self.import_failures.clone(),
        );
        let e = registry.sub_registry_with_prefix("meshfilter_export");
        e.register(
            "endpoints",
            "Endpoints by the export hook's decision: the scope they go out with, or skipped",
            self.export_endpoints.clone(),
        );
        e.register(
            "invalid",
            "Source endpoints that cannot be used (malformed), not exported",
            self.export_invalid.clone(),
        );
        registry.register(
            "meshfilter_resolver_requests",
            "On-demand resolve requests by outcome (resolved, not-found, negative-hit, rate-limited, client-rate-limited, deduplicated, refused, not-installed) and remote reads (remote-read, remote-error)",
            self.resolver.clone(),
        );
    }

    pub(crate) fn count_export(&self, outcome: &str, delta: i64) {
        self.export_endpoints
            .get_or_create(&ExportLabel {
                outcome: outcome.to_string(),
            })
            .inc_by(delta);
    }

    pub(crate) fn resolved(&self, outcome: &'static str) {
        self.resolver.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub(crate) fn etcd(&self, etcd: &str) -> EtcdLabel {
        EtcdLabel {
            etcd: etcd.to_string(),
        }
    }

    pub(crate) fn cluster(&self, cluster: &str) -> ClusterLabel {
        ClusterLabel {
            cluster: cluster.to_string(),
        }
    }
}
