//! `namespace-allowlist`: per-team export lists.
//!
//! Each team lists namespaces (names, or globs where `*` is any run of characters and `?`
//! one; the SDK's [`NamespaceSet`], so a name no namespace can have is an error), an optional
//! label selector and the scope its pods travel with. On export the first team whose
//! pattern and selector match the pod decides: its pods sync with the team's scope (a
//! `cluster` scope keeps them home). A pod no team claims is left to the next filter
//! (`"otherwise": "abstain"`, the default) or skipped (`"otherwise": "skip"`).
//!
//! ```json
//! {"teams": [{"name": "payments", "namespaces": ["payments", "billing-*"],
//!             "selector": "tier in (api,gateway)", "scope": "global"}],
//!  "otherwise": "abstain"}
//! ```
//!
//! The selector takes the `kubectl -l` string or the Kubernetes `matchLabels` /
//! `matchExpressions` object.

use meshfilter_guest_sdk::{
    Config, Endpoint, ExportDecision, Filter, LabelSelector, NamespaceSet, Scope, export_filter,
};
use serde::Deserialize;

/// What happens to a pod that no team claims.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Otherwise {
    /// The next filter decides.
    #[default]
    Abstain,
    /// Not published.
    Skip,
}

/// The configuration as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    teams: Vec<TeamSettings>,
    #[serde(default)]
    otherwise: Otherwise,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TeamSettings {
    name: String,
    namespaces: Vec<String>,
    #[serde(default)]
    selector: LabelSelector,
    #[serde(default)]
    scope: Option<String>,
}

/// One team's export rule, validated.
#[derive(Debug)]
struct Team {
    name: String,
    namespaces: NamespaceSet,
    selector: LabelSelector,
    scope: Scope,
}

impl Team {
    /// Validates team `index` of the config; errors name the field.
    fn new(index: usize, settings: TeamSettings) -> Result<Team, String> {
        let at = |field: &str| format!("teams[{index}].{field}");
        if settings.name.trim().is_empty() {
            return Err(format!("{}: must not be empty", at("name")));
        }
        if settings.namespaces.is_empty() {
            return Err(format!(
                "{}: list at least one namespace pattern",
                at("namespaces")
            ));
        }
        let namespaces = NamespaceSet::new(&settings.namespaces).map_err(|e| {
            // The first entry that fails on its own is the one the error is about.
            let i = settings
                .namespaces
                .iter()
                .position(|p| NamespaceSet::new([p]).is_err())
                .unwrap_or_default();
            format!("{}: {e}", at(&format!("namespaces[{i}]")))
        })?;
        let scope =
            Scope::parse(settings.scope.as_deref()).map_err(|e| format!("{}: {e}", at("scope")))?;
        Ok(Team {
            name: settings.name,
            namespaces,
            selector: settings.selector,
            scope,
        })
    }

    fn decision(&self) -> ExportDecision {
        match &self.scope {
            Scope::Cluster => ExportDecision::skip(format!(
                "team {}: cluster scope, never leaves its cluster",
                self.name
            )),
            scope => ExportDecision::sync(scope.clone())
                .because(format!("team {}, scope {scope}", self.name)),
        }
    }
}

/// The configured filter.
#[derive(Debug)]
pub struct NamespaceAllowlist {
    teams: Vec<Team>,
    otherwise: Otherwise,
}

impl Filter for NamespaceAllowlist {
    fn configure(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let teams = settings
            .teams
            .into_iter()
            .enumerate()
            .map(|(i, t)| Team::new(i, t))
            .collect::<Result<_, _>>()?;
        Ok(NamespaceAllowlist {
            teams,
            otherwise: settings.otherwise,
        })
    }

    fn export(&self, endpoint: &Endpoint) -> ExportDecision {
        if self.teams.is_empty() && self.otherwise == Otherwise::Abstain {
            return ExportDecision::Abstain;
        }
        let namespace = endpoint.namespace();
        let claimed = self
            .teams
            .iter()
            .find(|team| team.namespaces.contains(&namespace) && team.selector.matches(endpoint));
        match (claimed, self.otherwise) {
            (Some(team), _) => team.decision(),
            (None, Otherwise::Abstain) => ExportDecision::Abstain,
            (None, Otherwise::Skip) => {
                ExportDecision::skip(format!("namespace {namespace}: no team exports it"))
            }
        }
    }
}

export_filter!(NamespaceAllowlist);

#[cfg(test)]
mod tests {
    use super::*;
    use meshfilter_guest_sdk::testing;

