//! etcd key layout of Cluster Mesh: where each resource lives at a source cluster
//! (`cilium/state/...`, written by clustermesh-apiserver) and in a kvstoremesh cache
//! (`cilium/cache/...`), plus sync canaries, cluster configs, heartbeat and locks.
//!
//! Mirrors `pkg/kvstore/kvstore.go` (constants, `StateToCachePrefix`),
//! `pkg/clustermesh/kvstoremesh/reflector` (state and cache prefixes, canary keys) and
//! `pkg/clustermesh/types` (cluster name rules). A key suffix (the part after a
//! resource's prefix: an IP, an identity number, `<node>`, `<ns>/<name>`) is carried over
//! verbatim between the state and cache forms.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Root of every Cilium key (`BaseKeyPrefix`).
pub const BASE_KEY_PREFIX: &str = "cilium";
/// Root of the keys a cluster publishes about itself (`StatePrefix`).
pub const STATE_PREFIX: &str = "cilium/state";
/// Root of the keys kvstoremesh mirrors from remote clusters (`CachePrefix`).
pub const CACHE_PREFIX: &str = "cilium/cache";
/// Parent of `cilium/cluster-config/<cluster>` (`ClusterConfigPrefix`).
pub const CLUSTER_CONFIG_PREFIX: &str = "cilium/cluster-config";
/// Parent of the sync canaries `cilium/synced/<cluster>/<prefix>` (`SyncedPrefix`).
pub const SYNCED_PREFIX: &str = "cilium/synced";
/// Heartbeat key, an RFC 3339 timestamp refreshed every minute (`HeartbeatPath`).
pub const HEARTBEAT_KEY: &str = "cilium/.heartbeat";
/// Lock taken while initialising a kvstore (`InitLockPath`).
pub const INIT_LOCK_KEY: &str = "cilium/.initlock";
/// etcd mutex electing the active kvstoremesh replica (`backendLockName` in
/// `clustermesh-apiserver/kvstoremesh/root.go`).
pub const KVSTOREMESH_LOCK_KEY: &str = "cilium/kvstoremesh-lock";
/// The only ipcache address space (`ipcache.DefaultAddressSpace`).
pub const DEFAULT_ADDRESS_SPACE: &str = "default";
/// Prefix of every endpoint key at a source (`path.Join(IPIdentitiesPath,
/// DefaultAddressSpace)`): endpoint keys carry no cluster name.
pub const ENDPOINTS_SOURCE_PREFIX: &str = "cilium/state/ip/v1/default/";
/// Prefix of every identity key at a source (`path.Join(IdentitiesPath, "id")`): identity
/// keys carry no cluster name.
pub const IDENTITIES_SOURCE_PREFIX: &str = "cilium/state/identities/v1/id/";
/// Longest valid cluster name (`clusterNameMaxLength`).
pub const CLUSTER_NAME_MAX_LEN: usize = 32;

/// A cluster name that is valid for Cilium: at most 32 characters matching
/// `^([a-z0-9][-a-z0-9]*)?[a-z0-9]$` (mirrors `pkg/clustermesh/types` `ValidateClusterName`).
///
/// Keys embed the name as a path segment, so only a validated name can build one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(String);

/// Why a cluster name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterNameError {
    /// Longer than [`CLUSTER_NAME_MAX_LEN`].
    #[error(
        "cluster name {name:?} is {len} characters long; at most {CLUSTER_NAME_MAX_LEN} are allowed"
    )]
    TooLong {
        /// The refused name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// Empty, or not lower-case alphanumerics and `-` starting and ending alphanumeric.
    #[error(
        "cluster name {name:?} must consist of lower case alphanumeric characters and '-', \
         and must start and end with an alphanumeric character"
    )]
    Invalid {
        /// The refused name.
        name: String,
    },
}

/// Checks a cluster name against Cilium's rules without taking ownership.
pub fn validate_cluster_name(name: &str) -> Result<(), ClusterNameError> {
    if name.len() > CLUSTER_NAME_MAX_LEN {
        return Err(ClusterNameError::TooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    let valid = match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && bytes.iter().all(|b| alnum(b) || *b == b'-')
        }
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(ClusterNameError::Invalid {
            name: name.to_owned(),
        })
    }
}

