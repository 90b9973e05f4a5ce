//! Host bindings generated from the filter WIT, the single source of the contract.

wasmtime::component::bindgen!({
    world: "filter",
    path: "../../guest-sdk/wit",
    with: {
        "meshfilter:filter/types.endpoint": crate::input::EndpointHandle,
        "meshfilter:filter/types.miss-request": crate::input::MissHandle,
    },
});
