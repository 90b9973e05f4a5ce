//! Table-driven tests on the native harness.

use super::*;
use meshfilter_guest_sdk::{EndpointBuilder, Level, testing};

const SCOPE: &str = SYNC_SCOPE;

fn load(config: &str) -> CfpScope {
    testing::load(config).unwrap_or_else(|e| panic!("config {config}: {e}"))
}

fn pod() -> EndpointBuilder {
    Endpoint::builder().namespace("shop").pod_name("web-0")
}

/// A pod that opted in by label.
fn opted_in() -> EndpointBuilder {
    pod().label(SYNC, "true")
}

fn sync(scope: Scope, reason: &str) -> ExportDecision {
    ExportDecision::sync(scope).because(reason)
}

fn skip(reason: &str) -> ExportDecision {
    ExportDecision::skip(reason)
}

#[test]
fn export_follows_cfp_opt_in() {
    let label_in = "label clustermesh.cilium.io/sync=true";
    let cases: Vec<(&str, &str, EndpointBuilder, ExportDecision)> = vec![
        (
            "no opt-in",
            "null",
            pod(),
            skip("not opted in: no clustermesh.cilium.io/sync label or annotation"),
        ),
        (
            "label opts in",
            "null",
            opted_in(),
            sync(
                Scope::Global,
                &format!("{label_in}, no scope given: global"),
            ),
        ),
        (
            "annotation opts in",
            "null",
            pod().annotation(SYNC, "true"),
            sync(
                Scope::Global,
                "annotation clustermesh.cilium.io/sync=true, no scope given: global",
            ),
        ),
        (
            "label opts out",
            "null",
            pod().label(SYNC, "false"),
            skip("opted out by label clustermesh.cilium.io/sync=false"),
        ),
        (
            "label beats annotation",
            "null",
            pod().label(SYNC, "false").annotation(SYNC, "true"),
            skip("opted out by label clustermesh.cilium.io/sync=false"),
        ),
        (
            "annotation opts out",
            r#"{"default":"opt-out"}"#,
            pod().annotation(SYNC, "false"),
            skip("opted out by annotation clustermesh.cilium.io/sync=false"),
        ),
        (
            "bad label value",
            "null",
            pod().label(SYNC, "yes"),
            skip(r#"invalid label clustermesh.cilium.io/sync "yes""#),
        ),
        (
            "values are exact",
            "null",
            pod().label(SYNC, "True"),
            skip(r#"invalid label clustermesh.cilium.io/sync "True""#),
        ),
        (
            "namespace opts in",
            "null",
            pod().namespace_annotation(NAMESPACE_GLOBAL, "true"),
            sync(
                Scope::Global,
                "namespace annotation clustermesh.cilium.io/global=true, no scope given: global",
            ),
        ),
        (
            "namespace opts out",
            r#"{"default":"opt-out"}"#,
            pod().namespace_annotation(NAMESPACE_GLOBAL, "false"),
            skip("opted out by namespace annotation clustermesh.cilium.io/global=false"),
        ),
        // CFP-44921: the label filter applies on top of the namespace filter, so a
        // namespace's opt-out holds whatever its pods say.
        (
            "namespace opt-out beats the pod's label",
            "null",
            pod()
                .label(SYNC, "true")
                .namespace_annotation(NAMESPACE_GLOBAL, "false"),
            skip("opted out by namespace annotation clustermesh.cilium.io/global=false"),
        ),
        (
            "namespace opt-out beats the pod's annotation",
            "null",
            pod()
                .annotation(SYNC, "true")
                .namespace_annotation(NAMESPACE_GLOBAL, "false"),
            skip("opted out by namespace annotation clustermesh.cilium.io/global=false"),
        ),
        (
            "namespace opt-out beats the pod's label and scope in opt-out mode",
            r#"{"default":"opt-out"}"#,
            pod()
                .label(SYNC, "true")
                .annotation(SCOPE, "regional")
                .namespace_annotation(NAMESPACE_GLOBAL, "false"),
            skip("opted out by namespace annotation clustermesh.cilium.io/global=false"),
        ),
        (
            "namespace opt-out beats a bad pod label",
            "null",
            pod()
                .label(SYNC, "yes")
                .namespace_annotation(NAMESPACE_GLOBAL, "false"),
            skip("opted out by namespace annotation clustermesh.cilium.io/global=false"),
        ),
        (
            "pod opt-out beats namespace opt-in",
            "null",
            pod()
                .label(SYNC, "false")
                .namespace_annotation(NAMESPACE_GLOBAL, "true"),
            skip("opted out by label clustermesh.cilium.io/sync=false"),
        ),
        (
            "pod opt-in in an opted-in namespace names the pod's label",
            "null",
            pod()
                .label(SYNC, "true")
                .namespace_annotation(NAMESPACE_GLOBAL, "true"),
            sync(
                Scope::Global,
                "label clustermesh.cilium.io/sync=true, no scope given: global",
            ),
        ),
        (
            "pod opt-in beats a bad namespace value",
            "null",
            pod()
                .label(SYNC, "true")
                .namespace_annotation(NAMESPACE_GLOBAL, "no"),
            sync(
                Scope::Global,
                "label clustermesh.cilium.io/sync=true, no scope given: global",
            ),
        ),
        (
            "bad namespace value",
            "null",
            pod().namespace_annotation(NAMESPACE_GLOBAL, "1"),
            skip(r#"invalid namespace annotation clustermesh.cilium.io/global "1""#),
        ),
        (
            "opt-out default",
            r#"{"default":"opt-out"}"#,
            pod(),
            sync(
                Scope::Global,
                "default opt-out mode, no scope given: global",
            ),
        ),
        (
            "regional",
            "null",
            opted_in().annotation(SCOPE, "regional"),
            sync(Scope::Region, &format!("{label_in}, scope regional")),
        ),
        (
            "region alias",
            "null",
            opted_in().annotation(SCOPE, "region"),
            sync(Scope::Region, &format!("{label_in}, scope regional")),
        ),
        (
            "zone",
            "null",
            opted_in().annotation(SCOPE, "zone"),
            sync(Scope::Zone, &format!("{label_in}, scope zone")),
        ),
        (
            "explicit global",
            "null",
            opted_in().annotation(SCOPE, "global"),
            sync(Scope::Global, &format!("{label_in}, scope global")),
        ),
        (
            "blank scope is global",
            "null",
            opted_in().annotation(SCOPE, " "),
            sync(
                Scope::Global,
                &format!("{label_in}, no scope given: global"),
            ),
        ),
        (
            "scope from a label",
            "null",
            opted_in().label(SCOPE, "zone"),
            sync(Scope::Zone, &format!("{label_in}, scope zone")),
        ),
        (
            "annotation beats label",
            "null",
            pod()
                .label(SYNC, "true")
                .annotation(SCOPE, "zone")
                .label(SCOPE, "regional"),
            sync(Scope::Zone, &format!("{label_in}, scope zone")),
        ),
        (
            "region list",
            "null",
            pod()
                .label(SYNC, "true")
                .annotation(SCOPE, "eu-west-1, us-east-1"),
            sync(
                Scope::Regions(vec!["eu-west-1".into(), "us-east-1".into()]),
                &format!("{label_in}, scope eu-west-1,us-east-1"),
            ),
        ),
        (
            "cluster scope",
            "null",
            opted_in().annotation(SCOPE, "cluster"),
            skip("cluster scope: never leaves its cluster"),
        ),
        (
            "bad scope",
            "null",
            opted_in().annotation(SCOPE, "Regional"),
            skip(r#"invalid annotation clustermesh.cilium.io/sync-scope "Regional""#),
        ),
        (
            "bad scope in a label",
            "null",
            opted_in().label(SCOPE, "a,,b"),
            skip(r#"invalid label clustermesh.cilium.io/sync-scope "a,,b""#),
        ),
        (
            "namespace default scope",
            "null",
            opted_in().namespace_annotation(SCOPE, "regional"),
            sync(Scope::Region, &format!("{label_in}, scope regional")),
        ),
        (
            "the pod's scope beats its namespace's",
            "null",
            opted_in()
                .namespace_annotation(SCOPE, "regional")
                .label(SCOPE, "zone"),
            sync(Scope::Zone, &format!("{label_in}, scope zone")),
        ),
        (
            "namespace opt-in with its default scope",
            "null",
            pod()
                .namespace_annotation(NAMESPACE_GLOBAL, "true")
                .namespace_annotation(SCOPE, "zone"),
            sync(
                Scope::Zone,
                "namespace annotation clustermesh.cilium.io/global=true, scope zone",
            ),
        ),
        (
            "bad namespace scope",
            "null",
            opted_in().namespace_annotation(SCOPE, "everywhere!"),
            skip(r#"invalid namespace annotation clustermesh.cilium.io/sync-scope "everywhere!""#),
        ),
        (
            "opted-out pods ignore scope",
            "null",
            pod().label(SYNC, "false").annotation(SCOPE, "bogus!"),
            skip("opted out by label clustermesh.cilium.io/sync=false"),
        ),
    ];
    for (name, config, endpoint, want) in cases {
        let filter = load(config);
        assert_eq!(filter.export(&endpoint.build()), want, "{name}");
    }
}

#[test]
fn invalid_values_warn_with_the_pod() {
    let filter = load("null");
    let cases = [
        (
            pod().label(SYNC, "yes"),
            r#"pod shop/web-0: invalid label clustermesh.cilium.io/sync "yes" (want true or false); not synced"#,
        ),
        (
            pod().namespace_annotation(NAMESPACE_GLOBAL, "no"),
            "invalid namespace annotation clustermesh.cilium.io/global \"no\"",
        ),
        (
            opted_in().annotation(SCOPE, "Global"),
            "neither cluster, zone, region",
        ),
    ];
    for (endpoint, want) in cases {
        testing::take_logs();
        filter.export(&endpoint.build());
        let logs = testing::take_logs();
        assert_eq!(logs.len(), 1, "{want}: {logs:?}");
        assert_eq!(logs[0].0, Level::Warn);
        assert!(
            logs[0].1.contains(want),
            "{:?} should contain {want:?}",
            logs[0].1
        );
    }
    filter.export(&opted_in().build());
    assert!(testing::take_logs().is_empty(), "valid input logs nothing");
}

#[test]
fn export_reads_only_what_decides() {
    let filter = load("null");
    // The namespace's opt-out comes first, so every decision starts by reading it.
    let ns_global = format!("namespace_annotation({NAMESPACE_GLOBAL})");
    let cases = [
        (
            opted_in().namespace_annotation(NAMESPACE_GLOBAL, "false"),
            vec![ns_global.clone()],
        ),
        (
            pod().label(SYNC, "false"),
            vec![ns_global.clone(), format!("label({SYNC})")],
        ),
        (
            pod(),
            vec![
                ns_global.clone(),
                format!("label({SYNC})"),
                format!("annotation({SYNC})"),
            ],
        ),
        (
            opted_in(),
            vec![
                ns_global.clone(),
                format!("label({SYNC})"),
                format!("annotation({SCOPE})"),
                format!("label({SCOPE})"),
                format!("namespace_annotation({SCOPE})"),
            ],
        ),
        (
            opted_in().label(SCOPE, "zone"),
            vec![
                ns_global.clone(),
                format!("label({SYNC})"),
                format!("annotation({SCOPE})"),
                format!("label({SCOPE})"),
            ],
        ),
        (
            opted_in().annotation(SCOPE, "zone"),
            vec![
                ns_global.clone(),
                format!("label({SYNC})"),
                format!("annotation({SCOPE})"),
            ],
        ),
    ];
    for (endpoint, want) in cases {
        let endpoint = endpoint.build();
        filter.export(&endpoint);
        assert_eq!(endpoint.reads(), want);
    }
}

#[test]
fn import_admits_by_scope() {
    let eu_west = || {
        Locality::new("c-eu1")
            .with_zone("eu-west-1a")
            .with_region("eu-west-1")
    };
    let eu_west_b = || {
        Locality::new("c-eu2")
            .with_zone("eu-west-1b")
            .with_region("eu-west-1")
    };
    let us_east = || {
        Locality::new("c-us")
            .with_zone("us-east-1a")
            .with_region("us-east-1")
    };
    let nowhere = || Locality::new("c-x");
    let keep = ImportDecision::keep;
    let skip = ImportDecision::skip;
    // (name, raw SyncScope, origin, local, want)
    let cases: Vec<(&str, Option<&str>, Locality, Locality, ImportDecision)> = vec![
        (
            "absent is global",
            None,
            us_east(),
            eu_west(),
            keep("global scope"),
        ),
        (
            "global",
            Some("global"),
            us_east(),
            eu_west(),
            keep("global scope"),
        ),
        (
            "regional, same region",
            Some("regional"),
            eu_west_b(),
            eu_west(),
            keep("regional endpoint from region eu-west-1; this cluster is in eu-west-1"),
        ),
        (
            "regional, other region",
            Some("regional"),
            us_east(),
            eu_west(),
            skip("regional endpoint from region us-east-1; this cluster is in eu-west-1"),
        ),
        (
            "regional, origin unknown",
            Some("regional"),
            nowhere(),
            eu_west(),
            keep("regional endpoint from an unknown region: kept (fail open)"),
        ),
        (
            "regional, local unknown",
            Some("region"),
            us_east(),
            nowhere(),
            keep(
                "regional endpoint from region us-east-1; this cluster's region is unknown: kept (fail open)",
            ),
        ),
        (
            "zone, same zone",
            Some("zone"),
            eu_west(),
            Locality::new("c-eu3").with_zone("eu-west-1a"),
            keep("zonal endpoint from zone eu-west-1a; this cluster is in eu-west-1a"),
        ),
        (
            "zone, other zone",
            Some("zone"),
            eu_west_b(),
            eu_west(),
            skip("zonal endpoint from zone eu-west-1b; this cluster is in eu-west-1a"),
        ),
        (
            "cluster, elsewhere",
            Some("cluster"),
            us_east(),
            eu_west(),
            skip("cluster-scoped endpoint from cluster c-us; this is cluster c-eu1"),
        ),
        (
            "regions, listed",
            Some("us-east-1,ap-south-1"),
            eu_west(),
            us_east(),
            keep(
                "endpoint for regions us-east-1,ap-south-1 from region eu-west-1; this cluster is in us-east-1",
            ),
        ),
        (
            "regions, not listed",
            Some("ap-south-1"),
            us_east(),
            eu_west(),
            skip(
                "endpoint for regions ap-south-1 from region us-east-1; this cluster is in eu-west-1",
            ),
        ),
        (
            "regions, local unknown",
            Some("ap-south-1"),
            us_east(),
            nowhere(),
            keep(
                "endpoint for regions ap-south-1 from region us-east-1; this cluster's region is unknown: kept (fail open)",
            ),
        ),
        (
            "unparsable fails open",
            Some("Regional"),
            us_east(),
            eu_west(),
            keep(r#"unparsable SyncScope "Regional": kept (fail open)"#),
        ),
    ];
    let filter = load("null");
    for (name, raw, origin, here, want) in cases {
        testing::set_local(here);
        let mut endpoint = Endpoint::builder().origin(origin);
        if let Some(raw) = raw {
            endpoint = endpoint.sync_scope(raw);
        }
        assert_eq!(filter.import(&endpoint.build()), want, "{name}");
    }
}

#[test]
fn import_reads_locality_only_when_the_scope_needs_it() {
    let filter = load("null");
    let global = Endpoint::builder().sync_scope("global").build();
    filter.import(&global);
    assert_eq!(global.reads(), ["sync_scope()"]);
    let regional = Endpoint::builder().sync_scope("regional").build();
    filter.import(&regional);
    assert_eq!(regional.reads(), ["sync_scope()", "origin()"]);
}

#[test]
fn unparsable_import_scope_warns() {
    let filter = load("null");
    testing::take_logs();
    filter.import(&Endpoint::builder().sync_scope("eu_west").build());
    let logs = testing::take_logs();
    assert_eq!(logs.len(), 1);
    assert!(logs[0].1.contains("eu_west"), "{logs:?}");
}

#[test]
fn miss_resolves_owners_first() {
    let c = |name: &str| Locality::new(name);
    let cases: Vec<(&str, &str, MissRequest, MissDecision)> = vec![
        (
            "no candidates",
            "null",
            MissRequest::builder().address("10.1.2.3").build(),
            MissDecision::Ignore {
                ttl_ms: 30_000,
                reason: "no candidate cluster".into(),
            },
        ),
        (
            "configured negative ttl",
            r#"{"negativeTtlMs": 500}"#,
            MissRequest::builder().build(),
            MissDecision::Ignore {
                ttl_ms: 500,
                reason: "no candidate cluster".into(),
            },
        ),
        (
            "owner first, order kept otherwise",
            "null",
            MissRequest::builder()
                .candidate(c("a"), false)
                .candidate(c("b"), true)
                .candidate(c("c"), false)
                .build(),
            MissDecision::resolve(["b", "a", "c"]).because("owner of the covering prefix first"),
        ),
        (
            "no owner",
            "null",
            MissRequest::builder()
                .candidate(c("a"), false)
                .candidate(c("b"), false)
                .build(),
            MissDecision::resolve(["a", "b"]).because("no candidate owns the covering prefix"),
        ),
        (
            "duplicates collapse",
            "null",
            MissRequest::builder()
                .candidate(c("a"), false)
                .candidate(c("a"), true)
                .build(),
            MissDecision::resolve(["a"]).because("owner of the covering prefix first"),
        ),
    ];
    for (name, config, request, want) in cases {
        assert_eq!(load(config).miss(&request), want, "{name}");
        assert_eq!(
            request.reads(),
            ["candidates()"],
            "{name}: reads only the candidates"
        );
    }
}

#[test]
fn config_is_checked() {
    assert_eq!(load("null").settings, Settings::default());
    assert_eq!(
        load(r#"{"default": "opt-out", "negativeTtlMs": 1}"#).settings,
        Settings {
            default: DefaultMode::OptOut,
            negative_ttl_ms: 1
        }
    );
    let cases = [
        (
            r#"{"default": "opt-maybe"}"#,
            "invalid config at default: unknown variant `opt-maybe`",
        ),
        (
            r#"{"negativeTtlMs": -1}"#,
            "invalid config at negativeTtlMs: invalid value: integer `-1`",
        ),
        (
            r#"{"negative_ttl_ms": 1}"#,
            "invalid config at negative_ttl_ms: unknown field `negative_ttl_ms`",
        ),
    ];
    for (config, want) in cases {
        testing::assert_rejects::<CfpScope>(config, want);
    }
}

#[test]
fn odd_input_never_panics() {
    let filter = load(r#"{"default": "opt-out"}"#);
    let odd = [
        "",
        " ",
        ",",
        "\u{0}",
        "régional",
        "true\n",
        &"x".repeat(10_000),
        "cluster,zone",
    ];
    for value in odd {
        let endpoint = pod()
            .label(SYNC, value)
            .annotation(SYNC, value)
            .namespace_annotation(NAMESPACE_GLOBAL, value)
            .annotation(SCOPE, value)
            .build();
        filter.export(&endpoint);
        let with_scope = opted_in().annotation(SCOPE, value).build();
        filter.export(&with_scope);
        filter.import(
            &Endpoint::builder()
                .sync_scope(value)
                .origin(Locality::new(value))
                .build(),
        );
    }
}

#[test]
fn the_static_reasons_name_the_label_and_the_annotation() {
    assert_eq!(
        NOT_OPTED_IN,
        format!("not opted in: no {SYNC} label or annotation")
    );
    assert_eq!(
        NAMESPACE_OPTED_OUT,
        format!("opted out by namespace annotation {NAMESPACE_GLOBAL}=false")
    );
}
