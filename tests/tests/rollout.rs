//! Canary rollout and automatic rollback of filter generations, with real modules:
//! a reloaded generation decides a stable share of the endpoints, is rolled back when it
//! fails or changes too much, and is promoted when it stays within its bounds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use meshfilter_filter_runtime::{
    EndpointInput, EngineConfig, ExportDecision, FilterMetrics, FilterRuntime, Locality,
    ModuleSource, RolloutPolicy, RuntimeConfig,
};
use meshfilter_tests::{ConfigMapDir, filter_metric, module_bytes, wait_for};
use serde_json::json;

fn local() -> Locality {
    Locality {
        cluster: "prod-eu-1".into(),
        zone: Some("eu-west-1a".into()),
        region: Some("eu-west-1".into()),
    }
}

/// Export fails closed and, when every filter abstains, keeps the endpoint out: an
/// abstaining generation turns every `sync` into a `skip`.
fn manifest(config: serde_json::Value) -> String {
    format!(
        "export:\n  onFailure: fail-closed\n  otherwise: closed\n  chain:\n    - module: misbehave.wasm\n      config: {config}\n"
    )
}

fn update(dir: &mut ConfigMapDir, config: serde_json::Value) {
    dir.update(&[
        ("filters.yaml", manifest(config).as_bytes()),
        ("misbehave.wasm", &module_bytes("misbehave")),
    ]);
}

fn runtime(dir: &ConfigMapDir, metrics: FilterMetrics) -> Arc<FilterRuntime> {
    FilterRuntime::new(
        RuntimeConfig {
            engine: EngineConfig::default(),
            source: ModuleSource::Directory(dir.path().to_path_buf()),
            pins: BTreeMap::new(),
            local: local(),
        },
        metrics,
    )
    .expect("first generation loads")
}

/// `n` distinct pods, each with label `canary-trap` (which `trap-if-label` reacts to).
fn pods(n: usize) -> Vec<Arc<EndpointInput>> {
    (0..n)
        .map(|i| {
            Arc::new(EndpointInput {
                namespace: "shop".into(),
                pod_name: format!("web-{i}"),
                ip: format!("10.1.{}.{}", i / 250, i % 250 + 1),
                identity: 65_800,
                labels: [("canary-trap".to_string(), "1".to_string())].into(),
                origin: local(),
                ..Default::default()
            })
        })
        .collect()
}

/// Names of the pods `rt` currently exports.
fn synced(rt: &FilterRuntime, pods: &[Arc<EndpointInput>]) -> BTreeSet<String> {
    pods.iter()
        .filter(|p| {
            matches!(
                rt.decide_export(p, None).decision,
                ExportDecision::Sync { .. }
            )
        })
        .map(|p| p.pod_name.clone())
        .collect()
}

#[test]
fn a_canary_decides_a_stable_share_and_is_promoted_after_its_probation() {
    let mut dir = ConfigMapDir::new();
    update(&mut dir, json!({"onExport": "sync-global"}));
    let metrics = FilterMetrics::default();
    let rt = runtime(&dir, metrics.clone());
    rt.set_rollout(Some(RolloutPolicy {
        canary_percent: 30.0,
        promote_after: Duration::from_secs(3),
        max_changed: 10_000,
        ..RolloutPolicy::default()
    }));
    let pods = pods(1_000);
    assert_eq!(synced(&rt, &pods).len(), 1_000, "generation 1 exports all");

    let generations = rt.subscribe();
    update(&mut dir, json!({"onExport": "abstain"}));
    assert_eq!(rt.reload().expect("reloads"), Some(2));
    assert!(
        generations.has_changed().unwrap(),
        "owners of decisions are told"
    );
    let status = rt.info().rollout;
    assert_eq!(status.stable_generation, 1);
    assert_eq!(status.candidate.as_ref().map(|c| c.generation), Some(2));

    // The candidate skips its share; the stable generation still exports the rest.
    let first = synced(&rt, &pods);
    let skipped = 1_000 - first.len();
    assert!(
        (220..=380).contains(&skipped),
        "about 30 % decided by the canary, saw {skipped}"
    );
    // The same pods, every time.
    assert_eq!(synced(&rt, &pods), first, "the canary share is stable");
    let c = rt.info().rollout.candidate.expect("still on probation");
    assert_eq!(
        c.changed as usize,
        2 * skipped,
        "each changed decision counted"
    );
    assert_eq!(c.failures, 0);
    assert_eq!(
        filter_metric(&metrics, "meshfilter_filter_candidate_generation"),
        2
    );

    // Probation ends: the reload thread's poll (here called by hand) promotes it.
    assert!(
        wait_for(Duration::from_secs(10), || {
            rt.poll_rollout();
            rt.info().rollout.candidate.is_none()
        }),
        "promoted after its probation"
    );
    let status = rt.info().rollout;
    assert_eq!(status.stable_generation, 2);
    assert_eq!(status.promotions, 1);
    assert!(status.last_rollback.is_none());
    assert!(
        synced(&rt, &pods).is_empty(),
        "generation 2 decides everything"
    );
    assert_eq!(
        filter_metric(&metrics, "meshfilter_filter_promotions_total"),
        1
    );
    assert_eq!(filter_metric(&metrics, "meshfilter_filter_generation"), 2);
}

