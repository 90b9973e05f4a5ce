//! Host bindings generated from the filter WIT, the single source of the contract, and the
//! linking of its host side.

use wasmtime::component::{HasSelf, Linker};

use crate::host_state::HostState;
use crate::store::StoreState;

wasmtime::component::bindgen!({
    world: "filter",
    path: "../../guest-sdk/wit",
    with: {
        "meshfilter:filter/types.endpoint": crate::input::EndpointHandle,
        "meshfilter:filter/types.miss-request": crate::input::MissHandle,
    },
});

use meshfilter::filter::{host, types};

/// Links the filter interface: `types` is served by [`StoreState`], `host` by
/// [`HostState`], which keeps an SDK panic message for the failure report before passing
/// the line on to the store's log.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    types::add_to_linker::<_, HasSelf<StoreState>>(linker, |s| &mut s.store)?;
    host::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) {
        self.note_log(matches!(level, host::Level::Error), &message);
        host::Host::log(&mut self.store, level, message);
    }

    fn local(&mut self) -> types::Locality {
        host::Host::local(&mut self.store)
    }
}
