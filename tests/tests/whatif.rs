//! `filter diff`'s engine over a synthetic mesh with the real cfp-scope module: the
//! expected figures come from the mesh's shape (10 % of pods opted in, every other
//! cluster a consumer), not from the code.

use std::collections::BTreeMap;
use std::sync::Arc;

use meshfilter_filter_runtime::{
    BuiltinSet, EngineConfig, FilterEngine, FilterManifest, FilterMetrics, FilterRuntime, Locality,
    ModuleSource,
};
use meshfilter_tests::module_bytes;
use meshfilter_whatif::{DiffOptions, Fate, SyntheticMesh, diff, synthetic};
use serde_json::json;

fn cfp_scope(config: serde_json::Value) -> ModuleSource {
    ModuleSource::Builtin(BuiltinSet {
        modules: vec![(
            "cfp-scope.wasm".into(),
            Arc::from(module_bytes("cfp-scope")),
        )],
        manifest: FilterManifest::single("cfp-scope.wasm", config),
    })
}

#[test]
fn opting_in_by_default_keeps_only_labelled_pods_everywhere() {
    let snapshot = synthetic(&SyntheticMesh {
        clusters: 4,
        endpoints: 200,
        opted_in_percent: 10,
    });
    let engine = FilterEngine::new(EngineConfig::default()).unwrap();
    let loader = |source: ModuleSource| {
        let engine = engine.clone();
        move |local: Locality| {
            FilterRuntime::with_engine(
                engine.clone(),
                source.clone(),
                BTreeMap::new(),
                local,
                FilterMetrics::default(),
            )
        }
    };
    let old = loader(cfp_scope(json!({"default": "opt-out"})));
    let new = loader(cfp_scope(json!({"default": "opt-in"})));
    let report = diff(&snapshot, &old, &new, &DiffOptions::default()).unwrap();

    // Stock Cilium exports all 800; the CFP only the 10 % labelled: 720 stop.
    let export = &report.hooks["export"];
    assert_eq!(export.compared, 800);
    assert_eq!(export.stopped, 720);
    assert_eq!(export.started + export.rescoped, 0);
    // Every cluster mirrored the other three clusters' 600 endpoints; now their 60
    // labelled ones (global scope).
    for c in &report.consumers {
        assert_eq!(
            (c.entries_before, c.entries_after),
            (600, 60),
            "{}",
            c.cluster
        );
        assert_eq!(c.estimated_memory_after_bytes, 60 * 5_000);
    }
    assert_eq!(report.max_removed(), 540);
    // Imports compared: each consumer sees the 600 published by either side.
    assert_eq!(report.hooks["import"].compared, 4 * 600);
    assert_eq!(report.hooks["import"].stopped, 4 * 540);
    // Grouped by namespace: 50 namespaces, each losing its unlabelled pods.
    let export_groups: Vec<_> = report
        .changes
        .iter()
        .filter(|g| g.hook == "export")
        .collect();
    assert_eq!(export_groups.len(), 50);
    assert!(export_groups.iter().all(|g| g.to == Fate::Skip));
    assert_eq!(export_groups.iter().map(|g| g.count).sum::<usize>(), 720);
    assert!(
        export_groups[0].reason.contains("not opted in"),
        "{}",
        export_groups[0].reason
    );
}

#[test]
fn identical_filters_change_nothing() {
    let snapshot = synthetic(&SyntheticMesh {
        clusters: 3,
        endpoints: 100,
        opted_in_percent: 30,
    });
    let engine = FilterEngine::new(EngineConfig::default()).unwrap();
    let side = |local: Locality| {
        FilterRuntime::with_engine(
            engine.clone(),
            cfp_scope(serde_json::Value::Null),
            BTreeMap::new(),
            local,
            FilterMetrics::default(),
        )
    };
    let report = diff(&snapshot, &side, &side, &DiffOptions::default()).unwrap();
    assert!(report.changes.is_empty());
    assert_eq!(report.hooks["export"].changed, 0);
    for c in &report.consumers {
        assert_eq!(c.entries_before, c.entries_after);
        assert_eq!(c.entries_before, 2 * 30, "{}", c.cluster);
    }
}