impl ClusterName {
    /// Validates `name` (see [`validate_cluster_name`]).
    pub fn new(name: impl Into<String>) -> Result<Self, ClusterNameError> {
        let name = name.into();
        validate_cluster_name(&name)?;
        Ok(ClusterName(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClusterName {
    type Error = ClusterNameError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        ClusterName::new(name)
    }
}

impl From<ClusterName> for String {
    fn from(name: ClusterName) -> String {
        name.0
    }
}

impl std::str::FromStr for ClusterName {
    type Err = ClusterNameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ClusterName::new(name)
    }
}

impl AsRef<str> for ClusterName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resource kvstoremesh mirrors, one reflector each (mirrors the reflectors of
/// `pkg/clustermesh/kvstoremesh/reflector/cell.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// Endpoint IPs (`ip/v1`), value [`crate::IpIdentityPair`].
    Endpoints,
    /// Security identities (`identities/v1`), value [`crate::IdentityLabels`].
    Identities,
    /// Nodes (`nodes/v1`), value [`crate::Node`].
    Nodes,
    /// Legacy global services (`services/v1`), JSON `ClusterService`.
    Services,
    /// MCS-API service exports (`serviceexports/v1`), JSON `MCSAPIServiceSpec`.
    ServiceExports,
    /// Service v2 endpoint slices (`endpointslices/v1`), zstd-compressed protobuf.
    EndpointSlices,
}

/// Which half of the key space a key lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySpace {
    /// `cilium/state/...`: written by the cluster the data belongs to.
    State,
    /// `cilium/cache/...`: mirrored from a remote cluster by kvstoremesh.
    Cache,
}

impl Resource {
    /// Every resource, in reflector order.
    pub const ALL: [Resource; 6] = [
        Resource::Endpoints,
        Resource::Identities,
        Resource::Nodes,
        Resource::Services,
        Resource::ServiceExports,
        Resource::EndpointSlices,
    ];

    /// The key segment naming the resource: `ip`, `identities`, `nodes`, `services`,
    /// `serviceexports`, `endpointslices`.
    pub const fn name(self) -> &'static str {
        match self {
            Resource::Endpoints => "ip",
            Resource::Identities => "identities",
            Resource::Nodes => "nodes",
            Resource::Services => "services",
            Resource::ServiceExports => "serviceexports",
            Resource::EndpointSlices => "endpointslices",
        }
    }

    /// The resource whose key segment is `name`.
    pub fn from_name(name: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Base state prefix, e.g. `cilium/state/ip/v1` (also the suffix of its sync canary).
    pub const fn base_prefix(self) -> &'static str {
        match self {
            Resource::Endpoints => "cilium/state/ip/v1",
            Resource::Identities => "cilium/state/identities/v1",
            Resource::Nodes => "cilium/state/nodes/v1",
            Resource::Services => "cilium/state/services/v1",
            Resource::ServiceExports => "cilium/state/serviceexports/v1",
            Resource::EndpointSlices => "cilium/state/endpointslices/v1",
        }
    }

