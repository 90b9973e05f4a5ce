//! `region-pairs`: mirror regional endpoints of disaster-recovery partner regions.
//!
//! A `regional` endpoint normally stays in its region. With `region-pairs` in front of
//! `cfp-scope` on the import chain, a cluster also keeps the regional endpoints of its
//! partner regions, so a failover target already knows the pods it will take over. Every
//! other import is left to the next filter.
//!
//! ```json
//! {"pairs": [["eu-west-1", "eu-central-1"], ["us-east-1", "us-west-2"]]}
//! ```
//!
//! Pairs work both ways, and a region may have several partners.

use meshfilter_guest_sdk::{
    Config, Endpoint, Filter, ImportDecision, Region, Scope, export_filter, local,
};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    pairs: Vec<Vec<String>>,
}

/// The configured filter: each region's partners.
#[derive(Debug)]
pub struct RegionPairs {
    partners: BTreeMap<String, BTreeSet<String>>,
}

impl RegionPairs {
    /// Whether `a` and `b` are partners.
    fn paired(&self, a: &str, b: &str) -> bool {
        self.partners.get(a).is_some_and(|p| p.contains(b))
    }
}

/// Checks a region name: a `topology.kubernetes.io/region` label value that a scope's
/// region list could also name (the SDK's [`Region::is_scope_listable`]), so a pair reads
/// like the scopes next to it.
fn check_region(at: &str, region: &str) -> Result<(), String> {
    match Region::new(region) {
        Ok(r) if r.is_scope_listable() => Ok(()),
        _ => Err(format!(
            "{at}: {region:?} is not a region name (lowercase letters, digits and '-')"
        )),
    }
}

impl Filter for RegionPairs {
    fn configure(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let mut partners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (i, pair) in settings.pairs.into_iter().enumerate() {
            let Ok([a, b]) = <[String; 2]>::try_from(pair) else {
                return Err(format!("pairs[{i}]: a pair is exactly two regions"));
            };
            check_region(&format!("pairs[{i}][0]"), &a)?;
            check_region(&format!("pairs[{i}][1]"), &b)?;
            if a == b {
                return Err(format!("pairs[{i}]: {a:?} cannot be its own partner"));
            }
            partners.entry(a.clone()).or_default().insert(b.clone());
            partners.entry(b).or_default().insert(a);
        }
        Ok(RegionPairs { partners })
    }

    fn import(&self, endpoint: &Endpoint) -> ImportDecision {
        if !matches!(
            Scope::parse(endpoint.sync_scope().as_deref()),
            Ok(Scope::Region)
        ) {
            return ImportDecision::Abstain;
        }
        let Some(here) = local().region.filter(|r| self.partners.contains_key(r)) else {
            return ImportDecision::Abstain;
        };
        match endpoint.origin().region {
            Some(theirs) if self.paired(&here, &theirs) => ImportDecision::keep(format!(
                "DR partner: regional endpoint from {theirs}, paired with {here}"
            )),
            _ => ImportDecision::Abstain,
        }
    }
}

export_filter!(RegionPairs);

#[cfg(test)]
mod tests {
    use super::*;
    use meshfilter_guest_sdk::{Locality, testing};

    const PAIRS: &str = r#"{"pairs": [["eu-west-1", "eu-central-1"], ["us-east-1", "us-west-2"], ["eu-west-1", "eu-north-1"]]}"#;

