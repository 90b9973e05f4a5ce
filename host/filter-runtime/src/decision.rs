//! Decisions as the host uses them, independent of the generated bindings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use meshfilter_contract::scope::SyncScope;

/// The three places a filter decides.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// Source side: publish an endpoint, and how far.
    Export,
    /// Consumer side: mirror a remote endpoint.
    Import,
    /// Node side: resolve a datapath miss.
    Miss,
}

impl Hook {
    /// Every hook, in pipeline order.
    pub const ALL: [Hook; 3] = [Hook::Export, Hook::Import, Hook::Miss];

    /// Lower-case name, as in metrics and the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Export => "export",
            Hook::Import => "import",
            Hook::Miss => "miss",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Export decision for one endpoint. Reasons are shared strings: a memoised decision is
/// handed out many times and cloning it must not allocate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ExportDecision {
    /// Do not publish (delete a copy published earlier).
    Skip {
        /// Why.
        reason: Arc<str>,
    },
    /// Publish with this scope.
    Sync {
        /// How far it may travel.
        #[serde(serialize_with = "serialize_scope")]
        scope: SyncScope,
        /// Why.
        reason: Arc<str>,
    },
}

fn serialize_scope<S: serde::Serializer>(scope: &SyncScope, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&scope.to_field_value())
}

impl ExportDecision {
    /// The reason given.
    pub fn reason(&self) -> &str {
        match self {
            ExportDecision::Skip { reason } | ExportDecision::Sync { reason, .. } => reason,
        }
    }

    /// The scope to publish with, or `None` for a skip.
    pub fn scope(&self) -> Option<&SyncScope> {
        match self {
            ExportDecision::Skip { .. } => None,
            ExportDecision::Sync { scope, .. } => Some(scope),
        }
    }
}

/// Import decision for one remote endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ImportDecision {
    /// Mirror it.
    Keep {
        /// Why.
        reason: Arc<str>,
    },
    /// Do not mirror it (delete a mirrored copy).
    Skip {
        /// Why.
        reason: Arc<str>,
    },
}

impl ImportDecision {
    /// Whether the endpoint is mirrored.
    pub fn keeps(&self) -> bool {
        matches!(self, ImportDecision::Keep { .. })
    }

    /// The reason given.
    pub fn reason(&self) -> &str {
        match self {
            ImportDecision::Keep { reason } | ImportDecision::Skip { reason } => reason,
        }
    }
}

/// Miss decision for one missed address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum MissDecision {
    /// Do not resolve; ask again after `ttl`.
    Ignore {
        /// Negative-cache time.
        #[serde(with = "duration_ms")]
        ttl: Duration,
        /// Why.
        reason: Arc<str>,
    },
    /// Resolve from these clusters, in order.
    Resolve {
        /// Cluster names, first tried first.
        clusters: Vec<String>,
        /// Why.
        reason: Arc<str>,
    },
}

impl MissDecision {
    /// The reason given.
    pub fn reason(&self) -> &str {
        match self {
            MissDecision::Ignore { reason, .. } | MissDecision::Resolve { reason, .. } => reason,
        }
    }
}

mod duration_ms {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// What happens when a filter call fails (trap, timeout, memory limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Repeat the decision last made for this input (the caller passes it in); without
    /// one, the hook's default applies.
    #[default]
    KeepLastDecision,
    /// Let the endpoint through: export with the default scope, import, resolve.
    FailOpen,
    /// Keep it out: skip the export, skip the import, ignore the miss.
    FailClosed,
}

impl fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailurePolicy::KeepLastDecision => "keep-last-decision",
            FailurePolicy::FailOpen => "fail-open",
            FailurePolicy::FailClosed => "fail-closed",
        })
    }
}