    /// Base cache prefix, e.g. `cilium/cache/ip/v1` (`StateToCachePrefix(base_prefix)`).
    pub const fn cache_base_prefix(self) -> &'static str {
        match self {
            Resource::Endpoints => "cilium/cache/ip/v1",
            Resource::Identities => "cilium/cache/identities/v1",
            Resource::Nodes => "cilium/cache/nodes/v1",
            Resource::Services => "cilium/cache/services/v1",
            Resource::ServiceExports => "cilium/cache/serviceexports/v1",
            Resource::EndpointSlices => "cilium/cache/endpointslices/v1",
        }
    }

    /// Whether the source keys carry the cluster name. Endpoint and identity keys do not
    /// (`ip/v1/default/<ip>`, `identities/v1/id/<id>`; cilium/cilium#41429), so in a
    /// source etcd they can only belong to that etcd's own cluster.
    pub const fn source_is_cluster_scoped(self) -> bool {
        !matches!(self, Resource::Endpoints | Resource::Identities)
    }

    /// The prefix a reflector watches at a source cluster, with trailing `/`:
    /// `cilium/state/ip/v1/default/`, `cilium/state/identities/v1/id/`, or
    /// `cilium/state/<res>/v1/<cluster>/` for the cluster-scoped resources.
    pub fn source_prefix(self, cluster: &ClusterName) -> String {
        match self {
            Resource::Endpoints => ENDPOINTS_SOURCE_PREFIX.to_owned(),
            Resource::Identities => IDENTITIES_SOURCE_PREFIX.to_owned(),
            _ => format!("{}/{cluster}/", self.base_prefix()),
        }
    }

    /// The prefix holding `cluster`'s mirrored keys in a kvstoremesh cache, with trailing
    /// `/`: `cilium/cache/<res>/v1/<cluster>/`, and for identities
    /// `cilium/cache/identities/v1/<cluster>/id/` (cluster segment before `id/`).
    pub fn cache_prefix(self, cluster: &ClusterName) -> String {
        match self {
            Resource::Identities => format!("{}/{cluster}/id/", self.cache_base_prefix()),
            _ => format!("{}/{cluster}/", self.cache_base_prefix()),
        }
    }

    /// The cache root of this resource across every mirrored cluster, with trailing `/`:
    /// `cilium/cache/<res>/v1/`. A reader of a whole kvstoremesh cache (the node agent)
    /// watches it once instead of one prefix per cluster; every
    /// [`cache_prefix`](Self::cache_prefix) lies under it, and [`parse_key`] takes its keys
    /// apart.
    pub fn cache_root(self) -> String {
        format!("{}/", self.cache_base_prefix())
    }

    /// Full source key for `suffix` (an IP, identity number, `<node>`, `<ns>/<name>`).
    pub fn source_key(self, cluster: &ClusterName, suffix: &str) -> String {
        self.source_prefix(cluster) + suffix
    }

    /// Full cache key for `suffix` mirrored from `cluster`.
    pub fn cache_key(self, cluster: &ClusterName, suffix: &str) -> String {
        self.cache_prefix(cluster) + suffix
    }

    /// Sync canary clustermesh-apiserver writes once `cluster`'s initial list of this
    /// resource is in etcd: `cilium/synced/<cluster>/cilium/state/<res>/v1` (the base
    /// prefix, `WSSWithSyncedKeyOverride`, even where keys live deeper).
    pub fn source_canary_key(self, cluster: &ClusterName) -> String {
        format!("{}{}", synced_prefix(cluster), self.base_prefix())
    }

    /// Sync canary kvstoremesh writes in its cache once the mirror of `cluster` is
    /// complete: `cilium/synced/<cluster>/cilium/cache/<res>/v1`.
    pub fn cache_canary_key(self, cluster: &ClusterName) -> String {
        format!("{}{}", synced_prefix(cluster), self.cache_base_prefix())
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `cilium/cluster-config/<cluster>`: where a cluster's [`crate::CiliumClusterConfig`] lives.
pub fn cluster_config_key(cluster: &ClusterName) -> String {
    format!("{CLUSTER_CONFIG_PREFIX}/{cluster}")
}

/// `cilium/cluster-config/`: the parent of every cluster's config, what a reader of all
/// of them watches (mirrors the `ClusterConfigPrefix` directory Cilium reads).
pub fn cluster_config_root() -> String {
    format!("{CLUSTER_CONFIG_PREFIX}/")
}

/// The cluster whose config lives under `key` (`cilium/cluster-config/<cluster>`), the
/// inverse of [`cluster_config_key`]. Refuses other keys, deeper keys and invalid names.
pub fn parse_cluster_config_key(key: &str) -> Result<ClusterName, KeyError> {
    let name = key
        .strip_prefix(CLUSTER_CONFIG_PREFIX)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .ok_or_else(|| KeyError::NotAResourceKey {
            key: key.to_owned(),
            expected: "cluster config",
        })?;
    ClusterName::new(name).map_err(|error| KeyError::InvalidCluster {
        key: key.to_owned(),
        error,
    })
}

/// `cilium/synced/<cluster>/`: parent of every sync canary of `cluster`, the prefix agents
/// watch when the config says `syncedCanaries`.
pub fn synced_prefix(cluster: &ClusterName) -> String {
    format!("{SYNCED_PREFIX}/{cluster}/")
}

/// Replaces a leading `cilium/state` with `cilium/cache`; other prefixes are returned
/// unchanged (mirrors `kvstore.StateToCachePrefix`, including its plain string-prefix test).
pub fn state_to_cache_prefix(prefix: &str) -> String {
    match prefix.strip_prefix(STATE_PREFIX) {
        Some(rest) => format!("{CACHE_PREFIX}{rest}"),
        None => prefix.to_owned(),
    }
}

/// A resource key taken apart by [`parse_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The resource the key belongs to.
    pub resource: Resource,
    /// State (source) or cache (mirror) key.
    pub space: KeySpace,
    /// The cluster named in the key (validated); `None` for source endpoint and identity
    /// keys, which carry none.
    pub cluster: Option<&'a str>,
    /// Everything after the prefix, verbatim and non-empty.
    pub suffix: &'a str,
}

