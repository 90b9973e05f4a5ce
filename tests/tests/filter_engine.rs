//! The filter engine end to end: real modules built from `filters/` and
//! `tests/filters/misbehave`, run by the real runtime.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meshfilter_filter_runtime::{
    BuiltinSet, CandidateCluster, Decided, EndpointInput, EngineConfig, ExportDecision,
    FailurePolicy, FilterEngine, FilterManifest, FilterMetrics, FilterRuntime, Hook,
    ImportDecision, LoadError, Locality, MissDecision, MissInput, ModuleSource, RuntimeConfig,
    SyncScope,
};
use meshfilter_tests::{ConfigMapDir, module_bytes, wait_for};
use serde_json::json;

fn eu() -> Locality {
    Locality {
        cluster: "prod-eu-1".into(),
        zone: Some("eu-west-1a".into()),
        region: Some("eu-west-1".into()),
    }
}

fn runtime_for(dir: &ConfigMapDir, engine: EngineConfig) -> Result<Arc<FilterRuntime>, LoadError> {
    FilterRuntime::new(
        RuntimeConfig {
            engine,
            source: ModuleSource::Directory(dir.path().to_path_buf()),
            pins: BTreeMap::new(),
            local: eu(),
        },
        FilterMetrics::default(),
    )
}

fn endpoint(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Arc<EndpointInput> {
    Arc::new(EndpointInput {
        namespace: "shop".into(),
        pod_name: "web-1".into(),
        ip: "10.1.0.7".into(),
        node_ip: Some("172.20.1.1".into()),
        identity: 65_800,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        origin: eu(),
        ..Default::default()
    })
}

fn misbehave_manifest(config: serde_json::Value) -> String {
    format!(
        "export:\n  onFailure: fail-closed\n  chain:\n    - module: misbehave.wasm\n      config: {config}\n\
         import:\n  chain:\n    - module: misbehave.wasm\n      config: {config}\n"
    )
}

fn reason(v: &ExportDecision) -> &str {
    v.reason()
}

#[test]
fn wit_version_matches_the_shared_constant() {
    let wit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-sdk/wit/filter.wit"
    ))
    .unwrap();
    let expected = format!(
        "package {}@{};",
        meshfilter_common::interface::PACKAGE,
        meshfilter_common::interface::VERSION
    );
    assert!(
        wit.contains(&expected),
        "filter.wit must declare {expected}"
    );
}

#[test]
fn every_hook_runs_through_the_cfp_scope_module() {
    let mut dir = ConfigMapDir::new();
    let cfp = module_bytes("cfp-scope");
    dir.update(&[
        (
            "filters.yaml",
            FilterManifest::single_yaml("cfp-scope.wasm").as_bytes(),
        ),
        ("cfp-scope.wasm", &cfp),
    ]);
    let rt = runtime_for(&dir, EngineConfig::default()).expect("loads");
    let g = rt.current();

    // Export: the CFP's label opt-in and scope annotation.
    let v = g.decide_export(
        &endpoint(
            &[("clustermesh.cilium.io/sync", "true")],
            &[("clustermesh.cilium.io/sync-scope", "regional")],
        ),
        None,
    );
    assert_eq!(v.decision.scope(), Some(&SyncScope::Region), "{v:?}");
    assert!(
        matches!(v.decided_by, Decided::Filter { ref module, position: 0, memo_hit: false } if &**module == "cfp-scope.wasm")
    );
    let v = g.decide_export(&endpoint(&[], &[]), None);
    assert!(
        matches!(v.decision, ExportDecision::Skip { .. }),
        "not opted in: {v:?}"
    );
    let v = g.decide_export(
        &endpoint(
            &[("clustermesh.cilium.io/sync", "true")],
            &[("clustermesh.cilium.io/sync-scope", "bogus value")],
        ),
        None,
    );
    assert!(
        matches!(v.decision, ExportDecision::Skip { .. }),
        "invalid scope is a skip: {v:?}"
    );
    assert!(
        v.decision.reason().contains("bogus value"),
        "reason names the bad value: {v:?}"
    );

    // Import: a regional endpoint from another region stays out, from ours comes in.
    let remote = |region: &str, scope: &str| {
        let mut ep = (*endpoint(&[], &[])).clone();
        ep.sync_scope = Some(scope.into());
        ep.origin = Locality {
            cluster: "other".into(),
            zone: Some(format!("{region}a")),
            region: Some(region.into()),
        };
        Arc::new(ep)
    };
    assert!(
        !g.decide_import(&remote("us-east-1", "regional"), None)
            .decision
            .keeps()
    );
    assert!(
        g.decide_import(&remote("eu-west-1", "regional"), None)
            .decision
            .keeps()
    );
    assert!(
        g.decide_import(&remote("us-east-1", "global"), None)
            .decision
            .keeps()
    );
    assert!(
        !g.decide_import(&remote("eu-west-1", "cluster"), None)
            .decision
            .keeps()
    );

    // Miss: the owner of the covering pod CIDR first.
    let req = Arc::new(MissInput {
        address: "10.2.3.4".into(),
        covering_prefix: Some("10.2.3.0/24".into()),
        tunnel_endpoint: Some("172.20.2.1".into()),
        local_node: "node-a".into(),
        candidates: vec![
            CandidateCluster {
                locality: Locality::cluster("prod-us-1"),
                owns_prefix: false,
            },
            CandidateCluster {
                locality: Locality::cluster("prod-eu-2"),
                owns_prefix: true,
            },
        ],
    });
    match g.decide_miss(&req).decision {
        MissDecision::Resolve { clusters, .. } => assert_eq!(clusters, ["prod-eu-2", "prod-us-1"]),
        other => panic!("expected resolve, got {other:?}"),
    }
    let none = Arc::new(MissInput {
        address: "10.9.9.9".into(),
        ..Default::default()
    });
    assert!(matches!(
        g.decide_miss(&none).decision,
        MissDecision::Ignore { .. }
    ));
}

