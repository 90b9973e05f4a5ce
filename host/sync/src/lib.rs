//! The sync engine: one reflector that follows a prefix of a source etcd and converges a
//! target etcd to what the filters allow, used by both `meshfilter mesh` (remote clusters
//! into the local kvstoremesh cache) and `meshfilter export` (a cluster's own state into
//! the etcd other clusters read).
//!
//! The pieces: [`TargetWriter`] batches writes into transactions under leases it owns,
//! fenced by the leader lock; [`TargetKeys`] converges the keys of one target prefix;
//! [`Reflector`] converges one [`Mirror`] from a [`meshfilter_etcd::Watcher`];
//! [`ExportHook`] turns endpoints into what `meshfilter export` publishes, whichever source
//! they come from; [`RemoteCluster`] runs the reflectors of one remote cluster the way
//! kvstoremesh does; [`Resolver`] finds one endpoint on demand; [`Mesh`] is the whole mesh
//! role (leader lock, remote set, drain, heartbeat, resolver), [`MeshHandle`] its status.

mod caches;
mod drain;
mod error;
mod export;
mod lock;
mod mesh;
mod metrics;
mod mirrors;
mod reflector;
mod remote;
mod resolve;
mod snapshot;
mod target;
mod writer;

pub use caches::{IdentityCache, NodeCache, NodeInfo, endpoint_input};
pub use error::SyncError;
pub use export::{ExportCluster, ExportHook, ExportMirror, ExportStats, ExportStatusHandle};
pub use lock::LeaderLock;
pub use mesh::{Mesh, MeshHandle, MeshOptions, drain_cluster};
pub use metrics::SyncMetrics;
pub use mirrors::{Explanation, ImportMirror, RecordedDecision, VerbatimMirror};
pub use reflector::{MAX_ERROR_CHARS, Mirror, Rechecks, Reflector, ReflectorLimits};
pub use remote::{RemoteCluster, RemoteOptions, RemoteStatusHandle};
pub use resolve::{RemoteList, Resolver, ResolverConfig, ResolverStats};
pub use snapshot::capture_cluster;
pub use target::TargetKeys;
pub use writer::{Fence, LeaseInfo, TargetWriter, WriteOp, WriterConfig};
