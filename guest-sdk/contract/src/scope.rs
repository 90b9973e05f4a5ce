//! The sync scope: how far an exported endpoint travels.
//!
//! One grammar serves the pod annotation `clustermesh.cilium.io/sync-scope` and the
//! `SyncScope` field of the ipcache entry in etcd, so what a source writes is exactly what
//! a consumer parses. The CFP-44921 values `regional` and `global` keep their meaning
//! (absent or empty = global); meshfilter adds `cluster`, `zone`, `region` and a
//! comma-separated list of region names.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// How far an endpoint may travel from its own cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SyncScope {
    /// Never leaves its own cluster.
    Cluster,
    /// Clusters in the endpoint's zone.
    Zone,
    /// Clusters in the endpoint's region (CFP `regional`).
    Region,
    /// Every cluster (CFP `global`, Cilium's behaviour without filters).
    Global,
    /// Clusters in the endpoint's own region or in one of these regions.
    Regions(Vec<String>),
}

/// Why a scope value was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeError {
    /// A list item was empty, as in `eu-west-1,,us-east-1`.
    EmptyListItem {
        /// The whole value.
        value: String,
    },
    /// A list item is not a valid region name.
    InvalidRegionName {
        /// The offending item.
        name: String,
    },
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeError::EmptyListItem { value } => {
                write!(f, "scope {value:?} has an empty item in its region list")
            }
            ScopeError::InvalidRegionName { name } => write!(
                f,
                "scope item {name:?} is neither cluster, zone, region, regional, global nor a region name \
                 (lowercase letters, digits and '-', at most 63 characters)"
            ),
        }
    }
}

impl core::error::Error for ScopeError {}

/// Spelling written for [`SyncScope::Region`]: the CFP's, so its consumers understand it.
pub const REGIONAL: &str = "regional";

impl SyncScope {
    /// Parses an annotation or `SyncScope` field value. Absent or blank means global, as in
    /// the CFP. Keywords are matched exactly after trimming white space.
    pub fn parse(value: Option<&str>) -> Result<SyncScope, ScopeError> {
        let value = value.map(str::trim).unwrap_or("");
        match value {
            "" | "global" => Ok(SyncScope::Global),
            "regional" | "region" => Ok(SyncScope::Region),
            "zone" => Ok(SyncScope::Zone),
            "cluster" => Ok(SyncScope::Cluster),
            list => {
                let mut regions = Vec::new();
                for item in list.split(',').map(str::trim) {
                    if item.is_empty() {
                        return Err(ScopeError::EmptyListItem {
                            value: list.to_string(),
                        });
                    }
                    if !is_region_name(item) {
                        return Err(ScopeError::InvalidRegionName {
                            name: item.to_string(),
                        });
                    }
                    if !regions.iter().any(|r: &String| r == item) {
                        regions.push(item.to_string());
                    }
                }
                Ok(SyncScope::Regions(regions))
            }
        }
    }

    /// The value written into the `SyncScope` field; [`SyncScope::parse`] reads it back.
    pub fn to_field_value(&self) -> String {
        match self {
            SyncScope::Cluster => "cluster".to_string(),
            SyncScope::Zone => "zone".to_string(),
            SyncScope::Region => REGIONAL.to_string(),
            SyncScope::Global => "global".to_string(),
            SyncScope::Regions(regions) => regions.join(","),
        }
    }

    /// Whether an endpoint from `origin` with this scope belongs in a cluster at `local`.
    ///
    /// Unknown localities fail open (the entry is kept), as the CFP's regional filter does:
    /// a missing topology label must not cut connectivity.
    pub fn admits(&self, origin: Locality<'_>, local: Locality<'_>) -> bool {
        match self {
            SyncScope::Global => true,
            SyncScope::Cluster => origin.cluster == local.cluster,
            SyncScope::Zone => {
                origin.cluster == local.cluster || same_or_unknown(origin.zone, local.zone)
            }
            SyncScope::Region => {
                origin.cluster == local.cluster || same_or_unknown(origin.region, local.region)
            }
            SyncScope::Regions(regions) => {
                origin.cluster == local.cluster
                    || same_or_unknown(origin.region, local.region)
                    || local.region.is_none_or(|l| regions.iter().any(|r| r == l))
            }
        }
    }
}