    const TEAMS: &str = r#"[
        {"name": "payments", "namespaces": ["payments", "billing-*"], "selector": "tier in (api,gateway)", "scope": "global"},
        {"name": "search", "namespaces": ["search"], "scope": "regional"},
        {"name": "ledger", "namespaces": ["ledger"], "selector": {"matchLabels": {"app": "ledger"}}, "scope": "cluster"},
        {"name": "catch-all", "namespaces": ["billing-*"], "scope": "zone"}
    ]"#;

    fn teams(otherwise: &str) -> String {
        format!(r#"{{"teams": {TEAMS}, "otherwise": "{otherwise}"}}"#)
    }

    fn load(config: &str) -> NamespaceAllowlist {
        testing::load(config).unwrap_or_else(|e| panic!("{config}: {e}"))
    }

    #[test]
    fn first_matching_team_decides() {
        let filter = load(&teams("abstain"));
        let skipping = load(&teams("skip"));
        let pod = |ns: &str, labels: &[(&str, &str)]| {
            labels
                .iter()
                .fold(Endpoint::builder().namespace(ns), |b, (k, v)| {
                    b.label(*k, *v)
                })
                .build()
        };
        let cases: Vec<(&str, Endpoint, ExportDecision)> = vec![
            (
                "exact namespace + selector",
                pod("payments", &[("tier", "api")]),
                ExportDecision::sync(Scope::Global).because("team payments, scope global"),
            ),
            (
                "prefix namespace",
                pod("billing-eu", &[("tier", "gateway")]),
                ExportDecision::sync(Scope::Global).because("team payments, scope global"),
            ),
            (
                "selector miss falls to the next team",
                pod("billing-eu", &[("tier", "db")]),
                ExportDecision::sync(Scope::Zone).because("team catch-all, scope zone"),
            ),
            (
                "selector miss, no other team",
                pod("payments", &[]),
                ExportDecision::Abstain,
            ),
            (
                "no selector",
                pod("search", &[]),
                ExportDecision::sync(Scope::Region).because("team search, scope regional"),
            ),
            (
                "cluster scope stays home",
                pod("ledger", &[("app", "ledger")]),
                ExportDecision::skip("team ledger: cluster scope, never leaves its cluster"),
            ),
            (
                "prefix is not a substring",
                pod("xbilling-eu", &[("tier", "api")]),
                ExportDecision::Abstain,
            ),
            (
                "unknown namespace",
                pod("other", &[("tier", "api")]),
                ExportDecision::Abstain,
            ),
        ];
        for (name, endpoint, want) in cases {
            assert_eq!(filter.export(&endpoint), want, "{name}");
            let want_skipping = match want {
                ExportDecision::Abstain => ExportDecision::skip(format!(
                    "namespace {}: no team exports it",
                    endpoint.namespace()
                )),
                other => other,
            };
            assert_eq!(
                skipping.export(&endpoint),
                want_skipping,
                "{name}, otherwise skip"
            );
        }
    }

    #[test]
    fn reads_the_namespace_then_only_selector_labels() {
        let filter = load(&teams("abstain"));
        let endpoint = Endpoint::builder()
            .namespace("payments")
            .label("tier", "api")
            .label("app", "x")
            .build();
        filter.export(&endpoint);
        assert_eq!(endpoint.reads(), ["namespace()", "label(tier)"]);
        let nobody = load("null");
        let endpoint = Endpoint::builder().build();
        assert_eq!(nobody.export(&endpoint), ExportDecision::Abstain);
        assert!(
            endpoint.reads().is_empty(),
            "an empty allowlist that abstains reads nothing"
        );
    }

    #[test]
    fn bad_config_names_the_field() {
        let cases = [
            (
                r#"{"teams": [{"name": " ", "namespaces": ["a"]}]}"#,
                "teams[0].name: must not be empty",
            ),
            (
                r#"{"teams": [{"name": "a", "namespaces": []}]}"#,
                "teams[0].namespaces: list at least one namespace pattern",
            ),
            (
                r#"{"teams": [{"name": "a", "namespaces": ["x", "Payments"]}]}"#,
                r#"teams[0].namespaces[1]: "Payments": 'P' cannot appear in a namespace name"#,
            ),
            (
                r#"{"teams": [{"name": "a", "namespaces": [""]}]}"#,
                "teams[0].namespaces[0]: empty glob pattern",
            ),
            (
                r#"{"teams": [{"name": "a", "namespaces": ["a"], "scope": "Global"}]}"#,
                r#"teams[0].scope: scope item "Global""#,
            ),
            (
                r#"{"teams": [{"name": "a", "namespaces": ["a"]}, {"name": "b", "namespaces": ["b"], "selector": "tier in (a"}]}"#,
                r#"invalid config at teams[1].selector: invalid label selector "tier in (a""#,
            ),
            (
                r#"{"teams": [{"name": "a", "namespace": ["a"]}]}"#,
                "invalid config at teams[0].namespace: unknown field `namespace`",
            ),
            (
                r#"{"teams": [{"name": "a", "namespaces": ["a"]}], "otherwise": "sync"}"#,
                "invalid config at otherwise: unknown variant `sync`",
            ),
        ];
        for (config, want) in cases {
            testing::assert_rejects::<NamespaceAllowlist>(config, want);
        }
    }

    #[test]
    fn star_matches_every_namespace() {
        let filter = load(r#"{"teams": [{"name": "all", "namespaces": ["*"]}]}"#);
        let endpoint = Endpoint::builder().namespace("anything").build();
        assert_eq!(
            filter.export(&endpoint),
            ExportDecision::sync(Scope::Global).because("team all, scope global")
        );
    }

    #[test]
    fn globs_match_anywhere_in_the_name() {
        let filter = load(
            r#"{"teams": [{"name": "eu", "namespaces": ["team-*-eu", "ops-?"], "scope": "regional"}], "otherwise": "skip"}"#,
        );
        for (namespace, claimed) in [
            ("team-payments-eu", true),
            ("team--eu", true),
            ("ops-1", true),
            ("team-payments-us", false),
            ("ops-12", false),
        ] {
            let endpoint = Endpoint::builder().namespace(namespace).build();
            assert_eq!(
                filter.export(&endpoint)
                    != ExportDecision::skip(format!("namespace {namespace}: no team exports it")),
                claimed,
                "{namespace}"
            );
        }
    }
}
