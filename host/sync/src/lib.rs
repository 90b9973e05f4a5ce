//! The sync engine: one reflector that lists and watches a prefix of a source etcd and
//! converges a target etcd to what the filters allow, used by both `meshfilter mesh`
//! (remote clusters into the local kvstoremesh cache) and `meshfilter export` (a cluster's
//! own state into the etcd other clusters read).
//!
//! The pieces: [`EtcdConfig`] reads Cilium's clustermesh connection files; [`Backoff`]
//! spreads reconnects; [`TargetWriter`] batches writes into transactions under leases;
//! [`TargetKeys`] converges the keys of one target prefix; [`Reflector`] runs list, watch,
//! re-list and garbage collection for one [`Mirror`]; [`ExportHook`] turns endpoints into
//! what `meshfilter export` publishes, whichever source they come from;
//! [`RemoteCluster`] runs the reflectors of one remote cluster the way kvstoremesh does.

mod backoff;
mod caches;
mod error;
mod etcd;
mod export;
mod lock;
mod mirrors;
mod reflector;
mod remote;
mod resolve;
mod target;
mod writer;

pub use backoff::Backoff;
pub use caches::{IdentityCache, NodeCache, NodeInfo, endpoint_input};
pub use error::SyncError;
pub use etcd::EtcdConfig;
pub use export::{ExportCluster, ExportHook, ExportMirror, ExportStats, ExportStatusHandle};
pub use lock::LeaderLock;
pub use mirrors::{Explanation, ImportMirror, ImportStats, RecordedDecision, VerbatimMirror};
pub use reflector::{Mirror, Reflector, ReflectorStatus};
pub use remote::{RemoteCluster, RemoteStatus, RemoteStatusHandle};
pub use resolve::{ResolveError, Resolved, Resolver, ResolverStats};
pub use target::TargetKeys;
pub use writer::{TargetWriter, WriteOp, WriterConfig};
