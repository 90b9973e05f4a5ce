//! The HTTP API of meshfilter's roles, one type per wire format, shared by the servers that
//! answer and the clients that ask: [`MeshStatus`] (`/status` of `meshfilter mesh`, read by
//! `meshfilter status` and the chaos soak), the resolve API (`/resolve`, asked by the node
//! agent), and a small blocking [`MeshClient`].
//!
//! Field names are camelCase JSON. Adding a field is compatible (readers ignore unknown
//! fields and default missing ones); renaming or removing one is not.

mod client;
mod resolve;
mod status;

pub use client::{ApiError, MeshClient};
pub use resolve::{ResolveError, Resolved};
pub use status::{
    CandidateStatus, FilterSummary, ImportStats, LeaseStatus, MeshStatus, ReflectorStatus,
    RemoteStatus, ResolverCounters, RollbackStatus, RolloutStatus, WriterStatus,
};
