//! The host side of the filter interface: links both interface lines the host serves,
//! binds a compiled module to the line it was built for ([`FilterPre::new`]), calls its
//! hooks on that line ([`FilterBindings`], answers in the current line's types), and
//! implements the host functions.
//!
//! The host side of 0.1's `types` interface is implemented on [`StoreState`] (in
//! `store.rs`); everything else is implemented on [`HostState`] here, 0.2's `types`
//! delegating each method it shares with 0.1 to the store and serving what 0.2 adds
//! itself.

use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker, Resource};

use crate::bindings::{current, level, locality, new, old, v0_1, v0_2};
use crate::host_state::HostState;
use crate::input::{EndpointHandle, MissHandle};
use crate::memo::{ReadOp, encode};
use crate::store::StoreState;

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