#[test]
fn chains_compose_first_decisive_answer_wins() {
    let mut dir = ConfigMapDir::new();
    let manifest = r#"
import:
  chain:
    - module: region-pairs.wasm
      config: {pairs: [["eu-west-1", "us-east-1"]]}
    - module: cfp-scope.wasm
export:
  otherwise: closed
  chain:
    - module: namespace-allowlist.wasm
      config: {teams: [{name: payments, namespaces: ["payments"], scope: regional}], otherwise: abstain}
"#;
    dir.update(&[
        ("filters.yaml", manifest.as_bytes()),
        ("cfp-scope.wasm", &module_bytes("cfp-scope")),
        ("region-pairs.wasm", &module_bytes("region-pairs")),
        (
            "namespace-allowlist.wasm",
            &module_bytes("namespace-allowlist"),
        ),
    ]);
    let rt = runtime_for(&dir, EngineConfig::default()).expect("loads");
    let g = rt.current();
    let regional_from = |region: &str| {
        let mut ep = (*endpoint(&[], &[])).clone();
        ep.sync_scope = Some("regional".into());
        ep.origin = Locality {
            cluster: "c".into(),
            zone: None,
            region: Some(region.into()),
        };
        Arc::new(ep)
    };
    // The DR partner keeps it (first filter decides) ...
    let v = g.decide_import(&regional_from("us-east-1"), None);
    assert!(v.decision.keeps(), "{v:?}");
    assert!(matches!(v.decided_by, Decided::Filter { position: 0, .. }));
    // ... any other region falls through to cfp-scope, which skips it.
    let v = g.decide_import(&regional_from("ap-south-1"), None);
    assert!(!v.decision.keeps(), "{v:?}");
    assert!(matches!(v.decided_by, Decided::Filter { position: 1, .. }));
    // Export: allow-listed namespace syncs, anything else falls to `otherwise: closed`.
    let mut payments = (*endpoint(&[], &[])).clone();
    payments.namespace = "payments".into();
    let v = g.decide_export(&Arc::new(payments), None);
    assert_eq!(v.decision.scope(), Some(&SyncScope::Region), "{v:?}");
    let v = g.decide_export(&endpoint(&[], &[]), None);
    assert!(matches!(v.decision, ExportDecision::Skip { .. }));
    assert!(matches!(v.decided_by, Decided::Otherwise { .. }));
}

