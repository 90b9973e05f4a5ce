//! Filters compiled into the binary: the defaults that run when no module directory is
//! configured, and the shipped examples `filter check` and the demo can name.

use std::sync::Arc;

use meshfilter_filter_runtime::{BuiltinSet, FilterManifest};

/// The shipped filters, as built from `filters/` for this binary.
pub const SHIPPED: &[(&str, &[u8])] = &[
    (
        "cfp-scope.wasm",
        include_bytes!(concat!(
            env!("MESHFILTER_SHIPPED_FILTERS"),
            "/cfp-scope.wasm"
        )),
    ),
    (
        "namespace-allowlist.wasm",
        include_bytes!(concat!(
            env!("MESHFILTER_SHIPPED_FILTERS"),
            "/namespace-allowlist.wasm"
        )),
    ),
    (
        "region-pairs.wasm",
        include_bytes!(concat!(
            env!("MESHFILTER_SHIPPED_FILTERS"),
            "/region-pairs.wasm"
        )),
    ),
];

/// The default filter set: cfp-scope on every hook with `config`.
pub fn default_set(config: serde_json::Value) -> BuiltinSet {
    BuiltinSet {
        modules: SHIPPED
            .iter()
            .map(|(name, bytes)| (name.to_string(), Arc::<[u8]>::from(*bytes)))
            .collect(),
        manifest: FilterManifest::single("cfp-scope.wasm", config),
    }
}

/// Bytes of a shipped module named `builtin:<file>` (e.g. `builtin:cfp-scope.wasm`).
pub fn lookup(name: &str) -> Option<&'static [u8]> {
    let file = name.strip_prefix("builtin:")?;
    SHIPPED
        .iter()
        .find(|(n, _)| *n == file || n.trim_end_matches(".wasm") == file)
        .map(|(_, b)| *b)
}