/// Why a key could not be parsed or mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not a key of any Cluster Mesh resource, in the expected key space.
    #[error("key {key:?} is not a {expected} key")]
    NotAResourceKey {
        /// The key.
        key: String,
        /// What was expected, e.g. `cilium/state resource`.
        expected: &'static str,
    },
    /// Not under the prefix of the resource and cluster it was mapped for.
    #[error("key {key:?} is not under {prefix:?}")]
    OutsidePrefix {
        /// The key.
        key: String,
        /// The prefix it should have started with.
        prefix: String,
    },
    /// A source key that names another cluster than the one it is mapped for.
    #[error("key {key:?} belongs to cluster {found:?}, not {expected:?}")]
    ClusterMismatch {
        /// The key.
        key: String,
        /// The cluster it was mapped for.
        expected: String,
        /// The cluster its path names.
        found: String,
    },
    /// The cluster segment of the key is not a valid cluster name.
    #[error("key {key:?}: {error}")]
    InvalidCluster {
        /// The key.
        key: String,
        /// What is wrong with the name.
        error: ClusterNameError,
    },
}

/// Takes a state or cache key of a Cluster Mesh resource apart.
///
/// Accepted forms: `cilium/state/ip/v1/default/<s>`, `cilium/state/identities/v1/id/<s>`,
/// `cilium/state/<res>/v1/<cluster>/<s>`, `cilium/cache/identities/v1/<cluster>/id/<s>`
/// and `cilium/cache/<res>/v1/<cluster>/<s>`, with a non-empty suffix `<s>`. Kvstore-mode
/// identity keys (`identities/v1/value/...`, `.../locks/...`) are not Cluster Mesh keys and
/// are refused.
pub fn parse_key(key: &str) -> Result<ParsedKey<'_>, KeyError> {
    let not_resource = || KeyError::NotAResourceKey {
        key: key.to_owned(),
        expected: "Cluster Mesh resource",
    };
    let (space, rest) = if let Some(rest) = key.strip_prefix("cilium/state/") {
        (KeySpace::State, rest)
    } else if let Some(rest) = key.strip_prefix("cilium/cache/") {
        (KeySpace::Cache, rest)
    } else {
        return Err(not_resource());
    };
    let (name, rest) = rest.split_once('/').ok_or_else(not_resource)?;
    let resource = Resource::from_name(name).ok_or_else(not_resource)?;
    let rest = rest.strip_prefix("v1/").ok_or_else(not_resource)?;

    let (cluster, suffix) = match (space, resource) {
        (KeySpace::State, Resource::Endpoints) => {
            let rest = rest
                .strip_prefix(DEFAULT_ADDRESS_SPACE)
                .and_then(|r| r.strip_prefix('/'));
            (None, rest.ok_or_else(not_resource)?)
        }
        (KeySpace::State, Resource::Identities) => {
            (None, rest.strip_prefix("id/").ok_or_else(not_resource)?)
        }
        (KeySpace::Cache, Resource::Identities) => {
            let (cluster, rest) = rest.split_once('/').ok_or_else(not_resource)?;
            (
                Some(cluster),
                rest.strip_prefix("id/").ok_or_else(not_resource)?,
            )
        }
        _ => {
            let (cluster, rest) = rest.split_once('/').ok_or_else(not_resource)?;
            (Some(cluster), rest)
        }
    };
    if suffix.is_empty() {
        return Err(not_resource());
    }
    if let Some(cluster) = cluster {
        validate_cluster_name(cluster).map_err(|error| KeyError::InvalidCluster {
            key: key.to_owned(),
            error,
        })?;
    }
    Ok(ParsedKey {
        resource,
        space,
        cluster,
        suffix,
    })
}

