//! The filter modules the soak mounts into every meshfilter process, and the manifests it
//! switches between: the good one (cfp-scope, the filter the model describes), and for a
//! while one whose decisions sleep (a blocking call the host must refuse at once) or
//! trap, so decisions fall to the failure policy until the good one is back.

/// The shipped cfp-scope filter, built from this workspace.
const CFP_SCOPE: &[u8] =
    include_bytes!(concat!(env!("MESHFILTER_BENCH_MODULES"), "/cfp-scope.wasm"));
/// The test-only filter that fails on demand.
const MISBEHAVE: &[u8] =
    include_bytes!(concat!(env!("MESHFILTER_BENCH_MODULES"), "/misbehave.wasm"));

/// cfp-scope on every hook, opt-in (CFP-44921): what the model computes.
const GOOD: &str = "\
export:
  chain: [{module: cfp-scope.wasm, config: {default: opt-in}}]
import:
  chain: [{module: cfp-scope.wasm}]
miss:
  chain: [{module: cfp-scope.wasm}]
";

/// Every endpoint the soak writes has an `app` label (from its identity), so every
/// export and import decision sleeps; the module passes the load-time probe, which has
/// no labels.
const SLEEPING: &str = "\
export:
  chain: [{module: misbehave.wasm, config: {onExport: \"sleep-if-label:app\"}}]
import:
  chain: [{module: misbehave.wasm, config: {onImport: \"sleep-if-label:app\"}}]
miss:
  chain: [{module: cfp-scope.wasm}]
";

/// As [`SLEEPING`], trapping instead.
const TRAPPING: &str = "\
export:
  chain: [{module: misbehave.wasm, config: {onExport: \"trap-if-label:app\"}}]
import:
  chain: [{module: misbehave.wasm, config: {onImport: \"trap-if-label:app\"}}]
miss:
  chain: [{module: cfp-scope.wasm}]
";

/// Which manifest the filters directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FilterSet {
    /// cfp-scope everywhere.
    Good,
    /// Decisions sleep.
    Sleeping,
    /// Decisions trap.
    Trapping,
}

impl FilterSet {
    /// The files of the mounted directory: both modules and the manifest.
    pub(crate) fn files(self) -> [(&'static str, &'static [u8]); 3] {
        let manifest = match self {
            FilterSet::Good => GOOD,
            FilterSet::Sleeping => SLEEPING,
            FilterSet::Trapping => TRAPPING,
        };
        [
            ("cfp-scope.wasm", CFP_SCOPE),
            ("misbehave.wasm", MISBEHAVE),
            ("filters.yaml", manifest.as_bytes()),
        ]
    }
}
