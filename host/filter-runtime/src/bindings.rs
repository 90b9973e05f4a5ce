//! Host bindings generated from the filter WIT, the single source of the contract, one
//! set per interface line the host serves, and the conversions between the lines.
//!
//! The host serves the current line and the previous one side by side (the rule is in the
//! WIT file's header): [`v0_2`] from `guest-sdk/wit/filter.wit`, [`v0_1`] from the frozen
//! `guest-sdk/wit/released/0.1.0/filter.wit`. The rest of the runtime sees the current
//! line's types; 0.1's answers convert into them here. What links the host side and binds
//! a module to its line is in `host_side.rs`.

/// Interface 0.1, the previous line: bound from its frozen WIT.
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        world: "filter",
        path: "../../guest-sdk/wit/released/0.1.0",
        with: {
            "meshfilter:filter/types.endpoint": crate::input::EndpointHandle,
            "meshfilter:filter/types.miss-request": crate::input::MissHandle,
        },
    });
}

/// Interface 0.2, the current line.
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        world: "filter",
        path: "../../guest-sdk/wit",
        with: {
            "meshfilter:filter/types.endpoint": crate::input::EndpointHandle,
            "meshfilter:filter/types.miss-request": crate::input::MissHandle,
        },
    });
}

/// The host side of 0.1 that `store.rs` implements names its traits by these paths.
pub(crate) use v0_1::meshfilter;

/// The current line's types: what every call returns, whatever line the module speaks.
pub(crate) use v0_2::meshfilter::filter::types as current;

pub(crate) use v0_1::meshfilter::filter as old;
pub(crate) use v0_2::meshfilter::filter as new;

// 0.1's answers in the current line's types: the decision types did not change.

impl From<old::types::Scope> for current::Scope {
    fn from(scope: old::types::Scope) -> current::Scope {
        match scope {
            old::types::Scope::Cluster => current::Scope::Cluster,
            old::types::Scope::Zone => current::Scope::Zone,
            old::types::Scope::Region => current::Scope::Region,
            old::types::Scope::Global => current::Scope::Global,
            old::types::Scope::Regions(r) => current::Scope::Regions(r),
        }
    }
}

impl From<old::types::ExportDecision> for current::ExportDecision {
    fn from(d: old::types::ExportDecision) -> current::ExportDecision {
        match d {
            old::types::ExportDecision::Abstain => current::ExportDecision::Abstain,
            old::types::ExportDecision::Skip(reason) => current::ExportDecision::Skip(reason),
            old::types::ExportDecision::Sync(s) => {
                current::ExportDecision::Sync(current::SyncDecision {
                    scope: s.scope.into(),
                    reason: s.reason,
                })
            }
        }
    }
}

impl From<old::types::ImportDecision> for current::ImportDecision {
    fn from(d: old::types::ImportDecision) -> current::ImportDecision {
        match d {
            old::types::ImportDecision::Abstain => current::ImportDecision::Abstain,
            old::types::ImportDecision::Keep(reason) => current::ImportDecision::Keep(reason),
            old::types::ImportDecision::Skip(reason) => current::ImportDecision::Skip(reason),
        }
    }
}

impl From<old::types::MissDecision> for current::MissDecision {
    fn from(d: old::types::MissDecision) -> current::MissDecision {
        match d {
            old::types::MissDecision::Abstain => current::MissDecision::Abstain,
            old::types::MissDecision::Ignore(i) => {
                current::MissDecision::Ignore(current::IgnoreDecision {
                    ttl_ms: i.ttl_ms,
                    reason: i.reason,
                })
            }
            old::types::MissDecision::Resolve(r) => {
                current::MissDecision::Resolve(current::ResolveDecision {
                    clusters: r.clusters,
                    reason: r.reason,
                })
            }
        }
    }
}

pub(crate) fn locality(l: old::types::Locality) -> current::Locality {
    current::Locality {
        cluster: l.cluster,
        zone: l.zone,
        region: l.region,
    }
}

pub(crate) fn level(l: new::host::Level) -> old::host::Level {
    match l {
        new::host::Level::Trace => old::host::Level::Trace,
        new::host::Level::Debug => old::host::Level::Debug,
        new::host::Level::Info => old::host::Level::Info,
        new::host::Level::Warn => old::host::Level::Warn,
        new::host::Level::Error => old::host::Level::Error,
    }
}
