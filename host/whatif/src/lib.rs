//! What a filter change would do, before it is rolled out.
//!
//! A [`Snapshot`] holds what filters see of a mesh at one moment: every cluster's
//! endpoints with their labels (and annotations where the source has them), node
//! topology and identities. [`diff`] runs two filter sets over it the way the pipeline
//! does (the export chain at each endpoint's own cluster, the scope it gives recorded as
//! the exporter records it, then the import chain at every other cluster) and reports
//! every endpoint whose fate changes, grouped, with the consequence for each consuming
//! cluster: the ipcache entries each of its nodes holds, before and after, and an
//! estimate of the agents' memory for them.

mod diff;
mod error;
mod snapshot;
mod synthetic;

pub use diff::{
    AGENT_BYTES_PER_REMOTE_ENDPOINT, ChangeGroup, ConsumerImpact, DiffOptions, DiffReport, Fate,
    HookTotals, SideLoader, diff,
};
pub use error::WhatIfError;
pub use snapshot::{ClusterSnapshot, FORMAT_VERSION, Snapshot};
pub use synthetic::{SyntheticMesh, synthetic};
