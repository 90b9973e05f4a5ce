//! What a hook answers.
//!
//! Each decision has an `Abstain` case: in a chain of filters the first decision that is
//! not `Abstain` wins. Every other case carries a reason, a short human sentence naming the
//! input that decided (it ends up in the host's logs and metrics labels). Build decisions
//! with the constructors and set or replace the reason with `because`.

use crate::Scope;
use std::time::Duration;

/// Export decision: should this cluster publish an endpoint, and how far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportDecision {
    /// No opinion: the next filter in the chain decides.
    Abstain,
    /// Do not publish; a copy published earlier is deleted.
    Skip {
        /// Why not.
        reason: String,
    },
    /// Publish with this scope.
    Sync {
        /// How far the endpoint travels.
        scope: Scope,
        /// Why.
        reason: String,
    },
}

impl ExportDecision {
    /// Publish with `scope`; give the reason with [`ExportDecision::because`].
    pub fn sync(scope: Scope) -> ExportDecision {
        ExportDecision::Sync {
            scope,
            reason: String::new(),
        }
    }

    /// Do not publish, because of `reason`.
    pub fn skip(reason: impl Into<String>) -> ExportDecision {
        ExportDecision::Skip {
            reason: reason.into(),
        }
    }

    /// Sets the reason (no effect on `Abstain`).
    #[must_use]
    pub fn because(mut self, reason: impl Into<String>) -> ExportDecision {
        if let ExportDecision::Skip { reason: r } | ExportDecision::Sync { reason: r, .. } =
            &mut self
        {
            *r = reason.into();
        }
        self
    }

    /// The reason, unless this is `Abstain`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ExportDecision::Abstain => None,
            ExportDecision::Skip { reason } | ExportDecision::Sync { reason, .. } => Some(reason),
        }
    }
}

/// Import decision: should this cluster mirror a remote endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportDecision {
    /// No opinion: the next filter in the chain decides.
    Abstain,
    /// Mirror it.
    Keep {
        /// Why.
        reason: String,
    },
    /// Do not mirror it; a mirrored copy is deleted.
    Skip {
        /// Why not.
        reason: String,
    },
}

impl ImportDecision {
    /// Mirror the endpoint, because of `reason`.
    pub fn keep(reason: impl Into<String>) -> ImportDecision {
        ImportDecision::Keep {
            reason: reason.into(),
        }
    }

    /// Do not mirror the endpoint, because of `reason`.
    pub fn skip(reason: impl Into<String>) -> ImportDecision {
        ImportDecision::Skip {
            reason: reason.into(),
        }
    }

    /// Sets the reason (no effect on `Abstain`).
    #[must_use]
    pub fn because(mut self, reason: impl Into<String>) -> ImportDecision {
        if let ImportDecision::Keep { reason: r } | ImportDecision::Skip { reason: r } = &mut self {
            *r = reason.into();
        }
        self
    }

    /// The reason, unless this is `Abstain`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ImportDecision::Abstain => None,
            ImportDecision::Keep { reason } | ImportDecision::Skip { reason } => Some(reason),
        }
    }
}

/// Miss decision: what a node does about a missed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissDecision {
    /// No opinion: the next filter in the chain decides.
    Abstain,
    /// Do not resolve; ask again no sooner than `ttl_ms` milliseconds from now.
    Ignore {
        /// How long the answer holds, in milliseconds.
        ttl_ms: u32,
        /// Why.
        reason: String,
    },
    /// Resolve the address from these clusters, trying them in order.
    Resolve {
        /// Cluster names, the most likely owner first.
        clusters: Vec<String>,
        /// Why.
        reason: String,
    },
}

impl MissDecision {
    /// Resolve from `clusters`, in order; give the reason with [`MissDecision::because`].
    pub fn resolve<I, S>(clusters: I) -> MissDecision
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        MissDecision::Resolve {
            clusters: clusters.into_iter().map(Into::into).collect(),
            reason: String::new(),
        }
    }

    /// Do not resolve, and do not ask again for `ttl` (whole milliseconds, saturating at
    /// `u32::MAX`, about 49 days); give the reason with [`MissDecision::because`].
    pub fn ignore_for(ttl: Duration) -> MissDecision {
        let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
        MissDecision::Ignore {
            ttl_ms,
            reason: String::new(),
        }
    }

    /// Sets the reason (no effect on `Abstain`).
    #[must_use]
    pub fn because(mut self, reason: impl Into<String>) -> MissDecision {
        if let MissDecision::Ignore { reason: r, .. } | MissDecision::Resolve { reason: r, .. } =
            &mut self
        {
            *r = reason.into();
        }
        self
    }

    /// The reason, unless this is `Abstain`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            MissDecision::Abstain => None,
            MissDecision::Ignore { reason, .. } | MissDecision::Resolve { reason, .. } => {
                Some(reason)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_the_variants() {
        assert_eq!(
            ExportDecision::sync(Scope::Region).because("opted in"),
            ExportDecision::Sync {
                scope: Scope::Region,
                reason: "opted in".into()
            }
        );
        assert_eq!(
            ExportDecision::skip("no"),
            ExportDecision::Skip {
                reason: "no".into()
            }
        );
        assert_eq!(
            ExportDecision::Abstain.because("ignored"),
            ExportDecision::Abstain
        );
        assert_eq!(
            ImportDecision::keep("a").because("b"),
            ImportDecision::Keep { reason: "b".into() }
        );
        assert_eq!(ImportDecision::skip("c").reason(), Some("c"));
        assert_eq!(
            MissDecision::resolve(["c1", "c2"]).because("owners"),
            MissDecision::Resolve {
                clusters: vec!["c1".into(), "c2".into()],
                reason: "owners".into()
            }
        );
        assert_eq!(
            MissDecision::ignore_for(Duration::from_secs(30)).because("none"),
            MissDecision::Ignore {
                ttl_ms: 30_000,
                reason: "none".into()
            }
        );
        assert_eq!(MissDecision::Abstain.reason(), None);
    }

    #[test]
    fn ignore_ttl_saturates() {
        let MissDecision::Ignore { ttl_ms, .. } =
            MissDecision::ignore_for(Duration::from_secs(u64::MAX))
        else {
            panic!("not an ignore");
        };
        assert_eq!(ttl_ms, u32::MAX);
    }
}
