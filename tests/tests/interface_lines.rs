//! The host serves two interface lines side by side: a module built for the released
//! interface 0.1.0 (`tests/filters/interface-0-1`, wit-bindgen on the frozen WIT, no SDK)
//! runs in the same chains as modules built with the current SDK (0.2.0).

use std::collections::BTreeMap;
use std::sync::Arc;

use meshfilter_filter_runtime::{
    CallFailure, CandidateCluster, Decided, EndpointInput, EngineConfig, ExportDecision,
    FilterMetrics, FilterRuntime, ImportDecision, Locality, MissDecision, MissInput, ModuleSource,
    RuntimeConfig, SyncScope,
};
use meshfilter_tests::{ConfigMapDir, module_bytes};

fn local() -> Locality {
    Locality {
        cluster: "prod-eu-1".into(),
        zone: None,
        region: Some("eu-west-1".into()),
    }
}

/// A runtime over a directory holding `interface-0-1.wasm`, `misbehave.wasm` and
/// `manifest`; the directory is returned to keep it alive.
fn runtime(manifest: &str) -> (ConfigMapDir, Arc<FilterRuntime>) {
    let mut dir = ConfigMapDir::new();
    dir.update(&[
        ("filters.yaml", manifest.as_bytes()),
        ("interface-0-1.wasm", &module_bytes("interface-0-1")),
        ("misbehave.wasm", &module_bytes("misbehave")),
    ]);
    let rt = FilterRuntime::new(
        RuntimeConfig {
            engine: EngineConfig::default(),
            source: ModuleSource::Directory(dir.path().to_path_buf()),
            pins: BTreeMap::new(),
            local: local(),
        },
        FilterMetrics::default(),
    )
    .expect("both lines load");
    (dir, rt)
}

fn endpoint(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Arc<EndpointInput> {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    Arc::new(EndpointInput {
        namespace: "shop".into(),
        pod_name: "web-0".into(),
        ip: "10.1.0.7".into(),
        labels: map(labels),
        annotations: map(annotations),
        origin: Locality::cluster("prod-us-1"),
        ..Default::default()
    })
}

fn decided_by(d: &Decided) -> &str {
    match d {
        Decided::Filter { module, .. } => module,
        other => panic!("no filter decided: {other:?}"),
    }
}

const MANIFEST: &str = "\
export:
  otherwise: closed
  chain:
    - module: interface-0-1.wasm
    - module: misbehave.wasm
      config: {onExport: read-annotations}
import:
  chain:
    - module: interface-0-1.wasm
miss:
  chain:
    - module: interface-0-1.wasm
";

#[test]
fn a_module_built_for_the_previous_line_runs_beside_the_current_one() {
    let (_dir, rt) = runtime(MANIFEST);
    let versions: BTreeMap<String, String> = rt
        .info()
        .modules
        .into_iter()
        .map(|m| (m.file, m.interface_version))
        .collect();
    assert_eq!(versions["interface-0-1.wasm"], "0.1.0");
    assert_eq!(
        versions["misbehave.wasm"],
        meshfilter_contract::interface::VERSION
    );

    let v = rt.decide_export(&endpoint(&[("app", "web")], &[]), None);
    assert_eq!(
        v.decision,
        ExportDecision::Sync {
            scope: SyncScope::Region,
            reason: "interface 0.1: app=web".into()
        }
    );
    assert_eq!(decided_by(&v.decided_by), "interface-0-1.wasm");

    // The 0.1 module abstains; the 0.2 one reads what 0.2 adds.
    let v = rt.decide_export(&endpoint(&[], &[("b", "2"), ("a", "1")]), None);
    assert_eq!(decided_by(&v.decided_by), "misbehave.wasm");
    assert_eq!(v.decision.reason(), "a=1,b=2");

    let v = rt.decide_import(&endpoint(&[], &[]), None);
    assert_eq!(
        v.decision,
        ImportDecision::Keep {
            reason: "interface 0.1: from prod-us-1".into()
        }
    );

    let request = Arc::new(MissInput {
        address: "10.2.0.9".into(),
        candidates: vec![
            CandidateCluster {
                locality: Locality::cluster("c1"),
                owns_prefix: true,
            },
            CandidateCluster {
                locality: Locality::cluster("c2"),
                owns_prefix: false,
            },
        ],
        ..Default::default()
    });
    let v = rt.decide_miss(&request);
    assert_eq!(
        v.decision,
        MissDecision::Resolve {
            clusters: vec!["c1".into(), "c2".into()],
            reason: "interface 0.1 on prod-eu-1".into()
        }
    );
}

#[test]
fn a_panic_written_to_stderr_reaches_the_failure() {
    let (_dir, rt) = runtime(MANIFEST);
    let v = rt.decide_export(&endpoint(&[("app", "panic")], &[]), None);
    let Decided::FailurePolicy {
        failure: CallFailure::Trap { module, message },
        ..
    } = v.decided_by
    else {
        panic!("a trap: {:?}", v.decided_by);
    };
    assert_eq!(module, "interface-0-1.wasm");
    assert!(
        message.contains("panicked at") && message.contains("interface-0-1: panics as asked"),
        "std's panic message, from stderr: {message}"
    );
}

#[test]
fn all_annotations_are_memoised_by_their_values() {
    let (_dir, rt) = runtime(
        "export:\n  chain:\n    - module: misbehave.wasm\n      config: {onExport: read-annotations}\n",
    );
    let memo_hit = |d: &Decided| matches!(d, Decided::Filter { memo_hit: true, .. });
    let first = rt.decide_export(&endpoint(&[("app", "a")], &[("team", "x")]), None);
    assert!(!memo_hit(&first.decided_by));
    // Other labels, same annotations: the module read only the annotations.
    let same = rt.decide_export(&endpoint(&[("app", "b")], &[("team", "x")]), None);
    assert!(memo_hit(&same.decided_by), "{:?}", same.decided_by);
    assert_eq!(same.decision.reason(), "team=x");
    let other = rt.decide_export(&endpoint(&[("app", "a")], &[("team", "y")]), None);
    assert!(!memo_hit(&other.decided_by));
    assert_eq!(other.decision.reason(), "team=y");
}
