//! `cfp-scope`: CFP-44921 workload-controlled sync, meshfilter's default filter.
//!
//! - **Export** (CFP Part A and B): a namespace annotated
//!   `clustermesh.cilium.io/global: "false"` keeps all its pods out, whatever they say:
//!   the CFP applies the pod label filter on top of Cilium's namespace filter, so a pod
//!   cannot escape its namespace's opt-out. Otherwise a pod opts in with the label
//!   `clustermesh.cilium.io/sync=true` (or an annotation with that key when there is no
//!   such label); `false` opts it out. Without either, the namespace annotation
//!   `clustermesh.cilium.io/global` decides (`"true"` opts its pods in), and without that
//!   the configured default: `opt-in` (the CFP: nothing syncs unless asked) or `opt-out`
//!   (stock Cilium: everything syncs). An opted-in pod travels as far as its
//!   `clustermesh.cilium.io/sync-scope`
//!   annotation (or label) says, or, when it says nothing, the same annotation on its
//!   namespace: absent is global; `regional`, `zone`, `cluster` or a list of regions narrow
//!   it. A bad value skips the pod, as the CFP PoC does, and logs a warning.
//! - **Import** (CFP Part C, generalised to every scope): keep the remote endpoint when its
//!   scope admits this cluster. An unparsable scope is kept (fail open, like the CFP's
//!   regional filter).
//! - **Miss** (CFP Part D): resolve from the candidate clusters, owners of the covering pod
//!   CIDR first; with no candidate, ignore the address for `negativeTtlMs`.
//!
//! Config (JSON, all fields optional): `{"default": "opt-in" | "opt-out", "negativeTtlMs": 30000}`.

use meshfilter_guest_sdk::labels::{NAMESPACE_GLOBAL, SYNC, SYNC_SCOPE};
use meshfilter_guest_sdk::{
    Config, Endpoint, ExportDecision, Filter, ImportDecision, Locality, MissDecision, MissRequest,
    Scope, export_filter, local, warn,
};
use serde::Deserialize;
use std::time::Duration;

/// Reason for the most common decision of all (most pods never opt in), spelled out so
/// the hot path formats nothing. A test checks it names [`SYNC`].
const NOT_OPTED_IN: &str = "not opted in: no clustermesh.cilium.io/sync label or annotation";

/// Reason for every pod of a namespace that opted out, spelled out like
/// [`NOT_OPTED_IN`]. A test checks it names [`NAMESPACE_GLOBAL`].
const NAMESPACE_OPTED_OUT: &str =
    "opted out by namespace annotation clustermesh.cilium.io/global=false";

/// What happens to a pod that neither it nor its namespace opted in or out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultMode {
    /// Not synced (CFP-44921).
    #[default]
    OptIn,
    /// Synced globally (stock Cilium).
    OptOut,
}

/// The filter's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    /// What pods that did not choose get.
    pub default: DefaultMode,
    /// How long a miss with no candidate cluster is ignored, in milliseconds.
    pub negative_ttl_ms: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            default: DefaultMode::OptIn,
            negative_ttl_ms: 30_000,
        }
    }
}

/// The configured filter.
#[derive(Debug)]
pub struct CfpScope {
    settings: Settings,
}

/// Where a pod's opt-in came from, for reasons.
struct OptedIn(String);

impl Filter for CfpScope {
    fn configure(config: &Config) -> Result<Self, String> {
        Ok(CfpScope {
            settings: config.parse()?,
        })
    }

    fn export(&self, endpoint: &Endpoint) -> ExportDecision {
        match self.opt_in(endpoint) {
            Ok(opted_in) => scoped_export(endpoint, opted_in),
            Err(skip) => skip,
        }
    }

    fn import(&self, endpoint: &Endpoint) -> ImportDecision {
        let raw = endpoint.sync_scope();
        let scope = match Scope::parse(raw.as_deref()) {
            Ok(Scope::Global) => return ImportDecision::keep("global scope"),
            Ok(scope) => scope,
            Err(err) => {
                warn!("unparsable SyncScope on an imported endpoint, keeping it: {err}");
                return ImportDecision::keep(format!(
                    "unparsable SyncScope {:?}: kept (fail open)",
                    raw.unwrap_or_default()
                ));
            }
        };
        let origin = endpoint.origin();
        let here = local();
        let reason = import_reason(&scope, &origin, &here);
        if scope.admits(origin.as_borrowed(), here.as_borrowed()) {
            ImportDecision::keep(reason)
        } else {
            ImportDecision::skip(reason)
        }
    }

    fn miss(&self, request: &MissRequest) -> MissDecision {
        let mut candidates = request.candidates();
        if candidates.is_empty() {
            return MissDecision::ignore_for(Duration::from_millis(
                self.settings.negative_ttl_ms.into(),
            ))
            .because("no candidate cluster");
        }
        // Stable: owners of the covering prefix first, host order otherwise.
        candidates.sort_by_key(|c| !c.owns_prefix);
        let reason = if candidates[0].owns_prefix {
            "owner of the covering prefix first"
        } else {
            "no candidate owns the covering prefix"
        };
        let mut clusters: Vec<String> = Vec::with_capacity(candidates.len());
        for c in candidates {
            if !clusters.contains(&c.locality.cluster) {
                clusters.push(c.locality.cluster);
            }
        }
        MissDecision::resolve(clusters).because(reason)
    }
}

