//! Canary rollout of a new filter generation, and its automatic rollback.
//!
//! Without a rollout policy a reload swaps the new generation in for every decision at
//! once. With one, the new generation becomes a *candidate*: it decides for a stable,
//! hashed share of the inputs (the same endpoints every time, so an endpoint does not
//! flap between generations), while the *stable* generation keeps deciding the rest.
//! For every input the candidate decides, the stable generation decides too, so the
//! candidate's failures and the decisions it changes are counted as they happen. When
//! either crosses its bound the candidate is rolled back: the stable generation decides
//! everything again, the owners of decided state re-decide, and the rejected module set
//! is not loaded again until its files change. A candidate that stays within its bounds
//! for `promote_after` becomes the stable generation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use meshfilter_api::{CandidateStatus, RollbackStatus, RolloutStatus};
use sha2::Digest;

use crate::decision::{ExportDecision, ImportDecision, MissDecision};
use crate::input::{EndpointInput, MissInput};
use crate::set::{Decided, FilterGeneration};

/// Shares are counted in basis points, so a canary can be as small as 0.01 %.
const SHARE_BUCKETS: u64 = 10_000;

/// How a new generation is rolled out.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPolicy {
    /// Share of inputs (0 < share <= 100, in percent) the candidate decides.
    pub canary_percent: f64,
    /// How long the candidate must stay within its bounds before it is promoted.
    pub promote_after: Duration,
    /// Rollback when more than this share (0..=1) of the candidate's calls failed...
    pub max_failure_ratio: f64,
    /// ...once it made at least this many decisions (one early failure is not a rate).
    pub min_calls: u64,
    /// Rollback when the candidate changed more decisions than this.
    pub max_changed: u64,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            canary_percent: 10.0,
            promote_after: Duration::from_secs(600),
            max_failure_ratio: 0.01,
            min_calls: 100,
            max_changed: 1_000,
        }
    }
}

impl RolloutPolicy {
    /// Checks the bounds; the error names the field and the value.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.canary_percent > 0.0 && self.canary_percent <= 100.0) {
            return Err(format!(
                "canaryPercent: {} is not in (0, 100]",
                self.canary_percent
            ));
        }
        if !(0.0..=1.0).contains(&self.max_failure_ratio) {
            return Err(format!(
                "maxFailureRatio: {} is not in [0, 1]",
                self.max_failure_ratio
            ));
        }
        Ok(())
    }

    fn buckets(&self) -> u64 {
        ((self.canary_percent / 100.0) * SHARE_BUCKETS as f64).round() as u64
    }
}

/// Why a candidate was rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RollbackCause {
    /// Too many of its calls failed.
    Failures,
    /// It changed too many decisions.
    Changes,
}

impl RollbackCause {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RollbackCause::Failures => "failures",
            RollbackCause::Changes => "changes",
        }
    }
}

/// A generation on probation.
pub(crate) struct Candidate {
    pub(crate) generation: Arc<FilterGeneration>,
    since: Instant,
    since_unix: u64,
    buckets: u64,
    counts: Counts,
}

/// A candidate's decisions so far: made, failed, changed.
#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    failures: AtomicU64,
    changed: AtomicU64,
}

impl Counts {
    /// Counts one decision; returns the bound it crossed, if any.
    fn record(&self, failed: bool, changed: bool, policy: &RolloutPolicy) -> Option<RollbackCause> {
        let calls = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let failures = if failed {
            self.failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.failures.load(Ordering::Relaxed)
        };
        let changed = if changed {
            self.changed.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.changed.load(Ordering::Relaxed)
        };
        if calls >= policy.min_calls && failures as f64 > policy.max_failure_ratio * calls as f64 {
            return Some(RollbackCause::Failures);
        }
        if changed > policy.max_changed {
            return Some(RollbackCause::Changes);
        }
        None
    }

    /// `(calls, failures, changed)`.
    fn get(&self) -> (u64, u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            self.changed.load(Ordering::Relaxed),
        )
    }
}

impl Candidate {
    pub(crate) fn new(generation: Arc<FilterGeneration>, policy: &RolloutPolicy) -> Candidate {
        Candidate {
            generation,
            since: Instant::now(),
            since_unix: unix_now(),
            buckets: policy.buckets(),
            counts: Counts::default(),
        }
    }

