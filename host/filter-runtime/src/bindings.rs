//! Host bindings generated from the filter WIT, the single source of the contract, one
//! set per interface line the host serves, and the linking of their host side.
//!
//! The host serves the current line and the previous one side by side (the rule is in the
//! WIT file's header): [`v0_2`] from `guest-sdk/wit/filter.wit`, [`v0_1`] from the frozen
//! `guest-sdk/wit/released/0.1.0/filter.wit`. A module's metadata says which it was built
//! for; [`FilterPre::new`] binds it to that one. The rest of the runtime sees one set of
//! calls ([`FilterBindings`]) returning the current line's types.
//!
//! The host side of 0.1's `types` interface is implemented on [`StoreState`] (in
//! `store.rs`); everything else is implemented on [`HostState`] here, 0.2's `types`
//! delegating each method it shares with 0.1 to the store and serving what 0.2 adds
//! itself.

use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker, Resource};

use crate::host_state::HostState;
use crate::input::{EndpointHandle, MissHandle};
use crate::memo::{ReadOp, encode};
use crate::store::StoreState;

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

use v0_1::meshfilter::filter as old;
use v0_2::meshfilter::filter as new;

/// Links both lines: WASI is linked once for both by the caller.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    old::types::add_to_linker::<_, HasSelf<StoreState>>(linker, |s| &mut s.store)?;
    old::host::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)?;
    v0_2::Filter::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
}

/// A compiled module bound to the interface line it was built for.
pub(crate) enum FilterPre {
    V0_1(v0_1::FilterPre<HostState>),
    V0_2(v0_2::FilterPre<HostState>),
}

/// The hooks of one live instance, on the line it was built for.
pub(crate) enum FilterBindings {
    V0_1(v0_1::Filter),
    V0_2(v0_2::Filter),
}

impl FilterPre {
    /// Binds `pre` to interface `version`, one of the versions
    /// [`served_version`](meshfilter_contract::interface::served_version) returns.
    pub(crate) fn new(version: &str, pre: InstancePre<HostState>) -> wasmtime::Result<FilterPre> {
        use meshfilter_contract::interface::{PREVIOUS_VERSION, VERSION};
        match version {
            v if v == VERSION => Ok(FilterPre::V0_2(v0_2::FilterPre::new(pre)?)),
            v if v == PREVIOUS_VERSION => Ok(FilterPre::V0_1(v0_1::FilterPre::new(pre)?)),
            v => wasmtime::bail!("this host has no bindings for interface {v}"),
        }
    }

    pub(crate) fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<FilterBindings> {
        Ok(match self {
            FilterPre::V0_1(pre) => FilterBindings::V0_1(pre.instantiate(store)?),
            FilterPre::V0_2(pre) => FilterBindings::V0_2(pre.instantiate(store)?),
        })
    }
}

/// Calls a hook on whichever line `$bindings` is, as `$call(&mut store, args...)`.
macro_rules! on_line {
    ($bindings:expr, $call:ident($($arg:expr),*)) => {
        match $bindings {
            FilterBindings::V0_1(b) => b.meshfilter_filter_hooks().$call($($arg),*).map(Into::into),
            FilterBindings::V0_2(b) => b.meshfilter_filter_hooks().$call($($arg),*),
        }
    };
}

impl FilterBindings {
    pub(crate) fn configure(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        on_line!(self, call_configure(store, config))
    }