#[test]
fn memoisation_costs_one_call_per_distinct_read_set() {
    // 500K endpoints over 25K identities; the module reads one label that is distinct
    // per identity, so it must run 25K times, not 500K.
    const ENDPOINTS: usize = 500_000;
    const IDENTITIES: usize = 25_000;
    let mut dir = ConfigMapDir::new();
    let manifest = misbehave_manifest(json!({"onExport": "read-label:identity-key"}));
    dir.update(&[
        ("filters.yaml", manifest.as_bytes()),
        ("misbehave.wasm", &module_bytes("misbehave")),
    ]);
    let rt = runtime_for(&dir, EngineConfig::default()).expect("loads");
    let g = rt.current();
    let base_calls = g.guest_calls(Hook::Export)[0];
    let template: Vec<Arc<EndpointInput>> = (0..IDENTITIES)
        .map(|i| {
            let mut ep =
                (*endpoint(&[("identity-key", &format!("id-{i}")), ("app", "web")], &[])).clone();
            ep.identity = 65_536 + i as u32;
            Arc::new(ep)
        })
        .collect();
    for j in 0..ENDPOINTS {
        let t = &template[j % IDENTITIES];
        // A distinct endpoint every time (pod name and IP differ), same identity labels.
        let mut ep = (**t).clone();
        ep.pod_name = format!("pod-{j}");
        ep.ip = format!("10.{}.{}.{}", j >> 16, (j >> 8) & 0xff, j & 0xff);
        let v = g.decide_export(&Arc::new(ep), None);
        assert_eq!(
            v.decision.reason(),
            format!("id-{}", j % IDENTITIES),
            "memo must answer what the module would"
        );
    }
    let calls = g.guest_calls(Hook::Export)[0] - base_calls;
    assert_eq!(
        calls as usize, IDENTITIES,
        "one module call per distinct value read"
    );
}

#[test]
fn memoisation_is_correct_across_a_reload() {
    let mut dir = ConfigMapDir::new();
    let m = module_bytes("misbehave");
    let v1 = misbehave_manifest(json!({"onExport": "read-label:tier", "version": "v1"}));
    dir.update(&[("filters.yaml", v1.as_bytes()), ("misbehave.wasm", &m)]);
    let rt = runtime_for(&dir, EngineConfig::default()).expect("loads");
    let ep = endpoint(&[("tier", "web")], &[]);
    let first = rt.decide_export(&ep, None);
    let again = rt.decide_export(&ep, None);
    assert!(
        matches!(again.decided_by, Decided::Filter { memo_hit: true, .. }),
        "second call is memoised"
    );
    assert_eq!(first.decision, again.decision);

    // Same module, new config: a new instance and an empty memo.
    let v2 = misbehave_manifest(json!({"onExport": "read-label:tier", "version": "v2"}));
    dir.update(&[("filters.yaml", v2.as_bytes()), ("misbehave.wasm", &m)]);
    assert_eq!(rt.reload().expect("reload"), Some(2));
    let after = rt.decide_export(&ep, None);
    assert!(
        matches!(
            after.decided_by,
            Decided::Filter {
                memo_hit: false,
                ..
            }
        ),
        "{after:?}"
    );
    assert_eq!(after.generation, 2);
    assert_eq!(after.decision.reason(), "v2:web");

    // Nothing changed: no new generation, the memo survives.
    assert_eq!(rt.reload().expect("reload"), None);
    assert!(matches!(
        rt.decide_export(&ep, None).decided_by,
        Decided::Filter { memo_hit: true, .. }
    ));
}

