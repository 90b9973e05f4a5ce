//! Label, annotation and field names meshfilter reads and writes.
//!
//! The first three are the CFP-44921 names; the topology labels are Kubernetes'
//! well-known labels, which Cilium copies onto its node records.

/// Pod label (or annotation) that opts a pod into Cluster Mesh sync: value `"true"`.
pub const SYNC: &str = "clustermesh.cilium.io/sync";

/// Pod annotation (or label) saying how far an opted-in pod travels.
pub const SYNC_SCOPE: &str = "clustermesh.cilium.io/sync-scope";

/// Namespace annotation that makes every pod of the namespace global (`"true"`) or not
/// (`"false"`); Cilium's own namespace filter reads the same annotation.
pub const NAMESPACE_GLOBAL: &str = "clustermesh.cilium.io/global";

/// Node label carrying the node's region.
pub const TOPOLOGY_REGION: &str = "topology.kubernetes.io/region";

/// Node label carrying the node's zone.
pub const TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// Identity label holding the pod's namespace (Cilium's `k8s:io.kubernetes.pod.namespace`).
pub const IDENTITY_NAMESPACE: &str = "io.kubernetes.pod.namespace";