/// Maps a source key (`cilium/state/...`) to the cache key kvstoremesh writes for it when
/// mirroring `cluster`; the suffix is kept verbatim. A cluster-scoped source key must name
/// `cluster`.
pub fn source_to_cache_key(source_key: &str, cluster: &ClusterName) -> Result<String, KeyError> {
    let parsed = parse_key(source_key)?;
    if parsed.space != KeySpace::State {
        return Err(KeyError::NotAResourceKey {
            key: source_key.to_owned(),
            expected: "cilium/state resource",
        });
    }
    if let Some(found) = parsed.cluster
        && found != cluster.as_str()
    {
        return Err(KeyError::ClusterMismatch {
            key: source_key.to_owned(),
            expected: cluster.to_string(),
            found: found.to_owned(),
        });
    }
    Ok(parsed.resource.cache_key(cluster, parsed.suffix))
}

/// Maps a cache key (`cilium/cache/...`) back to the source key it mirrors, and the cluster
/// it was mirrored from; the suffix is kept verbatim.
pub fn cache_to_source_key(cache_key: &str) -> Result<(ClusterName, String), KeyError> {
    let parsed = parse_key(cache_key)?;
    let cluster = match (parsed.space, parsed.cluster) {
        // parse_key validated the name.
        (KeySpace::Cache, Some(cluster)) => ClusterName(cluster.to_owned()),
        _ => {
            return Err(KeyError::NotAResourceKey {
                key: cache_key.to_owned(),
                expected: "cilium/cache resource",
            });
        }
    };
    let source = parsed.resource.source_key(&cluster, parsed.suffix);
    Ok((cluster, source))
}

/// The state and cache prefixes of one resource of one cluster, computed once: what a
/// reflector needs to map every event's key without re-deriving prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePrefixes {
    resource: Resource,
    cluster: ClusterName,
    source: String,
    cache: String,
}

impl ResourcePrefixes {
    /// Prefixes of `resource` for `cluster`.
    pub fn new(resource: Resource, cluster: &ClusterName) -> Self {
        ResourcePrefixes {
            resource,
            cluster: cluster.clone(),
            source: resource.source_prefix(cluster),
            cache: resource.cache_prefix(cluster),
        }
    }

    /// The resource.
    pub fn resource(&self) -> Resource {
        self.resource
    }

    /// The cluster.
    pub fn cluster(&self) -> &ClusterName {
        &self.cluster
    }

    /// [`Resource::source_prefix`] of this cluster.
    pub fn source_prefix(&self) -> &str {
        &self.source
    }

    /// [`Resource::cache_prefix`] of this cluster.
    pub fn cache_prefix(&self) -> &str {
        &self.cache
    }

