//! Security identities: the label string stored under `cilium/state/identities/v1/id/<id>`
//! and the numeric identity ranges that tie an identity to its cluster.
//!
//! The value is `labels.Map2Labels(security-labels).SortedList()`
//! (`clustermesh-apiserver/clustermesh/converters.go`): `source:key=value;` per label,
//! sorted by key, each ending in `;` (mirrors `pkg/labels` `SortedList`,
//! `NewLabelsFromSortedList`, `ParseLabel`). Ranges mirror `pkg/identity`
//! `GetMinimalAllocationIdentity` / `GetMaximumAllocationIdentity`.

use std::collections::BTreeMap;
use std::fmt;

use meshfilter_contract::labels::IDENTITY_NAMESPACE;

use crate::keys::ClusterName;
use crate::value::{KvstoreValue, ValueError, check_len};

/// Label source of Kubernetes labels (`LabelSourceK8s`).
pub const SOURCE_K8S: &str = "k8s";
/// Label source of Cilium's reserved labels (`LabelSourceReserved`).
pub const SOURCE_RESERVED: &str = "reserved";
/// Source given to a label written without one (`LabelSourceUnspec`).
pub const SOURCE_UNSPEC: &str = "unspec";
/// Key prefix that marks a reserved label written without a source
/// (`LabelSourceReservedKeyPrefix`).
const RESERVED_KEY_PREFIX: &str = "reserved.";

/// Lowest identity allocated to workloads; everything below is reserved (well-known and
/// user-reserved identities) and valid in every cluster (`MinimalNumericIdentity`).
pub const MIN_NUMERIC_IDENTITY: u32 = 256;
/// Clusters a mesh supports unless configured otherwise (`defaults.MaxConnectedClusters`).
pub const DEFAULT_MAX_CONNECTED_CLUSTERS: u32 = 255;
/// Bits of a numeric identity (`identitynumeric.Bitlength`).
pub const IDENTITY_BITS: u32 = 24;

/// How far the cluster ID is shifted inside a numeric identity: 16 for 255 clusters, 15
/// for 511 (`GetClusterIDShift`). 0 means the default, 255.
pub fn cluster_id_shift(max_connected_clusters: u32) -> u32 {
    let max = match max_connected_clusters {
        0 => DEFAULT_MAX_CONNECTED_CLUSTERS,
        n => n,
    };
    // Go: uint32(math.Log2(float64(max + 1))), i.e. the floor of the logarithm.
    let cluster_bits = (u64::from(max) + 1).ilog2();
    IDENTITY_BITS.saturating_sub(cluster_bits)
}

/// Whether numeric identity `id` may come from cluster `cluster_id` in a mesh of
/// `max_connected_clusters` (255 or 511; 0 means 255): inside
/// `[cluster_id << shift, ((cluster_id + 1) << shift) - 1]`, or below
/// [`MIN_NUMERIC_IDENTITY`] (reserved identities are not scoped by cluster). Mirrors the
/// agent's `ipcache.WithIdentityValidator`, which drops entries failing it.
pub fn identity_in_cluster_range(id: u32, cluster_id: u32, max_connected_clusters: u32) -> bool {
    if id < MIN_NUMERIC_IDENTITY {
        return true;
    }
    let shift = cluster_id_shift(max_connected_clusters);
    let (id, cluster_id) = (u64::from(id), u64::from(cluster_id));
    let min = cluster_id << shift;
    let max = ((cluster_id + 1) << shift) - 1;
    (min..=max).contains(&id)
}

/// Reads the numeric identity from an identity key suffix (the part after
/// `cilium/state/identities/v1/id/` or `cilium/cache/identities/v1/<cluster>/id/`), as
/// `strconv.ParseUint(s, 10, 32)` does.
pub fn parse_numeric_identity(cluster: &ClusterName, key_suffix: &str) -> Result<u32, ValueError> {
    let invalid = || ValueError::InvalidIdentityKey {
        cluster: cluster.to_string(),
        key: key_suffix.to_owned(),
    };
    if key_suffix.is_empty() || !key_suffix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    key_suffix.parse().map_err(|_| invalid())
}

/// One security label (mirrors `pkg/labels` `Label`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    /// Where the label comes from: `k8s`, `reserved`, `cidr`, `unspec`, ...
    pub source: String,
    /// The label key, e.g. `app` or `io.kubernetes.pod.namespace`.
    pub key: String,
    /// The value, possibly empty.
    pub value: String,
}

impl Label {
    /// A label from its parts.
    pub fn new(
        source: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        Label {
            source: source.into(),
            key: key.into(),
            value: value.into(),
        }
    }