    /// Whether the candidate decides for `input`.
    pub(crate) fn covers<I: Canaried + ?Sized>(&self, input: &I) -> bool {
        let mut hasher = sha2::Sha256::new();
        input.feed(&mut hasher);
        bucket_of(hasher) < self.buckets
    }

    /// Counts one decision; returns the bound it crossed, if any.
    pub(crate) fn record(
        &self,
        failed: bool,
        changed: bool,
        policy: &RolloutPolicy,
    ) -> Option<RollbackCause> {
        self.counts.record(failed, changed, policy)
    }

    pub(crate) fn due(&self, policy: &RolloutPolicy) -> bool {
        self.since.elapsed() >= policy.promote_after
    }

    pub(crate) fn status(&self, policy: &RolloutPolicy) -> CandidateStatus {
        CandidateStatus {
            generation: self.generation.number,
            modules: modules(&self.generation),
            canary_percent: policy.canary_percent,
            since_unix: self.since_unix,
            promote_in_seconds: policy
                .promote_after
                .saturating_sub(self.since.elapsed())
                .as_secs(),
            decisions: self.counts.get().0,
            failures: self.counts.get().1,
            changed: self.counts.get().2,
        }
    }

    pub(crate) fn rollback_status(&self, cause: RollbackCause) -> RollbackStatus {
        let (calls, failures, changed) = self.counts.get();
        RollbackStatus {
            generation: self.generation.number,
            modules: modules(&self.generation),
            at_unix: unix_now(),
            cause: cause.as_str().to_string(),
            reason: match cause {
                RollbackCause::Failures => {
                    format!("{failures} of {calls} decisions failed")
                }
                RollbackCause::Changes => {
                    format!("{changed} of {calls} decisions differ from the stable generation's")
                }
            },
            decisions: calls,
            failures,
            changed,
        }
    }
}

/// The rollout state a runtime reports.
pub(crate) fn status(
    policy: Option<&RolloutPolicy>,
    stable: &FilterGeneration,
    candidate: Option<&Candidate>,
    last_rollback: Option<RollbackStatus>,
    promotions: u64,
) -> RolloutStatus {
    RolloutStatus {
        enabled: policy.is_some(),
        stable_generation: stable.number,
        candidate: candidate.zip(policy).map(|(c, p)| c.status(p)),
        last_rollback,
        promotions,
    }
}

fn modules(generation: &FilterGeneration) -> Vec<String> {
    generation
        .modules
        .iter()
        .map(|m| format!("{}@{}", m.file, &m.sha256[..m.sha256.len().min(12)]))
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The bucket (0..SHARE_BUCKETS) of what `hasher` was fed. SHA-256 rather than std's
/// hasher: the share must be the same in every process and every release, so the canary
/// endpoints of two mesh replicas, or of a restart, are the same.
fn bucket_of(hasher: sha2::Sha256) -> u64 {
    let digest = hasher.finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head) % SHARE_BUCKETS
}

/// What canary rollout needs of a hook's input: bytes that name it stably, so the share
/// it falls in does not change while it lives. Fed to the hasher piece by piece: the
/// decision path allocates nothing for it.
pub(crate) trait Canaried {
    fn feed(&self, hasher: &mut sha2::Sha256);
}

impl Canaried for EndpointInput {
    /// `cluster/namespace/pod` (the IP without a pod name): a pod keeps its bucket when
    /// its labels change.
    fn feed(&self, hasher: &mut sha2::Sha256) {
        let name = if self.pod_name.is_empty() {
            &self.ip
        } else {
            &self.pod_name
        };
        for (i, part) in [&self.origin.cluster, &self.namespace, name]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                hasher.update(b"/");
            }
            hasher.update(part.as_bytes());
        }
    }
}

impl Canaried for MissInput {
    fn feed(&self, hasher: &mut sha2::Sha256) {
        hasher.update(self.address.as_bytes());
    }
}

/// Whether two decisions have the same effect (reasons aside).
pub(crate) trait SameEffect {
    fn same_effect(&self, other: &Self) -> bool;
}

impl SameEffect for ExportDecision {
    fn same_effect(&self, other: &Self) -> bool {
        self.scope() == other.scope()
    }
}

impl SameEffect for ImportDecision {
    fn same_effect(&self, other: &Self) -> bool {
        self.keeps() == other.keeps()
    }
}