#[test]
fn hot_reload_under_concurrent_calls_fails_no_decision() {
    let mut dir = ConfigMapDir::new();
    let m = module_bytes("misbehave");
    let manifest_for =
        |n: u64| misbehave_manifest(json!({"onExport": "sync-global", "version": format!("v{n}")}));
    dir.update(&[
        ("filters.yaml", manifest_for(1).as_bytes()),
        ("misbehave.wasm", &m),
    ]);
    let rt = runtime_for(&dir, EngineConfig::default()).expect("loads");
    let _watch = rt
        .watch(Duration::from_millis(30), Duration::from_secs(60))
        .expect("watch")
        .expect("a directory");

    let stop = Arc::new(AtomicBool::new(false));
    let decisions = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (rt, stop, decisions) = (rt.clone(), stop.clone(), decisions.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    // Distinct endpoints defeat the memo so the module really runs.
                    let mut ep = (*endpoint(&[], &[])).clone();
                    ep.pod_name = format!("w{w}-{i}");
                    ep.identity = i;
                    i += 1;
                    let g = rt.current();
                    let v = g.decide_export(&Arc::new(ep), None);
                    assert!(
                        matches!(v.decided_by, Decided::Filter { .. }),
                        "in-flight decision failed: {v:?}"
                    );
                    // The decision comes from the generation the call started on.
                    assert_eq!(reason(&v.decision), format!("v{}", g.number), "{v:?}");
                    decisions.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    for n in 2..=6u64 {
        dir.update(&[
            ("filters.yaml", manifest_for(n).as_bytes()),
            ("misbehave.wasm", &m),
        ]);
        assert!(
            wait_for(Duration::from_secs(10), || rt.current().number == n),
            "the watcher did not swap in generation {n} (serving {})",
            rt.current().number
        );
        std::thread::sleep(Duration::from_millis(40));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("no worker saw a failed decision");
    }
    assert!(
        decisions.load(Ordering::Relaxed) > 100,
        "workers made decisions throughout"
    );
}

/// A reload that must fail, leaving generation 1 serving.
fn assert_rejected(files: &[(&str, &[u8])], check: impl Fn(&LoadError)) -> Duration {
    assert_rejected_with(EngineConfig::default(), files, check)
}

/// [`assert_rejected`] with an engine config of the test's choosing.
fn assert_rejected_with(
    engine: EngineConfig,
    files: &[(&str, &[u8])],
    check: impl Fn(&LoadError),
) -> Duration {
    let mut dir = ConfigMapDir::new();
    let good = misbehave_manifest(json!({"onExport": "sync-global", "version": "good"}));
    let m = module_bytes("misbehave");
    dir.update(&[("filters.yaml", good.as_bytes()), ("misbehave.wasm", &m)]);
    let rt = runtime_for(&dir, engine).expect("loads");
    dir.update(files);
    let started = Instant::now();
    let err = rt.reload().expect_err("the bad reload must fail");
    let took = started.elapsed();
    check(&err);
    assert_eq!(rt.current().number, 1, "the old generation keeps serving");
    let v = rt.decide_export(&endpoint(&[], &[]), None);
    assert_eq!(v.decision.reason(), "good", "{v:?}");
    assert!(
        rt.info().last_reload_error.is_some(),
        "status shows the error"
    );
    took
}

#[test]
fn a_corrupt_module_file_is_refused() {
    let m = module_bytes("misbehave");
    let manifest = misbehave_manifest(json!({"onExport": "sync-global"}));
    assert_rejected(
        &[
            ("filters.yaml", manifest.as_bytes()),
            ("misbehave.wasm", &m[..m.len() / 2]),
        ],
        |e| {
            assert!(
                matches!(e, LoadError::Corrupt { module, .. } if module == "misbehave.wasm"),
                "{e}"
            )
        },
    );
    assert_rejected(
        &[
            ("filters.yaml", manifest.as_bytes()),
            ("misbehave.wasm", b"not wasm at all"),
        ],
        |e| assert!(matches!(e, LoadError::Corrupt { .. }), "{e}"),
    );
}

#[test]
fn a_module_for_another_interface_version_is_refused() {
    // Rewrite every copy of the interface line (the section, and the constant it was
    // built from), as a module built against a future major version would carry.
    let mut m = module_bytes("misbehave");
    let needle = format!(
        "interface=meshfilter:filter@{}",
        meshfilter_common::interface::VERSION
    );
    let patched = needle.replace("@0.", "@9.");
    let mut found = 0;
    while let Some(at) = m.windows(needle.len()).position(|w| w == needle.as_bytes()) {
        m[at..at + needle.len()].copy_from_slice(patched.as_bytes());
        found += 1;
    }
    assert!(found > 0, "metadata section in the module");
    let manifest = misbehave_manifest(json!({"onExport": "sync-global"}));
    assert_rejected(
        &[
            ("filters.yaml", manifest.as_bytes()),
            ("misbehave.wasm", &m),
        ],
        |e| {
            assert!(
                matches!(e, LoadError::Interface { found, .. } if found.ends_with("@9.1.0")),
                "{e}"
            );
            assert!(e.to_string().contains("misbehave.wasm"), "{e}");
        },
    );
}

#[test]
fn a_rejected_config_is_never_activated() {
    let manifest = misbehave_manifest(json!({"configure": "reject"}));
    assert_rejected(
        &[
            ("filters.yaml", manifest.as_bytes()),
            ("misbehave.wasm", &module_bytes("misbehave")),
        ],
        |e| assert!(matches!(e, LoadError::ConfigRejected { .. }), "{e}"),
    );
    let bad_yaml = b"export:\n  chain: [{module: misbehave.wasm, colour: red}]\n";
    assert_rejected(
        &[
            ("filters.yaml", bad_yaml),
            ("misbehave.wasm", &module_bytes("misbehave")),
        ],
        |e| {
            assert!(
                matches!(e, LoadError::Manifest { .. }) && e.to_string().contains("colour"),
                "{e}"
            )
        },
    );
}

#[test]
fn a_trapping_module_is_refused() {
    let manifest = misbehave_manifest(json!({"onExport": "trap"}));
    assert_rejected(
        &[
            ("filters.yaml", manifest.as_bytes()),
            ("misbehave.wasm", &module_bytes("misbehave")),
        ],
        |e| {
            assert!(
                matches!(e, LoadError::SelfTest { .. }) && e.to_string().contains("trapped"),
                "{e}"
            )
        },
    );
}

#[test]
fn an_infinite_loop_is_interrupted_within_its_deadline() {
    let manifest = misbehave_manifest(json!({"onExport": "loop"}));
    let took = assert_rejected(
        &[
            ("filters.yaml", manifest.as_bytes()),
            ("misbehave.wasm", &module_bytes("misbehave")),
        ],
        |e| assert!(e.to_string().contains("deadline"), "{e}"),
    );
    // Compiling is cached; the probe must stop at the 50 ms deadline, not run away.
    assert!(took < Duration::from_secs(5), "reload took {took:?}");
}

#[test]
fn a_memory_bomb_hits_the_limit() {
    // A small limit, so filling it takes far less than the call deadline even on a busy
    // machine: the failure must be the memory limit, not the clock.
    let manifest = misbehave_manifest(json!({"onExport": "oom"}));
    let engine = EngineConfig {
        memory_bytes: 8 << 20,
        call_timeout: Duration::from_secs(2),
        ..EngineConfig::default()
    };
    assert_rejected_with(
        engine,
        &[
            ("filters.yaml", manifest.as_bytes()),
            ("misbehave.wasm", &module_bytes("misbehave")),
        ],
        |e| assert!(e.to_string().contains("memory limit"), "{e}"),
    );
}

#[test]
fn sha256_pinning_rejects_a_tampered_module() {
    let m = module_bytes("cfp-scope");
    let sha = meshfilter_tests_sha256(&m);
    let mut dir = ConfigMapDir::new();
    dir.update(&[
        (
            "filters.yaml",
            FilterManifest::single_yaml("cfp-scope.wasm").as_bytes(),
        ),
        ("cfp-scope.wasm", &m),
    ]);
    let pins: BTreeMap<String, String> = [("cfp-scope.wasm".to_string(), sha.clone())].into();
    let rt = FilterRuntime::new(
        RuntimeConfig {
            engine: EngineConfig::default(),
            source: ModuleSource::Directory(dir.path().to_path_buf()),
            pins: pins.clone(),
            local: eu(),
        },
        FilterMetrics::default(),
    )
    .expect("the pinned module loads");
    let mut tampered = m.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    dir.update(&[
        (
            "filters.yaml",
            FilterManifest::single_yaml("cfp-scope.wasm").as_bytes(),
        ),
        ("cfp-scope.wasm", &tampered),
    ]);
    let err = rt.reload().expect_err("tampered module refused");
    assert!(
        matches!(&err, LoadError::PinMismatch { expected, .. } if *expected == sha),
        "{err}"
    );
    assert_eq!(rt.current().number, 1);
}

fn meshfilter_tests_sha256(bytes: &[u8]) -> String {
    // The runtime reports the digest of what it loaded; use it as the reference.
    let engine = FilterEngine::new(EngineConfig::default()).unwrap();
    let set = BuiltinSet {
        modules: vec![("x.wasm".into(), Arc::from(bytes.to_vec()))],
        manifest: FilterManifest::single("x.wasm", serde_json::Value::Null),
    };
    let rt = FilterRuntime::with_engine(
        engine,
        ModuleSource::Builtin(set),
        BTreeMap::new(),
        eu(),
        FilterMetrics::default(),
    )
    .unwrap();
    rt.info().modules[0].sha256.clone()
}

#[test]
fn call_failures_get_the_hooks_failure_policy() {
    let mut dir = ConfigMapDir::new();
    let manifest = r#"
export:
  onFailure: fail-closed
  chain: [{module: misbehave.wasm, config: {onExport: "trap-if-label:boom"}}]
import:
  onFailure: keep-last-decision
  chain: [{module: misbehave.wasm, config: {onImport: "loop-if-label:boom"}}]
"#;
    dir.update(&[
        ("filters.yaml", manifest.as_bytes()),
        ("misbehave.wasm", &module_bytes("misbehave")),
    ]);
    let rt = runtime_for(&dir, EngineConfig::default()).expect("loads");

    let boom = endpoint(&[("boom", "1")], &[]);
    let v = rt.decide_export(&boom, None);
    assert!(
        matches!(v.decision, ExportDecision::Skip { .. }),
        "fail-closed export skips: {v:?}"
    );
    assert!(
        matches!(&v.decided_by, Decided::FailurePolicy { policy: FailurePolicy::FailClosed, failure } if failure.kind() == "trap")
    );
    // The host is fine and the next call gets a fresh instance.
    let ok = rt.decide_export(&endpoint(&[], &[]), None);
    assert!(matches!(ok.decided_by, Decided::Filter { .. }), "{ok:?}");

    let previous = ImportDecision::Skip {
        reason: "earlier".into(),
    };
    let started = Instant::now();
    let v = rt.decide_import(&boom, Some(&previous));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "loop interrupted at its deadline"
    );
    assert_eq!(
        v.decision, previous,
        "keep-last-decision repeats the previous one"
    );
    assert!(
        matches!(&v.decided_by, Decided::FailurePolicy { failure, .. } if failure.kind() == "timeout")
    );
}