    /// Parses `source:key=value` as `labels.ParseLabel` does: a leading `$` means
    /// `reserved`, a missing source is `unspec` (or `reserved` for a `reserved.` key), the
    /// value is everything after the first `=`.
    pub fn parse(text: &str) -> Label {
        let (source, rest) = if let Some(rest) = text.strip_prefix('$') {
            (SOURCE_RESERVED, rest)
        } else if let Some((source, rest)) = text.split_once(':') {
            (
                if source.is_empty() {
                    SOURCE_UNSPEC
                } else {
                    source
                },
                rest,
            )
        } else if let Some(rest) = text.strip_prefix(RESERVED_KEY_PREFIX) {
            (SOURCE_RESERVED, rest)
        } else {
            (SOURCE_UNSPEC, text)
        };
        let (key, value) = match rest.split_once('=') {
            // `reserved:=host` names the key after the `=`.
            Some(("", key)) if source == SOURCE_RESERVED => (key, ""),
            Some((key, value)) => (key, value),
            None => (rest, ""),
        };
        Label::new(source, key, value)
    }
}

impl fmt::Display for Label {
    /// `source:key=value`, the kvstore form without the trailing `;`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}={}", self.source, self.key, self.value)
    }
}

/// The labels of one identity, unique by key and sorted by key: the value stored under an
/// identity key (mirrors `pkg/labels` `Labels` as written by `SortedList`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityLabels {
    labels: Vec<Label>,
}

impl IdentityLabels {
    /// Builds the set Go's `Labels` map would hold: empty keys dropped, the last label of
    /// a key kept, sorted by key.
    pub fn from_labels(labels: impl IntoIterator<Item = Label>) -> Self {
        let by_key: BTreeMap<String, Label> = labels
            .into_iter()
            .filter(|l| !l.key.is_empty())
            .map(|l| (l.key.clone(), l))
            .collect();
        IdentityLabels {
            labels: by_key.into_values().collect(),
        }
    }

    /// Reads a `source:key=value;...` list (`NewLabelsFromSortedList`): tolerant like
    /// Cilium, so a missing trailing `;`, unsorted input or a label without source is
    /// accepted.
    pub fn from_sorted_list(text: &str) -> Self {
        Self::from_labels(text.split(';').filter(|s| !s.is_empty()).map(Label::parse))
    }

    /// The labels, sorted by key.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The label with `key`, whatever its source.
    pub fn get(&self, key: &str) -> Option<&Label> {
        self.labels
            .binary_search_by(|l| l.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.labels[i])
    }

    /// The kvstore value: `source:key=value;` per label, sorted by key (`SortedList`).
    pub fn to_sorted_list(&self) -> String {
        self.to_string()
    }

    /// The `k8s`-source labels as key → value: the pod's labels plus the ones Cilium adds
    /// (`io.kubernetes.pod.namespace`, `io.cilium.k8s.policy.cluster`,
    /// `io.cilium.k8s.policy.serviceaccount`, `io.cilium.k8s.namespace.labels.*`).
    pub fn k8s_labels(&self) -> BTreeMap<&str, &str> {
        self.labels
            .iter()
            .filter(|l| l.source == SOURCE_K8S)
            .map(|l| (l.key.as_str(), l.value.as_str()))
            .collect()
    }

    /// The pod namespace (`k8s:io.kubernetes.pod.namespace`), which the namespace filter
    /// keys on.
    pub fn namespace(&self) -> Option<&str> {
        self.get(IDENTITY_NAMESPACE)
            .filter(|l| l.source == SOURCE_K8S)
            .map(|l| l.value.as_str())
    }
}

/// `key` is only named in errors; [`parse_numeric_identity`] reads the identity from it.
/// Non-UTF-8 text is refused; the label list is read as tolerantly as
/// [`IdentityLabels::from_sorted_list`] does.
impl KvstoreValue for IdentityLabels {
    fn parse_with_limit(
        cluster: &ClusterName,
        key: &str,
        value: &[u8],
        max_len: usize,
    ) -> Result<Self, ValueError> {
        check_len(cluster, key, value, max_len)?;
        let text = std::str::from_utf8(value).map_err(|_| ValueError::NotUtf8 {
            cluster: cluster.to_string(),
            key: key.to_owned(),
            kind: "identity",
        })?;
        Ok(Self::from_sorted_list(text))
    }
}

impl fmt::Display for IdentityLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for label in &self.labels {
            write!(f, "{label};")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::parse_key;
    use crate::testdata;
    use crate::value::DEFAULT_MAX_VALUE_LEN;

    fn c3() -> ClusterName {
        ClusterName::new("cluster3").unwrap()
    }

