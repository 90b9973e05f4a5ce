//! Everything `meshfilter demo` and `meshfilter bench` run, with real processes on real
//! etcd: the binary parses flags into the option structs here and calls `run`.
//!
//! - [`chaos`]: the soak behind "nothing lost, nothing stale": remote clusters, an
//!   exporter and two mesh replicas under churn and faults, checked at the end against an
//!   independent model of what the filters allow.
//! - [`mesh`]: bootstrap of one `meshfilter mesh` against many mock remotes.
//! - [`node`]: the miss path, from the kernel program to an installed entry.
//! - [`filter`]: decision latency of one module, Wasm against native.
//! - [`demo`]: the default filter over a sample mesh, on real etcd.
//!
//! Cilium values are built by [`fixtures`] through `host/cilium`'s types, never by hand.

pub mod chaos;
pub mod demo;
mod error;
pub mod filter;
pub mod fixtures;
pub mod mesh;
pub mod node;
mod process;

pub use chaos::{ChaosOptions, ChaosReport};
pub use demo::{DemoOptions, Sample};
pub use error::BenchError;
pub use filter::FilterBenchOptions;
pub use mesh::MeshBenchOptions;
pub use node::NodeBenchOptions;

/// The runtime every run drives its etcd clients and tasks on. Two workers: the harness
/// needs little, and the processes it measures get the rest of the machine.
fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BenchError::fixture("tokio runtime")(e.to_string()))
}