    /// The suffix of a source key of this resource and cluster, if it is one.
    pub fn source_suffix<'k>(&self, source_key: &'k str) -> Option<&'k str> {
        source_key
            .strip_prefix(self.source.as_str())
            .filter(|s| !s.is_empty())
    }

    /// The suffix of a cache key of this resource and cluster, if it is one.
    pub fn cache_suffix<'k>(&self, cache_key: &'k str) -> Option<&'k str> {
        cache_key
            .strip_prefix(self.cache.as_str())
            .filter(|s| !s.is_empty())
    }

    /// The cache key mirroring `source_key`.
    pub fn to_cache(&self, source_key: &str) -> Result<String, KeyError> {
        let suffix = self
            .source_suffix(source_key)
            .ok_or_else(|| KeyError::OutsidePrefix {
                key: source_key.to_owned(),
                prefix: self.source.clone(),
            })?;
        Ok(format!("{}{suffix}", self.cache))
    }

    /// The source key `cache_key` mirrors.
    pub fn to_source(&self, cache_key: &str) -> Result<String, KeyError> {
        let suffix = self
            .cache_suffix(cache_key)
            .ok_or_else(|| KeyError::OutsidePrefix {
                key: cache_key.to_owned(),
                prefix: self.cache.clone(),
            })?;
        Ok(format!("{}{suffix}", self.source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    fn c3() -> ClusterName {
        ClusterName::new("cluster3").unwrap()
    }

    #[test]
    fn cluster_names_follow_cilium() {
        for ok in ["a", "1", "cluster3", "eu-west-1", "a-b", &"x".repeat(32)] {
            assert!(ClusterName::new(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "-a", "a-", "Cluster", "a_b", "a.b", "a/b", "é", " a"] {
            assert!(
                matches!(ClusterName::new(bad), Err(ClusterNameError::Invalid { .. })),
                "{bad:?}"
            );
        }
        let long = "x".repeat(33);
        assert_eq!(
            ClusterName::new(long.clone()),
            Err(ClusterNameError::TooLong {
                name: long,
                len: 33
            })
        );
        let parsed: ClusterName = serde_json::from_str("\"cluster3\"").unwrap();
        assert_eq!(parsed, c3());
        assert!(serde_json::from_str::<ClusterName>("\"Bad\"").is_err());
        assert_eq!(serde_json::to_string(&c3()).unwrap(), "\"cluster3\"");
    }

    #[test]
    fn prefixes_of_every_resource() {
        let c = c3();
        // (resource, source prefix, cache prefix, source canary, cache canary)
        let table = [
            (
                Resource::Endpoints,
                "cilium/state/ip/v1/default/",
                "cilium/cache/ip/v1/cluster3/",
                "cilium/synced/cluster3/cilium/state/ip/v1",
                "cilium/synced/cluster3/cilium/cache/ip/v1",
            ),
            (
                Resource::Identities,
                "cilium/state/identities/v1/id/",
                "cilium/cache/identities/v1/cluster3/id/",
                "cilium/synced/cluster3/cilium/state/identities/v1",
                "cilium/synced/cluster3/cilium/cache/identities/v1",
            ),
            (
                Resource::Nodes,
                "cilium/state/nodes/v1/cluster3/",
                "cilium/cache/nodes/v1/cluster3/",
                "cilium/synced/cluster3/cilium/state/nodes/v1",
                "cilium/synced/cluster3/cilium/cache/nodes/v1",
            ),
            (
                Resource::Services,
                "cilium/state/services/v1/cluster3/",
                "cilium/cache/services/v1/cluster3/",
                "cilium/synced/cluster3/cilium/state/services/v1",
                "cilium/synced/cluster3/cilium/cache/services/v1",
            ),
            (
                Resource::ServiceExports,
                "cilium/state/serviceexports/v1/cluster3/",
                "cilium/cache/serviceexports/v1/cluster3/",
                "cilium/synced/cluster3/cilium/state/serviceexports/v1",
                "cilium/synced/cluster3/cilium/cache/serviceexports/v1",
            ),
            (
                Resource::EndpointSlices,
                "cilium/state/endpointslices/v1/cluster3/",
                "cilium/cache/endpointslices/v1/cluster3/",
                "cilium/synced/cluster3/cilium/state/endpointslices/v1",
                "cilium/synced/cluster3/cilium/cache/endpointslices/v1",
            ),
        ];
        for (r, source, cache, source_canary, cache_canary) in table {
            assert_eq!(r.source_prefix(&c), source, "{r}");
            assert_eq!(r.cache_prefix(&c), cache, "{r}");
            assert_eq!(r.source_canary_key(&c), source_canary, "{r}");
            assert_eq!(r.cache_canary_key(&c), cache_canary, "{r}");
            assert_eq!(
                state_to_cache_prefix(r.base_prefix()),
                r.cache_base_prefix(),
                "{r}"
            );
            assert_eq!(Resource::from_name(r.name()), Some(r));
        }
        assert_eq!(
            ENDPOINTS_SOURCE_PREFIX,
            format!(
                "{}/{DEFAULT_ADDRESS_SPACE}/",
                Resource::Endpoints.base_prefix()
            )
        );
        assert_eq!(
            IDENTITIES_SOURCE_PREFIX,
            format!("{}/id/", Resource::Identities.base_prefix())
        );
        assert_eq!(cluster_config_key(&c), "cilium/cluster-config/cluster3");
        assert_eq!(synced_prefix(&c), "cilium/synced/cluster3/");
    }

    #[test]
    fn canaries_match_cilium_samples() {
        let misc: serde_json::Value = serde_json::from_str(testdata::MISC).unwrap();
        let want: Vec<&str> = misc["sync-canaries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let c = c3();
        let got: Vec<String> = [Resource::Endpoints, Resource::Identities, Resource::Nodes]
            .into_iter()
            .map(|r| r.source_canary_key(&c))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            misc["cluster-config"]["key"],
            cluster_config_key(&c).as_str()
        );
    }

    #[test]
    fn state_to_cache_prefix_mirrors_go() {
        assert_eq!(
            state_to_cache_prefix("cilium/state/ip/v1"),
            "cilium/cache/ip/v1"
        );
        assert_eq!(state_to_cache_prefix("cilium/state"), "cilium/cache");
        assert_eq!(state_to_cache_prefix("cilium/synced/x"), "cilium/synced/x");
        // Go's strings.HasPrefix does not stop at a segment boundary; neither do we.
        assert_eq!(state_to_cache_prefix("cilium/statefoo"), "cilium/cachefoo");
    }

    #[test]
    fn source_and_cache_keys_map_both_ways() {
        let c = c3();
        // (source key, cache key)
        let table = [
            (
                "cilium/state/ip/v1/default/10.244.1.79",
                "cilium/cache/ip/v1/cluster3/10.244.1.79",
            ),
            (
                "cilium/state/ip/v1/default/fd00:10:244:1::d643",
                "cilium/cache/ip/v1/cluster3/fd00:10:244:1::d643",
            ),
            (
                "cilium/state/ip/v1/default/10.0.0.0/8",
                "cilium/cache/ip/v1/cluster3/10.0.0.0/8",
            ),
            (
                "cilium/state/identities/v1/id/196915",
                "cilium/cache/identities/v1/cluster3/id/196915",
            ),
            (
                "cilium/state/nodes/v1/cluster3/test-node-1",
                "cilium/cache/nodes/v1/cluster3/test-node-1",
            ),
            (
                "cilium/state/services/v1/cluster3/ns/svc",
                "cilium/cache/services/v1/cluster3/ns/svc",
            ),
            (
                "cilium/state/serviceexports/v1/cluster3/ns/svc",
                "cilium/cache/serviceexports/v1/cluster3/ns/svc",
            ),
            (
                "cilium/state/endpointslices/v1/cluster3/ns/slice-abc",
                "cilium/cache/endpointslices/v1/cluster3/ns/slice-abc",
            ),
        ];
        for (source, cache) in table {
            assert_eq!(source_to_cache_key(source, &c).unwrap(), cache);
            assert_eq!(
                cache_to_source_key(cache).unwrap(),
                (c.clone(), source.to_owned())
            );
            let parsed = parse_key(source).unwrap();
            let prefixes = ResourcePrefixes::new(parsed.resource, &c);
            assert_eq!(prefixes.to_cache(source).unwrap(), cache);
            assert_eq!(prefixes.to_source(cache).unwrap(), source);
            assert_eq!(prefixes.source_suffix(source), Some(parsed.suffix));
            assert_eq!(prefixes.cache_suffix(cache), Some(parsed.suffix));
        }
    }

    #[test]
    fn parse_key_takes_keys_apart() {
        let p = parse_key("cilium/state/ip/v1/default/10.0.0.0/8").unwrap();
        assert_eq!(
            p,
            ParsedKey {
                resource: Resource::Endpoints,
                space: KeySpace::State,
                cluster: None,
                suffix: "10.0.0.0/8"
            }
        );
        let p = parse_key("cilium/cache/identities/v1/cluster3/id/196915").unwrap();
        assert_eq!(
            (p.resource, p.space, p.cluster, p.suffix),
            (
                Resource::Identities,
                KeySpace::Cache,
                Some("cluster3"),
                "196915"
            )
        );
        let p = parse_key("cilium/state/services/v1/cluster3/ns/svc").unwrap();
        assert_eq!((p.cluster, p.suffix), (Some("cluster3"), "ns/svc"));

        for bad in [
            "cilium/state/ip/v1/default/",
            "cilium/state/ip/v1/other/10.0.0.1",
            "cilium/state/ip/v2/default/10.0.0.1",
            "cilium/state/identities/v1/value/k8s:a=b;/10.0.0.1",
            "cilium/state/nodes/v1/cluster3",
            "cilium/state/nodes/v1/cluster3/",
            "cilium/state/unknown/v1/cluster3/x",
            "cilium/cache/identities/v1/cluster3/196915",
            "cilium/synced/cluster3/cilium/state/ip/v1",
            "cilium/cluster-config/cluster3",
            "other/state/ip/v1/default/10.0.0.1",
        ] {
            assert!(
                matches!(parse_key(bad), Err(KeyError::NotAResourceKey { .. })),
                "{bad:?}: {:?}",
                parse_key(bad)
            );
        }
        assert!(matches!(
            parse_key("cilium/cache/nodes/v1/Bad_Name/n1"),
            Err(KeyError::InvalidCluster { .. })
        ));
    }

    #[test]
    fn cache_roots_hold_every_clusters_cache_keys() {
        let others = ClusterName::new("cluster30").unwrap();
        for r in Resource::ALL {
            let root = r.cache_root();
            assert_eq!(root, format!("{}/", r.cache_base_prefix()), "{r}");
            for c in [c3(), others.clone()] {
                let key = r.cache_key(&c, "x");
                assert!(key.starts_with(&root), "{key} under {root}");
                let parsed = parse_key(&key).unwrap();
                assert_eq!(
                    (parsed.resource, parsed.space, parsed.cluster),
                    (r, KeySpace::Cache, Some(c.as_str()))
                );
            }
            // The state key of the same resource is not under the cache root.
            assert!(!r.source_key(&c3(), "x").starts_with(&root), "{r}");
        }
        assert_eq!(Resource::Endpoints.cache_root(), "cilium/cache/ip/v1/");
        assert_eq!(Resource::Nodes.cache_root(), "cilium/cache/nodes/v1/");
    }

    #[test]
    fn cluster_config_keys_map_both_ways() {
        let c = c3();
        assert_eq!(cluster_config_root(), "cilium/cluster-config/");
        assert!(cluster_config_key(&c).starts_with(&cluster_config_root()));
        assert_eq!(parse_cluster_config_key(&cluster_config_key(&c)), Ok(c));
        for bad in [
            "cilium/cluster-config/",
            "cilium/cluster-config",
            "cilium/cluster-config/cluster3/extra",
            "cilium/cluster-configs/cluster3",
            "cilium/cache/nodes/v1/cluster3/n1",
        ] {
            assert!(
                matches!(
                    parse_cluster_config_key(bad),
                    Err(KeyError::NotAResourceKey { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_cluster_config_key("cilium/cluster-config/Bad_Name"),
            Err(KeyError::InvalidCluster { .. })
        ));
    }

    #[test]
    fn mapping_refuses_foreign_keys() {
        let c = c3();
        assert_eq!(
            source_to_cache_key("cilium/state/nodes/v1/cluster4/n1", &c),
            Err(KeyError::ClusterMismatch {
                key: "cilium/state/nodes/v1/cluster4/n1".into(),
                expected: "cluster3".into(),
                found: "cluster4".into(),
            })
        );
        assert!(source_to_cache_key("cilium/cache/ip/v1/cluster3/10.0.0.1", &c).is_err());
        assert!(cache_to_source_key("cilium/state/ip/v1/default/10.0.0.1").is_err());

        let nodes = ResourcePrefixes::new(Resource::Nodes, &c);
        // A node of cluster30 must not be mistaken for one of cluster3.
        assert!(matches!(
            nodes.to_cache("cilium/state/nodes/v1/cluster30/n1"),
            Err(KeyError::OutsidePrefix { .. })
        ));
        assert!(nodes.to_source("cilium/cache/nodes/v1/cluster3/").is_err());
    }
}