impl fmt::Display for SyncScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_field_value())
    }
}

/// A borrowed cluster locality, for [`SyncScope::admits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locality<'a> {
    /// Cluster name.
    pub cluster: &'a str,
    /// Zone, when known.
    pub zone: Option<&'a str>,
    /// Region, when known.
    pub region: Option<&'a str>,
}

fn same_or_unknown(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// Region names as cloud providers spell them: a DNS label.
fn is_region_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn loc<'a>(cluster: &'a str, zone: Option<&'a str>, region: Option<&'a str>) -> Locality<'a> {
        Locality {
            cluster,
            zone,
            region,
        }
    }

    #[test]
    fn parses_cfp_and_extended_values() {
        assert_eq!(SyncScope::parse(None), Ok(SyncScope::Global));
        assert_eq!(SyncScope::parse(Some("  ")), Ok(SyncScope::Global));
        assert_eq!(SyncScope::parse(Some("global")), Ok(SyncScope::Global));
        assert_eq!(SyncScope::parse(Some("regional")), Ok(SyncScope::Region));
        assert_eq!(SyncScope::parse(Some("region")), Ok(SyncScope::Region));
        assert_eq!(SyncScope::parse(Some("zone")), Ok(SyncScope::Zone));
        assert_eq!(SyncScope::parse(Some("cluster")), Ok(SyncScope::Cluster));
        assert_eq!(
            SyncScope::parse(Some("eu-west-1, us-east-1,eu-west-1")),
            Ok(SyncScope::Regions(vec![
                "eu-west-1".into(),
                "us-east-1".into()
            ]))
        );
    }

    #[test]
    fn rejects_bad_values_with_the_culprit() {
        assert_eq!(
            SyncScope::parse(Some("Global")),
            Err(ScopeError::InvalidRegionName {
                name: "Global".into()
            })
        );
        assert_eq!(
            SyncScope::parse(Some("a,,b")),
            Err(ScopeError::EmptyListItem {
                value: "a,,b".into()
            })
        );
        assert!(SyncScope::parse(Some("-eu")).is_err());
        let err = SyncScope::parse(Some("eu_west")).unwrap_err();
        assert!(alloc::format!("{err}").contains("eu_west"));
    }

    #[test]
    fn field_value_round_trips() {
        for scope in [
            SyncScope::Cluster,
            SyncScope::Zone,
            SyncScope::Region,
            SyncScope::Global,
            SyncScope::Regions(vec!["eu-west-1".into(), "ap-south-1".into()]),
        ] {
            assert_eq!(SyncScope::parse(Some(&scope.to_field_value())), Ok(scope));
        }
        assert_eq!(SyncScope::Region.to_field_value(), "regional");
    }

    #[test]
    fn admits_by_locality() {
        let eu_a = loc("c1", Some("eu-a"), Some("eu"));
        let eu_b = loc("c2", Some("eu-b"), Some("eu"));
        let us = loc("c3", Some("us-a"), Some("us"));
        let unknown = loc("c4", None, None);
        assert!(SyncScope::Global.admits(eu_a, us));
        assert!(!SyncScope::Cluster.admits(eu_a, eu_b));
        assert!(SyncScope::Cluster.admits(eu_a, loc("c1", None, None)));
        assert!(!SyncScope::Zone.admits(eu_a, eu_b));
        assert!(SyncScope::Region.admits(eu_a, eu_b));
        assert!(!SyncScope::Region.admits(eu_a, us));
        assert!(
            SyncScope::Region.admits(eu_a, unknown),
            "unknown region fails open"
        );
        let pair = SyncScope::Regions(vec!["us".into()]);
        assert!(pair.admits(eu_a, us));
        assert!(pair.admits(eu_a, eu_b), "own region always admitted");
        assert!(!pair.admits(eu_a, loc("c5", None, Some("ap"))));
    }
}
