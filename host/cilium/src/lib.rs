//! Cilium's Cluster Mesh data model: the etcd keys and JSON values that unmodified Cilium
//! (clustermesh-apiserver, kvstoremesh, cilium-agent) reads and writes.
//!
//! This crate is pure: no I/O, no async, no etcd client. Everything meshfilter knows about
//! Cilium's formats lives here, so the mesh reflector, the exporter and the node agent can
//! never disagree about a key or a field.
//!
//! - [`keys`]: key prefixes, cache prefixes, sync canaries, cluster names
//!   (mirrors `pkg/kvstore`, `pkg/clustermesh/kvstoremesh/reflector`).
//! - [`ipcache`]: [`IpIdentityPair`], the endpoint value (mirrors `pkg/identity`).
//! - [`identity`]: the identity label string and numeric identity ranges
//!   (mirrors `pkg/labels`, `pkg/identity`).
//! - [`node`]: the node value (mirrors `pkg/node/types` `Node`).
//! - [`cluster_config`]: [`CiliumClusterConfig`] (mirrors `pkg/clustermesh/types`).
//! - [`convert`]: Kubernetes objects to kvstore values, as clustermesh-apiserver does
//!   (mirrors `clustermesh-apiserver/clustermesh/converters.go`).
//!
//! Readers are tolerant where Go's `encoding/json` is (null for a string, absent fields,
//! unknown fields, which are kept so a value round-trips); they reject what Cilium's own
//! readers reject (an ipcache value whose IP does not reproduce its key).
#![deny(missing_docs)]

pub mod cluster_config;
pub mod convert;
mod go_json;
pub mod identity;
pub mod ipcache;
pub mod keys;
pub mod node;
#[cfg(test)]
mod testdata;
mod value;

pub use cluster_config::CiliumClusterConfig;
pub use identity::{IdentityLabels, identity_in_cluster_range};
pub use ipcache::IpIdentityPair;
pub use keys::{ClusterName, Resource};
pub use node::Node;
pub use value::{DEFAULT_MAX_VALUE_LEN, KvstoreValue, ValueError};
