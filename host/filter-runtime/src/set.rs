//! A filter generation: the chains of every hook, as loaded at one moment, and the
//! composition rules that turn filter answers into one decision.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshfilter_contract::scope::SyncScope;

use crate::decision::{ExportDecision, FailurePolicy, Hook, ImportDecision, MissDecision};
use crate::error::CallFailure;
use crate::input::{EndpointInput, MissInput};
use crate::instance::{ExportCall, FilterInstance, HookCall, ImportCall, MissCall};
use crate::manifest::Otherwise;
use crate::module::ModuleInfo;

/// Negative-cache time of a miss ignored by policy rather than by a filter.
const POLICY_IGNORE_TTL: Duration = Duration::from_secs(30);

/// Who made a decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Decided {
    /// A filter of the chain.
    Filter {
        /// Module file.
        module: Arc<str>,
        /// Position in the chain.
        position: usize,
        /// Whether the memo answered instead of the module.
        memo_hit: bool,
    },
    /// Every filter abstained; the hook's `otherwise` applied.
    Otherwise {
        /// Open or closed.
        otherwise: Otherwise,
    },
    /// A filter call failed; the failure policy applied.
    FailurePolicy {
        /// The policy.
        policy: FailurePolicy,
        /// The failure.
        failure: CallFailure,
    },
}

/// A decision and its provenance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict<D> {
    /// The decision.
    pub decision: D,
    /// Who made it.
    pub decided_by: Decided,
    /// Generation that made it.
    pub generation: u64,
}

/// One hook's chain, live.
pub(crate) struct Chain {
    pub(crate) entries: Vec<Arc<FilterInstance>>,
    pub(crate) on_failure: FailurePolicy,
    pub(crate) otherwise: Otherwise,
}

/// The chains of all hooks.
pub struct FilterSet {
    pub(crate) export: Chain,
    pub(crate) import: Chain,
    pub(crate) miss: Chain,
}

/// A filter set with its identity: what `FilterRuntime` swaps atomically on reload.
pub struct FilterGeneration {
    /// Increases by one with every successful reload.
    pub number: u64,
    /// When it went live.
    pub loaded_at: SystemTime,
    /// The modules it runs.
    pub modules: Vec<ModuleInfo>,
    pub(crate) fingerprint: [u8; 32],
    pub(crate) set: FilterSet,
}

impl std::fmt::Debug for FilterGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterGeneration")
            .field("number", &self.number)
            .field("modules", &self.modules)
            .finish()
    }
}

/// How a hook turns an open/closed outcome into a decision.
trait Outcomes: HookCall {
    fn open(input: &Self::Input, why: Arc<str>) -> Self::Decision;
    fn closed(input: &Self::Input, why: Arc<str>) -> Self::Decision;
    fn chain(set: &FilterSet) -> &Chain;
    /// How the input is named in log lines.
    fn describe(input: &Self::Input) -> String;
}

impl Outcomes for ExportCall {
    fn open(_: &EndpointInput, why: Arc<str>) -> ExportDecision {
        ExportDecision::Sync {
            scope: SyncScope::Global,
            reason: why,
        }
    }
    fn closed(_: &EndpointInput, why: Arc<str>) -> ExportDecision {
        ExportDecision::Skip { reason: why }
    }
    fn chain(set: &FilterSet) -> &Chain {
        &set.export
    }
    fn describe(input: &EndpointInput) -> String {
        input.display_name()
    }
}

impl Outcomes for ImportCall {
    fn open(_: &EndpointInput, why: Arc<str>) -> ImportDecision {
        ImportDecision::Keep { reason: why }
    }
    fn closed(_: &EndpointInput, why: Arc<str>) -> ImportDecision {
        ImportDecision::Skip { reason: why }
    }
    fn chain(set: &FilterSet) -> &Chain {
        &set.import
    }
    fn describe(input: &EndpointInput) -> String {
        format!(
            "{} from cluster {}",
            input.display_name(),
            input.origin.cluster
        )
    }
}

impl Outcomes for MissCall {
    fn open(input: &MissInput, why: Arc<str>) -> MissDecision {
        let mut clusters: Vec<_> = input.candidates.iter().filter(|c| c.owns_prefix).collect();
        clusters.extend(input.candidates.iter().filter(|c| !c.owns_prefix));
        MissDecision::Resolve {
            clusters: clusters
                .into_iter()
                .map(|c| c.locality.cluster.clone())
                .collect(),
            reason: why,
        }
    }
    fn closed(_: &MissInput, why: Arc<str>) -> MissDecision {
        MissDecision::Ignore {
            ttl: POLICY_IGNORE_TTL,
            reason: why,
        }
    }
    fn chain(set: &FilterSet) -> &Chain {
        &set.miss
    }
    fn describe(input: &MissInput) -> String {
        format!("miss for {}", input.address)
    }
}

