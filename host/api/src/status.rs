//! `/status` of `meshfilter mesh`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything `meshfilter mesh` reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshStatus {
    /// This cluster.
    pub cluster: String,
    /// Whether this replica holds the leader lock (only the leader writes the cache).
    pub leader: bool,
    /// The filter generation serving decisions.
    pub filters: FilterSummary,
    /// Per remote cluster, by name.
    pub remotes: Vec<RemoteStatus>,
    /// On-demand resolution counters.
    pub resolver: ResolverCounters,
    /// The leases the cache is written under.
    pub writer: WriterStatus,
}

/// The filter generation serving decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FilterSummary {
    /// Generation number (1 at start, +1 per successful reload).
    pub generation: u64,
    /// When it went live (seconds since the Unix epoch).
    pub loaded_at_unix: u64,
    /// Module files it runs, with their sha256.
    pub modules: BTreeMap<String, String>,
    /// Module files of each hook's chain, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Why the last reload failed, if it did (bounded in length).
    pub last_reload_error: Option<String>,
    /// Canary rollout of new generations and their automatic rollback.
    pub rollout: RolloutStatus,
}

/// Canary rollout: which generation is stable, which one is on probation, and the last
/// one rolled back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RolloutStatus {
    /// Whether new generations go through a canary (`filters.rollout` is set).
    pub enabled: bool,
    /// The generation deciding for every input outside the canary share.
    pub stable_generation: u64,
    /// The generation on probation, if any.
    pub candidate: Option<CandidateStatus>,
    /// The last generation rolled back, if any.
    pub last_rollback: Option<RollbackStatus>,
    /// Candidates promoted to stable since start.
    pub promotions: u64,
}

/// A generation on probation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CandidateStatus {
    /// Its number.
    pub generation: u64,
    /// `file@sha256-prefix` of its modules.
    pub modules: Vec<String>,
    /// Share of inputs it decides, in percent.
    pub canary_percent: f64,
    /// When it became the candidate (seconds since the Unix epoch).
    pub since_unix: u64,
    /// Seconds until it is promoted if it stays within its bounds.
    pub promote_in_seconds: u64,
    /// Decisions it made.
    pub decisions: u64,
    /// Of those, failed calls (trap, deadline, memory, blocking).
    pub failures: u64,
    /// Of those, decisions whose effect differs from the stable generation's.
    pub changed: u64,
}

/// A generation rolled back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RollbackStatus {
    /// Its number.
    pub generation: u64,
    /// `file@sha256-prefix` of its modules.
    pub modules: Vec<String>,
    /// When (seconds since the Unix epoch).
    pub at_unix: u64,
    /// `failures` or `changes`: the bound it crossed.
    pub cause: String,
    /// The figures, in words.
    pub reason: String,
    /// Decisions it made as candidate.
    pub decisions: u64,
    /// Failed calls among them.
    pub failures: u64,
    /// Changed decisions among them.
    pub changed: u64,
}

/// One remote cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RemoteStatus {
    /// Cluster name.
    pub cluster: String,
    /// Connected and its cluster config read.
    pub connected: bool,
    /// Every resource finished its first sync.
    pub synced: bool,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Last connection error (bounded in length).
    pub last_error: Option<String>,
    /// Times the remote's cluster config changed and everything was listed again.
    pub config_changes: u64,
    /// Times the cached cluster config was written (start, periodic, lease loss, edits).
    pub config_enforced: u64,
    /// Per resource (`endpoints`, `identities`, `nodes`, ...).
    pub resources: BTreeMap<String, ReflectorStatus>,
    /// What the import hook kept and filtered.
    pub endpoints: ImportStats,
}

/// One reflector: a resource of a remote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ReflectorStatus {
    /// The first list has been written and the canary is in place.
    pub synced: bool,
    /// Waiting for this source key (the source's own sync canary) before listing.
    pub waiting_for: Option<String>,
    /// Entries at the source (accepted).
    pub source_entries: usize,
    /// Entries written at the target.
    pub target_entries: usize,
    /// Lists done (1 plus every relist).
    pub lists: u64,
    /// Source or target failures that led to a retry.
    pub retries: u64,
    /// Entries refused by a bound, by reason (`too-large`, `over-cap`), since start.
    pub refused: BTreeMap<String, u64>,
    /// The etcd cluster ID the source is pinned to (not Cilium's cluster ID).
    pub etcd_cluster_id: u64,
    /// Last error, if the last attempt failed (bounded in length).
    pub last_error: Option<String>,
}

/// What the import hook did with one remote cluster's endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ImportStats {
    /// Entries mirrored.
    pub kept: usize,
    /// Entries filtered out, by reason.
    pub skipped: BTreeMap<String, usize>,
    /// Entries that could not be used (malformed, IP not matching its key, identity
    /// outside the cluster's range).
    pub invalid: usize,
    /// Decisions made by a failure policy rather than a filter.
    pub failures: usize,
    /// Shadow mode: the counts say what the import hook would do, but everything is
    /// mirrored.
    pub shadow: bool,
}

/// Counters of the on-demand resolver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResolverCounters {
    /// Requests received.
    pub requests: u64,
    /// Requests that joined a fetch already in flight for the same address.
    pub deduplicated: u64,
    /// Requests answered from the negative cache.
    pub negative_hits: u64,
    /// Requests refused by the overall rate limit.
    pub rate_limited: u64,
    /// Requests refused by the per-client rate limit.
    pub client_rate_limited: u64,
    /// Fetches sent to remote etcds.
    pub remote_reads: u64,
    /// Remote reads that failed or timed out.
    pub remote_errors: u64,
    /// Found entries refused because the mirror would not accept them.
    pub refused: u64,
    /// Addresses resolved.
    pub resolved: u64,
}

/// The leases the cache is written under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WriterStatus {
    /// Lease TTL in seconds.
    pub lease_ttl_seconds: u64,
    /// Every lease this process keeps alive, with the keys counted on it.
    pub leases: Vec<LeaseStatus>,
}

/// One lease.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LeaseStatus {
    /// Lease ID (as etcd prints it, decimal).
    pub id: i64,
    /// Keys counted on it.
    pub keys: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_etcd_cluster_id_is_not_ciliums_cluster_id() {
        let status = ReflectorStatus {
            etcd_cluster_id: 42,
            ..ReflectorStatus::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["etcdClusterId"], 42);
        assert!(json.get("clusterId").is_none(), "{json}");
    }
}