#[test]
fn a_failing_canary_is_rolled_back_and_not_loaded_again() {
    let mut dir = ConfigMapDir::new();
    update(&mut dir, json!({"onExport": "sync-global"}));
    let metrics = FilterMetrics::default();
    let rt = runtime(&dir, metrics.clone());
    rt.set_rollout(Some(RolloutPolicy {
        canary_percent: 50.0,
        promote_after: Duration::from_secs(3_600),
        max_failure_ratio: 0.05,
        min_calls: 20,
        max_changed: 10_000,
    }));
    let pods = pods(400);
    // Passes the probe (which carries no labels), traps on every real pod.
    update(&mut dir, json!({"onExport": "trap-if-label:canary-trap"}));
    assert_eq!(rt.reload().expect("reloads"), Some(2));
    let mut generations = rt.subscribe();
    generations.mark_unchanged();

    let exported = synced(&rt, &pods);
    let status = rt.info().rollout;
    let rollback = status.last_rollback.expect("rolled back");
    assert!(status.candidate.is_none());
    assert_eq!(rollback.generation, 2);
    assert_eq!(rollback.cause, "failures");
    assert_eq!(
        rollback.decisions, 20,
        "judged as soon as the minimum of decisions was reached"
    );
    assert!(
        rollback.reason.contains("20 of 20 decisions failed"),
        "{}",
        rollback.reason
    );
    assert!(
        generations.has_changed().unwrap(),
        "owners re-decide after a rollback"
    );
    // The 19 canary decisions before the one that crossed the bound were fail-closed
    // skips; from that one on, the stable generation decides every pod.
    assert_eq!(exported.len(), 400 - 19);
    assert_eq!(synced(&rt, &pods).len(), 400);
    assert_eq!(
        filter_metric(
            &metrics,
            "meshfilter_filter_rollbacks_total{cause=\"failures\"}"
        ),
        1
    );
    assert_eq!(
        filter_metric(
            &metrics,
            "meshfilter_filter_canary_decisions_total{outcome=\"failed\"}"
        ),
        20
    );

    // The same files are not loaded again...
    assert_eq!(rt.reload().expect("no error"), None);
    assert!(rt.info().rollout.candidate.is_none());
    // ...but a fix is.
    update(
        &mut dir,
        json!({"onExport": "sync-global", "version": "fixed"}),
    );
    assert_eq!(rt.reload().expect("reloads"), Some(3));
    assert_eq!(rt.info().rollout.candidate.map(|c| c.generation), Some(3));
}

#[test]
fn a_canary_that_changes_too_much_is_rolled_back() {
    let mut dir = ConfigMapDir::new();
    update(&mut dir, json!({"onExport": "sync-global"}));
    let rt = runtime(&dir, FilterMetrics::default());
    rt.set_rollout(Some(RolloutPolicy {
        canary_percent: 100.0,
        promote_after: Duration::from_secs(3_600),
        max_changed: 5,
        ..RolloutPolicy::default()
    }));
    update(&mut dir, json!({"onExport": "abstain"}));
    rt.reload().expect("reloads");
    let pods = pods(50);
    let exported = synced(&rt, &pods);
    let rollback = rt.info().rollout.last_rollback.expect("rolled back");
    assert_eq!(rollback.cause, "changes");
    assert_eq!(
        rollback.changed, 6,
        "rolled back at the first change past the bound"
    );
    assert_eq!(
        exported.len(),
        50 - 5,
        "five pods skipped before the rollback"
    );
    assert_eq!(synced(&rt, &pods).len(), 50);
}

#[test]
fn going_back_to_the_stable_files_ends_the_canary() {
    let mut dir = ConfigMapDir::new();
    update(&mut dir, json!({"onExport": "sync-global"}));
    let rt = runtime(&dir, FilterMetrics::default());
    rt.set_rollout(Some(RolloutPolicy::default()));
    update(&mut dir, json!({"onExport": "abstain"}));
    assert_eq!(rt.reload().expect("reloads"), Some(2));
    update(&mut dir, json!({"onExport": "sync-global"}));
    assert_eq!(
        rt.reload().expect("reloads"),
        Some(1),
        "back to the stable generation"
    );
    let status = rt.info().rollout;
    assert!(status.candidate.is_none());
    assert_eq!(status.stable_generation, 1);
    assert_eq!(synced(&rt, &pods(100)).len(), 100);
}
