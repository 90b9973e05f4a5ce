//! Prometheus metrics of the filter runtime, registered once per process.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleHookLabels {
    module: String,
    hook: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    module: String,
    hook: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLabels {
    module: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TruncatedLabels {
    module: String,
    what: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// Counters and gauges of the filter runtime. Cloning shares the underlying metrics.
#[derive(Debug, Clone, Default)]
pub struct FilterMetrics {
    guest_calls: Family<ModuleHookLabels, Counter>,
    memo_hits: Family<ModuleHookLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    log_dropped: Family<ModuleLabels, Counter>,
    truncated: Family<TruncatedLabels, Counter>,
    reloads: Family<OutcomeLabels, Counter>,
    generation: Gauge,
    candidate: Gauge,
    canary_decisions: Family<OutcomeLabels, Counter>,
    rollbacks: Family<CauseLabels, Counter>,
    promotions: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: String,
}

impl FilterMetrics {
    /// Registers every metric under `meshfilter_filter_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("meshfilter_filter");
        r.register(
            "guest_calls",
            "Decisions computed by running a filter module",
            self.guest_calls.clone(),
        );
        r.register(
            "memo_hits",
            "Decisions answered from the memo without running the module",
            self.memo_hits.clone(),
        );
        r.register(
            "failures",
            "Filter calls that trapped, timed out, blocked or hit a memory limit",
            self.failures.clone(),
        );
        r.register(
            "guest_log_dropped",
            "Guest log lines dropped by the rate cap",
            self.log_dropped.clone(),
        );
        r.register(
            "truncated",
            "Reasons, guest log lines and errors cut at their length limit, by kind (reason, log, error)",
            self.truncated.clone(),
        );
        r.register(
            "reloads",
            "Filter set reloads by outcome",
            self.reloads.clone(),
        );
        r.register(
            "generation",
            "Number of the stable filter generation",
            self.generation.clone(),
        );
        r.register(
            "candidate_generation",
            "Number of the generation on canary probation (0: none)",
            self.candidate.clone(),
        );
        r.register(
            "canary_decisions",
            "Decisions a canary generation made, by outcome against the stable generation's (same, changed, failed)",
            self.canary_decisions.clone(),
        );
        r.register(
            "rollbacks",
            "Canary generations rolled back, by the bound crossed (failures, changes)",
            self.rollbacks.clone(),
        );
        r.register(
            "promotions",
            "Canary generations promoted to stable",
            self.promotions.clone(),
        );
    }

    /// The guest-call and memo-hit counters of one module and hook, looked up once so the
    /// decision path only increments an atomic.
    pub(crate) fn call_counters(&self, module: &str, hook: &str) -> (Counter, Counter) {
        let labels = ModuleHookLabels {
            module: module.into(),
            hook: hook.into(),
        };
        (
            self.guest_calls.get_or_create(&labels).clone(),
            self.memo_hits.get_or_create(&labels).clone(),
        )
    }

    pub(crate) fn failure(&self, module: &str, hook: &str, kind: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                module: module.into(),
                hook: hook.into(),
                kind: kind.into(),
            })
            .inc();
    }

    pub(crate) fn guest_log_dropped(&self, module: &str) {
        self.log_dropped
            .get_or_create(&ModuleLabels {
                module: module.into(),
            })
            .inc();
    }

    pub(crate) fn truncated(&self, module: &str, what: &str) {
        self.truncated
            .get_or_create(&TruncatedLabels {
                module: module.into(),
                what: what.into(),
            })
            .inc();
    }

    /// Cuts counted for `module` and `what`, for unit tests.
    #[cfg(test)]
    pub(crate) fn truncated_count(&self, module: &str, what: &str) -> u64 {
        self.truncated
            .get_or_create(&TruncatedLabels {
                module: module.into(),
                what: what.into(),
            })
            .get()
    }

    pub(crate) fn reload(&self, outcome: &str) {
        self.reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub(crate) fn set_generation(&self, generation: u64) {
        self.generation.set(generation as i64);
    }

    pub(crate) fn set_candidate(&self, generation: u64) {
        self.candidate.set(generation as i64);
    }

    pub(crate) fn canary_decision(&self, outcome: &str) {
        self.canary_decisions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub(crate) fn promoted(&self, generation: u64) {
        self.promotions.inc();
        self.set_generation(generation);
        self.set_candidate(0);
    }

    pub(crate) fn rolled_back(&self, cause: &str, stable: u64) {
        self.rollbacks
            .get_or_create(&CauseLabels {
                cause: cause.into(),
            })
            .inc();
        self.set_generation(stable);
        self.set_candidate(0);
    }
}