impl FilterGeneration {
    /// Source side: whether and how to publish `endpoint`. `previous` is the decision last
    /// applied to it, used by the keep-last-decision failure policy.
    pub fn decide_export(
        &self,
        endpoint: &Arc<EndpointInput>,
        previous: Option<&ExportDecision>,
    ) -> Verdict<ExportDecision> {
        self.decide::<ExportCall>(endpoint, previous)
    }

    /// Consumer side: whether to mirror a remote `endpoint`.
    pub fn decide_import(
        &self,
        endpoint: &Arc<EndpointInput>,
        previous: Option<&ImportDecision>,
    ) -> Verdict<ImportDecision> {
        self.decide::<ImportCall>(endpoint, previous)
    }

    /// Node side: what to do about a missed address.
    pub fn decide_miss(&self, request: &Arc<MissInput>) -> Verdict<MissDecision> {
        self.decide::<MissCall>(request, None)
    }

    /// Modules of a hook's chain, in order.
    pub fn chain(&self, hook: Hook) -> Vec<String> {
        self.hook_chain(hook)
            .entries
            .iter()
            .map(|e| e.file().to_string())
            .collect()
    }

    /// Memoised decision paths per chain entry of a hook.
    pub fn memo_sizes(&self, hook: Hook) -> Vec<usize> {
        self.hook_chain(hook)
            .entries
            .iter()
            .map(|e| e.memo_len(hook))
            .collect()
    }

    /// Times each chain entry of a hook ran its module (memo hits excluded). Instances
    /// carried over from an earlier generation keep their counts.
    pub fn guest_calls(&self, hook: Hook) -> Vec<u64> {
        self.hook_chain(hook)
            .entries
            .iter()
            .map(|e| e.guest_calls(hook))
            .collect()
    }

    /// The failure policy of a hook.
    pub fn failure_policy(&self, hook: Hook) -> FailurePolicy {
        self.hook_chain(hook).on_failure
    }

    fn hook_chain(&self, hook: Hook) -> &Chain {
        match hook {
            Hook::Export => &self.set.export,
            Hook::Import => &self.set.import,
            Hook::Miss => &self.set.miss,
        }
    }

    fn decide<H: Outcomes>(
        &self,
        input: &Arc<H::Input>,
        previous: Option<&H::Decision>,
    ) -> Verdict<H::Decision> {
        let chain = H::chain(&self.set);
        for (position, entry) in chain.entries.iter().enumerate() {
            match entry.call::<H>(input) {
                Ok(called) => {
                    if let Some(decision) = called.decision {
                        return Verdict {
                            decision,
                            decided_by: Decided::Filter {
                                module: entry.file.clone(),
                                position,
                                memo_hit: called.memo_hit,
                            },
                            generation: self.number,
                        };
                    }
                }
                Err(failure) => {
                    tracing::warn!(hook = %H::HOOK, module = %entry.file(), endpoint = %H::describe(input), generation = self.number,
                        policy = %chain.on_failure, error = %failure, "filter call failed; applying the failure policy");
                    // The host's words first, so a cut at the reason limit only shortens
                    // the failure (whole in `decided_by`).
                    let policy = chain.on_failure;
                    let decision = match (policy, previous) {
                        (FailurePolicy::KeepLastDecision, Some(last)) => last.clone(),
                        (FailurePolicy::KeepLastDecision, None) => {
                            otherwise::<H>(chain, input, |default| {
                                entry.reason(&format!(
                                    "{policy} applied, no earlier decision, {default}, after: {failure}"
                                ))
                            })
                        }
                        (FailurePolicy::FailOpen, _) => H::open(
                            input,
                            entry.reason(&format!("{policy} applied after: {failure}")),
                        ),
                        (FailurePolicy::FailClosed, _) => H::closed(
                            input,
                            entry.reason(&format!("{policy} applied after: {failure}")),
                        ),
                    };
                    return Verdict {
                        decision,
                        decided_by: Decided::FailurePolicy {
                            policy: chain.on_failure,
                            failure,
                        },
                        generation: self.number,
                    };
                }
            }
        }
        Verdict {
            decision: otherwise::<H>(chain, input, |default| {
                format!("no filter decided: {default}").into()
            }),
            decided_by: Decided::Otherwise {
                otherwise: chain.otherwise,
            },
            generation: self.number,
        }
    }
}

/// The decision of a chain's `otherwise`, with the reason `reason` makes from
/// "open by default" or "closed by default".
fn otherwise<H: Outcomes>(
    chain: &Chain,
    input: &H::Input,
    reason: impl FnOnce(&str) -> Arc<str>,
) -> H::Decision {
    match chain.otherwise {
        Otherwise::Open => H::open(input, reason("open by default")),
        Otherwise::Closed => H::closed(input, reason("closed by default")),
    }
}
