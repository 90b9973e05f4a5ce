//! The Wasm backend: bindings generated from `wit/filter.wit`, and the glue that
//! [`export_filter!`](crate::export_filter) instantiates for a filter type.

use crate::{
    Candidate, Config, Endpoint, ExportDecision, Filter, ImportDecision, Level, Locality,
    MissDecision, MissRequest,
};
use std::cell::RefCell;
use std::thread::LocalKey;

/// Generated from the WIT file, the one contract with the host.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "filter",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_hooks",
        default_bindings_module: "meshfilter_guest_sdk::__private::bindings",
    });
}

pub use bindings::exports::meshfilter::filter::hooks::Guest;
use bindings::meshfilter::filter::host;
pub use bindings::meshfilter::filter::types;

/// The host's endpoint handle, wrapped by [`Endpoint`].
pub type HostEndpoint = types::Endpoint;
/// The host's miss-request handle, wrapped by [`MissRequest`].
pub type HostMissRequest = types::MissRequest;

/// Where `export_filter!` keeps the configured filter: one slot per component instance.
pub type Slot<F> = LocalKey<RefCell<Option<F>>>;

/// `configure` hook: builds the filter, or empties the slot if that fails.
///
/// Also routes panic messages to the host log, so a trap comes with its reason (std's own
/// hook would write to WASI stderr, which hosts usually do not provide).
pub fn configure<F: Filter>(slot: &'static Slot<F>, config: String) -> Result<(), String> {
    std::panic::set_hook(Box::new(|info| {
        log(Level::Error, &format!("panic: {info}"))
    }));
    slot.set(None);
    let filter = F::configure(&Config::new(config))?;
    slot.set(Some(filter));
    Ok(())
}

/// `self-test` hook.
pub fn self_test<F: Filter>(slot: &'static Slot<F>) -> Result<(), String> {
    slot.with_borrow(|filter| match filter {
        Some(filter) => filter.self_test(),
        None => Err("self-test called before a successful configure".to_string()),
    })
}

/// `on-export` hook; abstains when not configured.
pub fn on_export<F: Filter>(
    slot: &'static Slot<F>,
    endpoint: &HostEndpoint,
) -> types::ExportDecision {
    let endpoint = Endpoint::from_host(endpoint);
    decide(slot, ExportDecision::Abstain, |f| f.export(endpoint)).into()
}

/// `on-import` hook; abstains when not configured.
pub fn on_import<F: Filter>(
    slot: &'static Slot<F>,
    endpoint: &HostEndpoint,
) -> types::ImportDecision {
    let endpoint = Endpoint::from_host(endpoint);
    decide(slot, ImportDecision::Abstain, |f| f.import(endpoint)).into()
}

/// `on-miss` hook; abstains when not configured.
pub fn on_miss<F: Filter>(
    slot: &'static Slot<F>,
    request: &HostMissRequest,
) -> types::MissDecision {
    let request = MissRequest::from_host(request);
    decide(slot, MissDecision::Abstain, |f| f.miss(request)).into()
}

/// Asks the configured filter, or answers `abstain` when there is none.
fn decide<F: Filter, D>(slot: &'static Slot<F>, abstain: D, ask: impl FnOnce(&F) -> D) -> D {
    slot.with_borrow(|filter| filter.as_ref().map_or(abstain, ask))
}

pub(crate) fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => host::Level::Trace,
        Level::Debug => host::Level::Debug,
        Level::Info => host::Level::Info,
        Level::Warn => host::Level::Warn,
        Level::Error => host::Level::Error,
    };
    host::log(level, message);
}

pub(crate) fn local() -> Locality {
    host::local().into()
}

impl From<types::Locality> for Locality {
    fn from(l: types::Locality) -> Locality {
        Locality {
            cluster: l.cluster,
            zone: l.zone,
            region: l.region,
        }
    }
}

impl From<types::Candidate> for Candidate {
    fn from(c: types::Candidate) -> Candidate {
        Candidate {
            locality: c.locality.into(),
            owns_prefix: c.owns_prefix,
        }
    }
}

impl From<crate::Scope> for types::Scope {
    fn from(scope: crate::Scope) -> types::Scope {
        match scope {
            crate::Scope::Cluster => types::Scope::Cluster,
            crate::Scope::Zone => types::Scope::Zone,
            crate::Scope::Region => types::Scope::Region,
            crate::Scope::Global => types::Scope::Global,
            crate::Scope::Regions(regions) => types::Scope::Regions(regions),
        }
    }
}

impl From<ExportDecision> for types::ExportDecision {
    fn from(decision: ExportDecision) -> types::ExportDecision {
        match decision {
            ExportDecision::Abstain => types::ExportDecision::Abstain,
            ExportDecision::Skip { reason } => types::ExportDecision::Skip(reason),
            ExportDecision::Sync { scope, reason } => {
                types::ExportDecision::Sync(types::SyncDecision {
                    scope: scope.into(),
                    reason,
                })
            }
        }
    }
}

impl From<ImportDecision> for types::ImportDecision {
    fn from(decision: ImportDecision) -> types::ImportDecision {
        match decision {
            ImportDecision::Abstain => types::ImportDecision::Abstain,
            ImportDecision::Keep { reason } => types::ImportDecision::Keep(reason),
            ImportDecision::Skip { reason } => types::ImportDecision::Skip(reason),
        }
    }
}

impl From<MissDecision> for types::MissDecision {
    fn from(decision: MissDecision) -> types::MissDecision {
        match decision {
            MissDecision::Abstain => types::MissDecision::Abstain,
            MissDecision::Ignore { ttl_ms, reason } => {
                types::MissDecision::Ignore(types::IgnoreDecision { ttl_ms, reason })
            }
            MissDecision::Resolve { clusters, reason } => {
                types::MissDecision::Resolve(types::ResolveDecision { clusters, reason })
            }
        }
    }
}
