//! The meshfilter node agent: "slowness over failure" for Cluster Mesh sync gaps.
//!
//! A TC classifier ([`datapath`]) sees packets to remote-cluster pod addresses that have no
//! ipcache entry and signals them on a ring buffer, deduplicated and rate-limited in the
//! kernel. The [`agent`] reads the signals ([`events`]), asks the filter engine's miss hook
//! what to do, resolves the address ([`resolve`]) and installs it, so the sender's next
//! retransmit gets through. [`view`] follows the local kvstoremesh cache into a pure
//! [`index`], and [`maps`] writes what the index wants into the program's maps.
#![deny(missing_docs)]

pub mod agent;
mod caps;
pub mod datapath;
mod error;
pub mod events;
pub mod index;
pub mod maps;
pub mod metrics;
pub mod probe;
pub mod resolve;
pub mod view;

pub use agent::{AgentConfig, MissHook, NodeAgent, NodeStatus, Outcome};
pub use datapath::{
    Attachment, CiliumMapStatus, Datapath, DatapathConfig, Direction, IpcacheMode, MissVerdict,
    PinCheck,
};
pub use error::{DatapathError, InstallError, ResolveError};
pub use index::StaticCidr;
pub use metrics::NodeMetrics;
pub use resolve::{Resolution, ResolvedFrom, Resolvers};
pub use view::MeshView;