    #[test]
    fn keeps_regional_endpoints_of_partners_only() {
        let filter: RegionPairs = testing::load(PAIRS).unwrap();
        let keep = |from: &str, here: &str| {
            ImportDecision::keep(format!(
                "DR partner: regional endpoint from {from}, paired with {here}"
            ))
        };
        // (name, local region, SyncScope, origin region, want)
        let cases = [
            (
                "partner",
                Some("eu-west-1"),
                Some("regional"),
                Some("eu-central-1"),
                keep("eu-central-1", "eu-west-1"),
            ),
            (
                "pairs work both ways",
                Some("eu-central-1"),
                Some("region"),
                Some("eu-west-1"),
                keep("eu-west-1", "eu-central-1"),
            ),
            (
                "second partner",
                Some("eu-west-1"),
                Some("regional"),
                Some("eu-north-1"),
                keep("eu-north-1", "eu-west-1"),
            ),
            (
                "partners are not transitive",
                Some("eu-central-1"),
                Some("regional"),
                Some("eu-north-1"),
                ImportDecision::Abstain,
            ),
            (
                "not a partner",
                Some("eu-west-1"),
                Some("regional"),
                Some("us-east-1"),
                ImportDecision::Abstain,
            ),
            (
                "same region is cfp-scope's call",
                Some("eu-west-1"),
                Some("regional"),
                Some("eu-west-1"),
                ImportDecision::Abstain,
            ),
            (
                "global",
                Some("eu-west-1"),
                None,
                Some("eu-central-1"),
                ImportDecision::Abstain,
            ),
            (
                "zone",
                Some("eu-west-1"),
                Some("zone"),
                Some("eu-central-1"),
                ImportDecision::Abstain,
            ),
            (
                "region list",
                Some("eu-west-1"),
                Some("eu-central-1"),
                Some("eu-central-1"),
                ImportDecision::Abstain,
            ),
            (
                "unparsable",
                Some("eu-west-1"),
                Some("Regional"),
                Some("eu-central-1"),
                ImportDecision::Abstain,
            ),
            (
                "local region unknown",
                None,
                Some("regional"),
                Some("eu-central-1"),
                ImportDecision::Abstain,
            ),
            (
                "origin region unknown",
                Some("eu-west-1"),
                Some("regional"),
                None,
                ImportDecision::Abstain,
            ),
            (
                "unpaired local region",
                Some("ap-south-1"),
                Some("regional"),
                Some("eu-west-1"),
                ImportDecision::Abstain,
            ),
        ];
        let with_region = |cluster: &str, region: Option<&str>| match region {
            Some(r) => Locality::new(cluster).with_region(r),
            None => Locality::new(cluster),
        };
        for (name, here, scope, from, want) in cases {
            testing::set_local(with_region("here", here));
            let mut endpoint = Endpoint::builder().origin(with_region("there", from));
            if let Some(scope) = scope {
                endpoint = endpoint.sync_scope(scope);
            }
            assert_eq!(filter.import(&endpoint.build()), want, "{name}");
        }
    }

    #[test]
    fn reads_origin_only_where_a_partner_could_match() {
        let filter: RegionPairs = testing::load(PAIRS).unwrap();
        testing::set_local(Locality::new("here").with_region("ap-south-1"));
        let endpoint = Endpoint::builder().sync_scope("regional").build();
        filter.import(&endpoint);
        assert_eq!(endpoint.reads(), ["sync_scope()"]);
        testing::set_local(Locality::new("here").with_region("eu-west-1"));
        let endpoint = Endpoint::builder().sync_scope("regional").build();
        filter.import(&endpoint);
        assert_eq!(endpoint.reads(), ["sync_scope()", "origin()"]);
    }

    #[test]
    fn other_hooks_abstain() {
        let filter: RegionPairs = testing::load(PAIRS).unwrap();
        let endpoint = Endpoint::builder()
            .label("clustermesh.cilium.io/sync", "true")
            .build();
        assert_eq!(
            filter.export(&endpoint),
            meshfilter_guest_sdk::ExportDecision::Abstain
        );
        let request = meshfilter_guest_sdk::MissRequest::builder().build();
        assert_eq!(
            filter.miss(&request),
            meshfilter_guest_sdk::MissDecision::Abstain
        );
    }

    #[test]
    fn bad_config_names_the_field() {
        let cases = [
            (
                r#"{"pairs": [["eu-west-1", "eu-west-1"]]}"#,
                r#"pairs[0]: "eu-west-1" cannot be its own partner"#,
            ),
            (
                r#"{"pairs": [["eu-west-1", "eu-central-1"], ["EU", "x"]]}"#,
                r#"pairs[1][0]: "EU" is not a region name"#,
            ),
            (
                r#"{"pairs": [["a", ""]]}"#,
                r#"pairs[0][1]: "" is not a region name"#,
            ),
            (
                r#"{"pairs": [["a", "b,c"]]}"#,
                r#"pairs[0][1]: "b,c" is not a region name"#,
            ),
            (
                r#"{"pairs": [["a", "global"]]}"#,
                r#"pairs[0][1]: "global" is not a region name"#,
            ),
            (
                r#"{"pairs": [["a", "b", "c"]]}"#,
                "pairs[0]: a pair is exactly two regions",
            ),
            (
                r#"{"pairs": [["a"]]}"#,
                "pairs[0]: a pair is exactly two regions",
            ),
            (
                r#"{"pair": []}"#,
                "invalid config at pair: unknown field `pair`",
            ),
        ];
        for (config, want) in cases {
            testing::assert_rejects::<RegionPairs>(config, want);
        }
        assert!(
            testing::load::<RegionPairs>("null").is_ok(),
            "no pairs is valid: the filter always abstains"
        );
    }
}
