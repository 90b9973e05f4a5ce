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

mod bindings;
mod decision;
mod engine;
mod error;
mod input;
mod instance;
mod manifest;
mod memo;
mod metrics;
mod module;
mod runtime;
mod set;
mod store;
mod watch;

pub use decision::{ExportDecision, FailurePolicy, Hook, ImportDecision, MissDecision, SyncScope};
pub use engine::{EngineConfig, FilterEngine};
pub use error::{CallFailure, LoadError};
pub use input::{CandidateCluster, EndpointInput, Locality, MissInput};
pub use manifest::{ChainEntry, FilterManifest, HookManifest, MANIFEST_FILE, Otherwise};
pub use metrics::FilterMetrics;
pub use module::{LoadedModule, ModuleInfo};
pub use runtime::{BuiltinSet, FilterRuntime, GenerationInfo, ModuleSource, RuntimeConfig};
pub use set::{Decided, FilterGeneration, FilterSet, Verdict};
pub use store::StoreLimitsConfig;
pub use watch::WatchHandle;
