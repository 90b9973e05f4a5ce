//! Errors of the node agent library.

use std::path::PathBuf;

/// Why the datapath could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The binary was built without the eBPF program.
    #[error(
        "this build has no eBPF program (built without the `ebpf` feature or with AYA_BUILD_SKIP); run scripts/setup.sh and rebuild"
    )]
    NotBuilt,
    /// Missing privileges.
    #[error(
        "missing capabilities {missing}: meshfilter node needs CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN; run it as root or grant them to the container"
    )]
    Capabilities {
        /// Names of the missing capabilities.
        missing: String,
    },
    /// The object lacks a program or map the loader expects.
    #[error("the eBPF object has no {0} named {1}")]
    Missing(&'static str, &'static str),
    /// Cilium's map is not there or not what we expect.
    #[error("Cilium ipcache map {}: {reason}", path.display())]
    CiliumMap {
        /// Pin path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing Cilium's map is Cilium's job.
    #[error("the ipcache is Cilium's (cilium mode): entries go through the local etcd cache")]
    ReadOnlyIpcache,
    /// Loading the object failed (verifier, map creation).
    #[error("loading the eBPF object: {0}")]
    Load(aya::EbpfError),
    /// A program operation failed.
    #[error("eBPF program: {0}")]
    Program(aya::programs::ProgramError),
    /// Attaching to an interface failed.
    #[error("attaching to interface {interface}: {error}")]
    Attach {
        /// Interface name.
        interface: String,
        /// Cause.
        error: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("eBPF map: {0}")]
    Map(aya::maps::MapError),
    /// A map has no room for another entry (`ENOSPC`/`E2BIG`): the entry is not there.
    #[error("the {map} map is full")]
    MapFull {
        /// The map's name in the program.
        map: &'static str,
    },
    /// A copy of the program could not be bound to the map it must share or read.
    #[error("binding the program to map {map}: {error}")]
    Bind {
        /// The map's name in the program.
        map: &'static str,
        /// Cause.
        error: std::io::Error,
    },
}

/// Why an address could not be resolved.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    /// No cluster has it.
    #[error("not an endpoint of any cluster")]
    NotFound,
    /// The mesh refused for now (rate limit, standby replica).
    #[error("resolver busy: {0}")]
    Busy(String),
    /// The mesh API or etcd could not be reached or answered garbage.
    #[error("resolver unavailable: {0}")]
    Unavailable(String),
}

/// Why an endpoint resolved on a miss is not in the standalone ipcache.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InstallError {
    /// The map has no room for it.
    #[error("the {0} map is full")]
    MapFull(&'static str),
    /// Writing the map failed otherwise.
    #[error("writing the {0} map failed")]
    Failed(&'static str),
    /// The entry's mask is not a prefix: there is no key to install it under.
    #[error("the entry's mask is not a prefix")]
    NotAPrefix,
}

// Conversions for `?`. The variants carry their cause in their message and not as a
// `source`, so an error chain never prints the same cause twice.
impl From<aya::EbpfError> for DatapathError {
    fn from(error: aya::EbpfError) -> Self {
        DatapathError::Load(error)
    }
}

impl From<aya::programs::ProgramError> for DatapathError {
    fn from(error: aya::programs::ProgramError) -> Self {
        DatapathError::Program(error)
    }
}

impl From<aya::maps::MapError> for DatapathError {
    fn from(error: aya::maps::MapError) -> Self {
        DatapathError::Map(error)
    }
}
