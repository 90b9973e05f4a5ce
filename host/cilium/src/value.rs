//! What every kvstore value kind shares: one parse entry point with a size limit, and one
//! error type, so a reflector handles endpoints, identities, nodes and cluster configs
//! alike (Cilium's equivalent is `store.Key.Unmarshal(key, data)`).

use crate::keys::ClusterName;

/// Largest value the parsers accept unless told otherwise: 64 KiB.
///
/// Cilium writes endpoint values of a few hundred bytes and node values of a few KiB; a
/// remote cluster that writes far more is broken or hostile, and parsing it would cost
/// memory on every consumer.
pub const DEFAULT_MAX_VALUE_LEN: usize = 64 * 1024;

/// A value Cilium stores in the kvstore, parsed as Cilium's readers would parse it.
pub trait KvstoreValue: Sized {
    /// Parses `value`, stored under `key` and read from `cluster`, refusing it unparsed if
    /// it is over `max_len` bytes. What `key` must be is the implementor's to say (most
    /// take the key suffix after the resource prefix); errors name it as given.
    fn parse_with_limit(
        cluster: &ClusterName,
        key: &str,
        value: &[u8],
        max_len: usize,
    ) -> Result<Self, ValueError>;

    /// [`parse_with_limit`](Self::parse_with_limit) with [`DEFAULT_MAX_VALUE_LEN`].
    fn parse(cluster: &ClusterName, key: &str, value: &[u8]) -> Result<Self, ValueError> {
        Self::parse_with_limit(cluster, key, value, DEFAULT_MAX_VALUE_LEN)
    }
}

/// A kvstore value that cannot be used. Every variant names the cluster the value came
/// from and its key as the caller gave it (for parsers taking a key suffix, the part after
/// the resource prefix, e.g. `10.244.1.79` or `test-node-1`).
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// The value is larger than the configured limit; it was not parsed.
    #[error("cluster {cluster}, key {key}: value is {len} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Source cluster.
        cluster: String,
        /// Key, as given to the parser.
        key: String,
        /// Size of the value.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The value is not valid JSON for the expected type (this includes an invalid IP
    /// address, mask or field type).
    #[error("cluster {cluster}, key {key}: malformed {kind} value: {error}")]
    Json {
        /// Source cluster.
        cluster: String,
        /// Key, as given to the parser.
        key: String,
        /// What was expected, e.g. `ipcache entry`.
        kind: &'static str,
        /// The JSON error, with line and column.
        error: serde_json::Error,
    },
    /// An identity value is not UTF-8 text.
    #[error("cluster {cluster}, key {key}: {kind} value is not UTF-8")]
    NotUtf8 {
        /// Source cluster.
        cluster: String,
        /// Key, as given to the parser.
        key: String,
        /// What was expected.
        kind: &'static str,
    },
    /// An ipcache value whose IP (and mask) does not reproduce its key; Cilium's reader
    /// refuses it with "IP address does not match key".
    #[error(
        "cluster {cluster}, key {key}: IP address does not match key (value is for {value_prefix})"
    )]
    IpKeyMismatch {
        /// Source cluster.
        cluster: String,
        /// Key suffix, as given to the parser.
        key: String,
        /// What the value's IP and mask print as (`PrefixString()`).
        value_prefix: String,
    },
    /// A node value whose `Name` is not its key (Cilium's `NameValidator`).
    #[error("cluster {cluster}, key {key}: node name {name:?} does not match key")]
    NodeNameMismatch {
        /// Source cluster.
        cluster: String,
        /// Key suffix, as given to the parser.
        key: String,
        /// The `Name` field of the value.
        name: String,
    },
    /// A node value whose `Cluster` is not the cluster it was read from (Cilium's
    /// `ClusterNameValidator`).
    #[error("cluster {cluster}, key {key}: node claims cluster {node_cluster:?}")]
    NodeClusterMismatch {
        /// Source cluster.
        cluster: String,
        /// Key suffix, as given to the parser.
        key: String,
        /// The `Cluster` field of the value.
        node_cluster: String,
    },
    /// An identity key whose suffix is not a decimal numeric identity.
    #[error("cluster {cluster}, key {key}: not a numeric identity")]
    InvalidIdentityKey {
        /// Source cluster.
        cluster: String,
        /// Key suffix, as given to the parser.
        key: String,
    },
}

/// Refuses `value` before any parsing if it is over `limit` bytes.
pub(crate) fn check_len(
    cluster: &ClusterName,
    key: &str,
    value: &[u8],
    limit: usize,
) -> Result<(), ValueError> {
    if value.len() > limit {
        return Err(ValueError::TooLarge {
            cluster: cluster.to_string(),
            key: key.to_owned(),
            len: value.len(),
            limit,
        });
    }
    Ok(())
}

/// Parses a JSON value of type `T` after the size check, naming cluster and key on error.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    cluster: &ClusterName,
    key: &str,
    value: &[u8],
    limit: usize,
    kind: &'static str,
) -> Result<T, ValueError> {
    check_len(cluster, key, value, limit)?;
    serde_json::from_slice(value).map_err(|error| ValueError::Json {
        cluster: cluster.to_string(),
        key: key.to_owned(),
        kind,
        error,
    })
}
