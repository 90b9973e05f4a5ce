//! Soaks that drive real meshfilter processes on real etcd, for `meshfilter bench`.
//!
//! [`chaos`] is the soak behind issue "Nothing lost, nothing stale": remote clusters,
//! an exporter and two mesh replicas under churn and faults, checked at the end against
//! an independent model of what the filters allow. The `meshfilter` binary only parses
//! flags and calls [`chaos::run`].

pub mod chaos;
mod error;

pub use chaos::{ChaosOptions, ChaosReport};
pub use error::BenchError;