#[test]
fn the_disk_cache_reuses_only_artifacts_the_host_wrote() {
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("artifacts");
    let config = EngineConfig {
        disk_cache: Some(cache_dir.clone()),
        ..EngineConfig::default()
    };
    let m = module_bytes("cfp-scope");
    let load = |config: &EngineConfig| {
        let set = BuiltinSet {
            modules: vec![("cfp-scope.wasm".into(), Arc::from(m.clone()))],
            manifest: FilterManifest::single("cfp-scope.wasm", serde_json::Value::Null),
        };
        let engine = FilterEngine::new(config.clone()).expect("engine");
        FilterRuntime::with_engine(
            engine,
            ModuleSource::Builtin(set),
            BTreeMap::new(),
            eu(),
            FilterMetrics::default(),
        )
        .expect("loads")
    };
    load(&config);
    let artifacts: Vec<_> = walk(&cache_dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(
        artifacts.len(),
        1,
        "one compiled artifact written: {artifacts:?}"
    );

    // A second engine reuses it; one with a tampered artifact recompiles and still serves.
    let started = Instant::now();
    let rt = load(&config);
    let warm = started.elapsed();
    assert!(
        rt.decide_export(&endpoint(&[], &[]), None)
            .decision
            .reason()
            .contains("opt"),
        "serves after a cached load"
    );
    let mut bytes = std::fs::read(&artifacts[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&artifacts[0], bytes).unwrap();
    let rt = load(&config);
    assert!(matches!(
        rt.decide_export(&endpoint(&[], &[]), None).decided_by,
        Decided::Filter { .. }
    ));
    eprintln!("load from the disk cache took {warm:?}");

    // A cache directory others can write to is refused outright.
    let open = cache.path().join("world-writable");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(
        &open,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o777),
    )
    .unwrap();
    let err = FilterEngine::new(EngineConfig {
        disk_cache: Some(open),
        ..EngineConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("not writable by others"), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