impl SameEffect for MissDecision {
    fn same_effect(&self, other: &Self) -> bool {
        match (self, other) {
            (MissDecision::Ignore { .. }, MissDecision::Ignore { .. }) => true,
            (
                MissDecision::Resolve { clusters: a, .. },
                MissDecision::Resolve { clusters: b, .. },
            ) => a == b,
            _ => false,
        }
    }
}

/// Whether a verdict came from a failed call.
pub(crate) fn failed(decided_by: &Decided) -> bool {
    matches!(decided_by, Decided::FailurePolicy { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(key: &[u8]) -> u64 {
        let mut hasher = sha2::Sha256::new();
        hasher.update(key);
        bucket_of(hasher)
    }

    #[test]
    fn the_share_is_close_to_the_percentage_and_stable() {
        let policy = RolloutPolicy {
            canary_percent: 10.0,
            ..RolloutPolicy::default()
        };
        let buckets = policy.buckets();
        let inside = (0..20_000)
            .filter(|i| bucket(format!("c/ns/pod-{i}").as_bytes()) < buckets)
            .count();
        // 10 % of 20,000 is 2,000; a fair hash stays within a few percent of it.
        assert!((1_800..=2_200).contains(&inside), "{inside} of 20000");
        assert_eq!(bucket(b"c/ns/pod-1"), bucket(b"c/ns/pod-1"));
    }

    #[test]
    fn the_bucket_of_a_key_does_not_depend_on_the_process() {
        // The published SHA-256 of "a" starts ca978112ca1bbdca.
        let head = u64::from_be_bytes([0xca, 0x97, 0x81, 0x12, 0xca, 0x1b, 0xbd, 0xca]);
        assert_eq!(bucket(b"a"), head % SHARE_BUCKETS);
    }

    #[test]
    fn failures_roll_back_only_past_the_minimum_and_the_ratio() {
        let policy = RolloutPolicy {
            max_failure_ratio: 0.1,
            min_calls: 10,
            max_changed: 5,
            ..RolloutPolicy::default()
        };
        let counts = Counts::default();
        for _ in 0..5 {
            assert_eq!(counts.record(true, false, &policy), None, "below min_calls");
        }
        assert_eq!(counts.record(false, false, &policy), None);
        // 6 calls, 5 failures: still below the minimum of 10 calls.
        for _ in 0..3 {
            assert_eq!(counts.record(false, false, &policy), None);
        }
        // The 10th call: 5 failures > 10 % of 10.
        assert_eq!(
            counts.record(false, false, &policy),
            Some(RollbackCause::Failures)
        );
    }

    #[test]
    fn changes_roll_back_past_their_bound() {
        let policy = RolloutPolicy {
            max_changed: 2,
            ..RolloutPolicy::default()
        };
        let counts = Counts::default();
        assert_eq!(counts.record(false, true, &policy), None);
        assert_eq!(counts.record(false, true, &policy), None);
        assert_eq!(
            counts.record(false, true, &policy),
            Some(RollbackCause::Changes)
        );
    }

    #[test]
    fn an_endpoint_falls_in_the_bucket_of_cluster_namespace_pod() {
        let mut ep = EndpointInput {
            namespace: "shop".into(),
            pod_name: "web-0".into(),
            ip: "10.0.0.1".into(),
            origin: crate::input::Locality::cluster("c1"),
            ..Default::default()
        };
        let of = |ep: &EndpointInput| {
            let mut hasher = sha2::Sha256::new();
            ep.feed(&mut hasher);
            bucket_of(hasher)
        };
        assert_eq!(of(&ep), bucket(b"c1/shop/web-0"));
        ep.labels.insert("app".into(), "web".into());
        assert_eq!(of(&ep), bucket(b"c1/shop/web-0"), "labels do not move it");
        ep.pod_name.clear();
        assert_eq!(of(&ep), bucket(b"c1/shop/10.0.0.1"));
    }

    #[test]
    fn a_policy_names_its_bad_field() {
        let bad = RolloutPolicy {
            canary_percent: 0.0,
            ..RolloutPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("canaryPercent: 0"));
        let bad = RolloutPolicy {
            max_failure_ratio: 2.0,
            ..RolloutPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("maxFailureRatio: 2"));
    }
}
