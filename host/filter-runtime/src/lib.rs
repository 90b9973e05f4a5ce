//! Runs meshfilter filter modules.
//!
//! A filter module is a WebAssembly component implementing the `meshfilter:filter` WIT
//! world. This crate owns everything between a decision request and the module: a
//! wasmtime engine with hard limits (epoch deadlines, memory caps, bounded stacks, the
//! pooling allocator), warm instances reused across calls and replaced after any fault,
//! memoised decisions keyed by exactly what a module read, filter chains per hook, and
//! hot reload of the module directory with atomic generation swaps.
//!
//! Callers ask a [`FilterRuntime`] for decisions; everything else is internal.
//!
//! # What a module cannot do to the host
//!
//! Every bound below holds whatever a module does. A module that runs into one of the
//! first three fails the call (or the load) with a [`CallFailure`] (or [`LoadError`]),
//! counted in `meshfilter_filter_failures_total{module,hook,kind}`; text is cut instead:
//!
//! - **Run long:** epoch deadlines interrupt Wasm code after
//!   [`EngineConfig::call_timeout`] (`timeout`).
//! - **Block in the host:** deadlines cannot interrupt a host call, so no WASI function a
//!   module can reach may wait. `wasi:io/poll` `poll`, `pollable.block` and the
//!   `blocking-*` stream methods trap at once (`blocked`); `std::thread::sleep` in a
//!   filter is a failure, not a stall. Writes to stdout and stderr still work: they go
//!   to a sink that never makes the writer wait.
//! - **Take memory:** one instance's linear memory is capped at
//!   [`EngineConfig::memory_bytes`], and all live instances of an engine together at
//!   [`EngineConfig::memory_budget_bytes`]; [`FilterEngine::memory_reserved_bytes`] says
//!   how much is held (`out-of-memory`).
//! - **Make the host keep or print large text:** decision reasons are cut at
//!   [`MAX_REASON_BYTES`], guest log lines at [`MAX_LOG_LINE_BYTES`] and error messages
//!   (rejected config, failed self-test, traps, load and reload errors) at
//!   [`MAX_ERROR_BYTES`], on a character boundary, ending in
//!   `… (truncated, N bytes)`, before they are stored, logged or shown in status.
//!   Each cut is counted in `meshfilter_filter_truncated_total{module,what}` (`what` is
//!   `reason`, `log` or `error`).

mod bindings;
mod decision;
mod engine;
mod error;
mod host_side;
mod host_state;
mod input;
mod instance;
mod manifest;
mod memo;
mod memory;
mod metrics;
mod module;
mod rollout;
mod runtime;
mod set;
mod store;
mod truncate;
mod wasi;
mod watch;

pub use decision::{ExportDecision, FailurePolicy, Hook, ImportDecision, MissDecision, SyncScope};
pub use engine::{EngineConfig, FilterEngine};
pub use error::{CallFailure, LoadError};
pub use input::{CandidateCluster, EndpointInput, Locality, MissInput};
pub use manifest::{ChainEntry, FilterManifest, HookManifest, MANIFEST_FILE, Otherwise};
pub use metrics::FilterMetrics;
pub use module::{LoadedModule, ModuleInfo};
pub use rollout::RolloutPolicy;
pub use runtime::{BuiltinSet, FilterRuntime, GenerationInfo, ModuleSource, RuntimeConfig};
pub use set::{Decided, FilterGeneration, FilterSet, Verdict};
pub use store::StoreLimitsConfig;
pub use truncate::{MAX_ERROR_BYTES, MAX_LOG_LINE_BYTES, MAX_REASON_BYTES};
pub use watch::WatchHandle;