impl CfpScope {
    /// Whether the pod is in: `Ok` with where that came from, or the skip decision.
    ///
    /// The namespace's opt-out is read first and wins: CFP-44921 filters pods by label
    /// only among those its namespace lets through. Any other namespace value is looked
    /// at only when the pod says nothing.
    fn opt_in(&self, endpoint: &Endpoint) -> Result<OptedIn, ExportDecision> {
        let namespace = endpoint.namespace_annotation(NAMESPACE_GLOBAL);
        if namespace.as_deref() == Some("false") {
            return Err(ExportDecision::skip(NAMESPACE_OPTED_OUT));
        }
        let (value, source) = match endpoint.label(SYNC) {
            Some(value) => (Some(value), "label"),
            None => (endpoint.annotation(SYNC), "annotation"),
        };
        if let Some(value) = value {
            return match value.as_str() {
                "true" => Ok(OptedIn(format!("{source} {SYNC}=true"))),
                "false" => Err(ExportDecision::skip(format!(
                    "opted out by {source} {SYNC}=false"
                ))),
                other => Err(invalid(
                    endpoint,
                    &format!("{source} {SYNC}"),
                    other,
                    "want true or false",
                )),
            };
        }
        match namespace.as_deref() {
            Some("true") => Ok(OptedIn(format!(
                "namespace annotation {NAMESPACE_GLOBAL}=true"
            ))),
            Some(other) => Err(invalid(
                endpoint,
                &format!("namespace annotation {NAMESPACE_GLOBAL}"),
                other,
                "want true or false",
            )),
            None => match self.settings.default {
                DefaultMode::OptIn => Err(ExportDecision::skip(NOT_OPTED_IN)),
                DefaultMode::OptOut => Ok(OptedIn("default opt-out mode".to_string())),
            },
        }
    }
}

/// The export decision for an opted-in pod: its scope decides, and without one its
/// namespace's default scope.
fn scoped_export(endpoint: &Endpoint, opted_in: OptedIn) -> ExportDecision {
    let (raw, source) = match endpoint.annotation(SYNC_SCOPE) {
        Some(value) => (Some(value), "annotation"),
        None => match endpoint.label(SYNC_SCOPE) {
            Some(value) => (Some(value), "label"),
            None => (
                endpoint.namespace_annotation(SYNC_SCOPE),
                "namespace annotation",
            ),
        },
    };
    let OptedIn(why) = opted_in;
    let given = raw.as_deref().is_some_and(|r| !r.trim().is_empty());
    match Scope::parse(raw.as_deref()) {
        Ok(Scope::Cluster) => ExportDecision::skip("cluster scope: never leaves its cluster"),
        Ok(scope) if !given => {
            ExportDecision::sync(scope).because(format!("{why}, no scope given: global"))
        }
        Ok(scope) => ExportDecision::sync(scope.clone()).because(format!("{why}, scope {scope}")),
        Err(err) => {
            let value = raw.unwrap_or_default();
            invalid(
                endpoint,
                &format!("{source} {SYNC_SCOPE}"),
                &value,
                &err.to_string(),
            )
        }
    }
}

/// Skips a pod whose `input` has a bad `value`, and says so in the log. Reads the pod's
/// name only here, so well-formed pods keep small memo keys.
fn invalid(endpoint: &Endpoint, input: &str, value: &str, why: &str) -> ExportDecision {
    warn!(
        "pod {}/{}: invalid {input} {value:?} ({why}); not synced",
        endpoint.namespace(),
        endpoint.pod_name()
    );
    ExportDecision::skip(format!("invalid {input} {value:?}"))
}

/// Why an endpoint from `origin` with a non-global `scope` is or is not kept `here`: both
/// localities as far as the scope looks at them.
fn import_reason(scope: &Scope, origin: &Locality, here: &Locality) -> String {
    let (adjective, noun, theirs, ours) = match scope {
        Scope::Cluster => (
            "cluster-scoped",
            "cluster",
            Some(&origin.cluster),
            Some(&here.cluster),
        ),
        Scope::Zone => ("zonal", "zone", origin.zone.as_ref(), here.zone.as_ref()),
        Scope::Region | Scope::Global => (
            "regional",
            "region",
            origin.region.as_ref(),
            here.region.as_ref(),
        ),
        Scope::Regions(list) => {
            let from = format!(
                "endpoint for regions {} from region {}",
                list.join(","),
                origin.region.as_deref().unwrap_or("unknown")
            );
            return match &here.region {
                Some(ours) => format!("{from}; this cluster is in {ours}"),
                None => format!("{from}; this cluster's region is unknown: kept (fail open)"),
            };
        }
    };
    match (theirs, ours) {
        (Some(theirs), Some(ours)) if noun == "cluster" => {
            format!("{adjective} endpoint from cluster {theirs}; this is cluster {ours}")
        }
        (Some(theirs), Some(ours)) => {
            format!("{adjective} endpoint from {noun} {theirs}; this cluster is in {ours}")
        }
        (Some(theirs), None) => {
            format!(
                "{adjective} endpoint from {noun} {theirs}; this cluster's {noun} is unknown: kept (fail open)"
            )
        }
        (None, _) => format!("{adjective} endpoint from an unknown {noun}: kept (fail open)"),
    }
}

export_filter!(CfpScope);

#[cfg(test)]
mod tests;