    pub(crate) fn self_test(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Result<(), String>> {
        on_line!(self, call_self_test(store))
    }

    pub(crate) fn on_export(
        &self,
        store: &mut Store<HostState>,
        endpoint: Resource<EndpointHandle>,
    ) -> wasmtime::Result<current::ExportDecision> {
        on_line!(self, call_on_export(store, endpoint))
    }

    pub(crate) fn on_import(
        &self,
        store: &mut Store<HostState>,
        endpoint: Resource<EndpointHandle>,
    ) -> wasmtime::Result<current::ImportDecision> {
        on_line!(self, call_on_import(store, endpoint))
    }

    pub(crate) fn on_miss(
        &self,
        store: &mut Store<HostState>,
        request: Resource<MissHandle>,
    ) -> wasmtime::Result<current::MissDecision> {
        on_line!(self, call_on_miss(store, request))
    }
}

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

fn locality(l: old::types::Locality) -> current::Locality {
    current::Locality {
        cluster: l.cluster,
        zone: l.zone,
        region: l.region,
    }
}

fn level(l: new::host::Level) -> old::host::Level {
    match l {
        new::host::Level::Trace => old::host::Level::Trace,
        new::host::Level::Debug => old::host::Level::Debug,
        new::host::Level::Info => old::host::Level::Info,
        new::host::Level::Warn => old::host::Level::Warn,
        new::host::Level::Error => old::host::Level::Error,
    }
}

// The host side, 0.1's `host` interface: the store's, with the SDK's panic line kept.

impl old::host::Host for HostState {
    fn log(&mut self, level: old::host::Level, message: String) {
        self.note_log(matches!(level, old::host::Level::Error), &message);
        old::host::Host::log(&mut self.store, level, message);
    }

    fn local(&mut self) -> old::types::Locality {
        old::host::Host::local(&mut self.store)
    }
}

// The host side of 0.2: what 0.1 had, through the store, and what 0.2 adds.

impl new::host::Host for HostState {
    fn log(&mut self, l: new::host::Level, message: String) {
        old::host::Host::log(self, level(l), message);
    }

    fn local(&mut self) -> current::Locality {
        locality(old::host::Host::local(&mut self.store))
    }
}

impl current::Host for HostState {}

/// 0.2's endpoint methods that 0.1 has, passed to the store's 0.1 implementation.
macro_rules! delegate {
    ($trait:ident, $handle:ident: $($method:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $method(&mut self, handle: Resource<$handle> $(, $arg: $ty)*) -> $ret {
            old::types::$trait::$method(&mut self.store, handle $(, $arg)*)
        })*
    };
}

impl current::HostEndpoint for HostState {
    delegate! { HostEndpoint, EndpointHandle:
        namespace() -> String;
        pod_name() -> String;
        ip() -> String;
        node_ip() -> Option<String>;
        identity() -> u32;
        service_account() -> Option<String>;
        label(key: String) -> Option<String>;
        labels() -> Vec<(String, String)>;
        annotation(key: String) -> Option<String>;
        namespace_annotation(key: String) -> Option<String>;
        sync_scope() -> Option<String>;
    }

    fn origin(&mut self, handle: Resource<EndpointHandle>) -> current::Locality {
        locality(old::types::HostEndpoint::origin(&mut self.store, handle))
    }

    /// New in 0.2.
    fn annotations(&mut self, _: Resource<EndpointHandle>) -> Vec<(String, String)> {
        let (endpoint, reads) = self.endpoint_and_reads();
        reads.record(ReadOp::Annotations, |o| {
            encode::pairs(o, endpoint.annotations.iter())
        });
        endpoint
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn drop(&mut self, handle: Resource<EndpointHandle>) -> wasmtime::Result<()> {
        old::types::HostEndpoint::drop(&mut self.store, handle)
    }
}

impl current::HostMissRequest for HostState {
    delegate! { HostMissRequest, MissHandle:
        address() -> String;
        covering_prefix() -> Option<String>;
        tunnel_endpoint() -> Option<String>;
        local_node() -> String;
    }

    fn candidates(&mut self, handle: Resource<MissHandle>) -> Vec<current::Candidate> {
        old::types::HostMissRequest::candidates(&mut self.store, handle)
            .into_iter()
            .map(|c| current::Candidate {
                locality: locality(c.locality),
                owns_prefix: c.owns_prefix,
            })
            .collect()
    }

    fn drop(&mut self, handle: Resource<MissHandle>) -> wasmtime::Result<()> {
        old::types::HostMissRequest::drop(&mut self.store, handle)
    }
}