    #[test]
    fn cilium_sample_round_trips() {
        let misc: serde_json::Value = serde_json::from_str(testdata::MISC).unwrap();
        let key = misc["identity"]["key"].as_str().unwrap();
        let value = misc["identity"]["value"].as_str().unwrap();
        let suffix = parse_key(key).unwrap().suffix;
        assert_eq!(parse_numeric_identity(&c3(), suffix).unwrap(), 196915);
        assert!(identity_in_cluster_range(196915, 3, 255));

        let labels = IdentityLabels::parse(&c3(), key, value.as_bytes()).unwrap();
        assert_eq!(labels.to_sorted_list(), value);
        assert_eq!(labels.labels().len(), 3);
        assert_eq!(labels.labels()[0], Label::new("k8s", "app", "baz"));
        assert_eq!(labels.namespace(), Some("bar"));
        let k8s = labels.k8s_labels();
        assert_eq!(
            k8s.into_iter().collect::<Vec<_>>(),
            [
                ("app", "baz"),
                ("io.cilium.k8s.policy.cluster", "cluster3"),
                ("io.kubernetes.pod.namespace", "bar")
            ]
        );
    }

    #[test]
    fn formats_sorted_by_key_with_trailing_semicolons() {
        let labels = IdentityLabels::from_labels([
            Label::new("k8s", "zone", "a"),
            Label::new("reserved", "host", ""),
            Label::new("k8s", "app", "x"),
            Label::new("k8s", "", "dropped"),
            Label::new("container", "zone", "b"),
        ]);
        assert_eq!(
            labels.to_sorted_list(),
            "k8s:app=x;reserved:host=;container:zone=b;"
        );
        assert_eq!(
            labels.get("zone").map(|l| l.source.as_str()),
            Some("container")
        );
        assert_eq!(labels.get("missing"), None);
        assert!(IdentityLabels::from_sorted_list("").is_empty());
    }

    #[test]
    fn parses_like_cilium() {
        // (text, source, key, value)
        let cases = [
            ("k8s:app=baz", "k8s", "app", "baz"),
            ("k8s:a=b=c", "k8s", "a", "b=c"),
            ("reserved:host=", "reserved", "host", ""),
            ("reserved:host", "reserved", "host", ""),
            ("reserved:=host", "reserved", "host", ""),
            ("$host", "reserved", "host", ""),
            ("reserved.host", "reserved", "host", ""),
            ("app=baz", "unspec", "app", "baz"),
            (":app=baz", "unspec", "app", "baz"),
            ("cidr:fd00::/64=", "cidr", "fd00::/64", ""),
        ];
        for (text, source, key, value) in cases {
            assert_eq!(Label::parse(text), Label::new(source, key, value), "{text}");
        }
        // Tolerant of a missing trailing `;` and of order; namespace only from `k8s`.
        let labels =
            IdentityLabels::from_sorted_list("k8s:b=2;container:io.kubernetes.pod.namespace=x");
        assert_eq!(
            labels.to_sorted_list(),
            "k8s:b=2;container:io.kubernetes.pod.namespace=x;"
        );
        assert_eq!(labels.namespace(), None);
        assert_eq!(labels.k8s_labels().len(), 1);
    }

    #[test]
    fn refuses_non_utf8_and_oversized_values() {
        let c = c3();
        let err = IdentityLabels::parse(&c, "196915", b"k8s:a=\xff;").unwrap_err();
        assert!(matches!(&err, ValueError::NotUtf8 { cluster, key, .. }
            if cluster == "cluster3" && key == "196915"));
        let big = "k8s:a=b;".repeat(DEFAULT_MAX_VALUE_LEN / 8 + 1);
        assert!(matches!(
            IdentityLabels::parse(&c, "196915", big.as_bytes()),
            Err(ValueError::TooLarge { .. })
        ));
    }

    #[test]
    fn numeric_identity_keys() {
        let c = c3();
        assert_eq!(parse_numeric_identity(&c, "0196915").unwrap(), 196915);
        for bad in ["", "+1", "-1", "1a", "4294967296", " 1"] {
            assert!(
                matches!(
                    parse_numeric_identity(&c, bad),
                    Err(ValueError::InvalidIdentityKey { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cluster_ranges_follow_max_connected_clusters() {
        assert_eq!(cluster_id_shift(255), 16);
        assert_eq!(cluster_id_shift(0), 16);
        assert_eq!(cluster_id_shift(511), 15);
        // (id, cluster, max clusters, in range)
        let cases = [
            (3 << 16, 3, 255, true),
            ((4 << 16) - 1, 3, 255, true),
            (4 << 16, 3, 255, false),
            ((3 << 16) - 1, 3, 255, false),
            (3 << 15, 3, 511, true),
            ((4 << 15) - 1, 3, 511, true),
            (4 << 15, 3, 511, false),
            (3 << 16, 3, 511, false),
            (1, 3, 255, true),
            (255, 7, 511, true),
            (256, 0, 255, true),
            (65535, 0, 255, true),
            (65536, 0, 255, false),
            ((255 << 16) | 0xffff, 255, 255, true),
            (u32::MAX, 255, 255, false),
            ((511 << 15) | 0x7fff, 511, 511, true),
        ];
        for (id, cluster, max, want) in cases {
            assert_eq!(
                identity_in_cluster_range(id, cluster, max),
                want,
                "{id} {cluster} {max}"
            );
        }
    }
}
