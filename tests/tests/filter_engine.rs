//! The filter engine end to end: real modules built from `filters/` and
//! `tests/filters/misbehave`, run by the real runtime.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meshfilter_filter_runtime::{
    BuiltinSet, CallFailure, CandidateCluster, Decided, EndpointInput, EngineConfig,
    ExportDecision, FailurePolicy, FilterEngine, FilterManifest, FilterMetrics, FilterRuntime,
    Hook, ImportDecision, LoadError, Locality, MAX_ERROR_BYTES, MAX_LOG_LINE_BYTES,
    MAX_REASON_BYTES, MissDecision, MissInput, ModuleSource, RuntimeConfig, SyncScope,
};
use meshfilter_tests::{ConfigMapDir, filter_metric, module_bytes, wait_for};
use serde_json::json;

fn eu() -> Locality {
    Locality {
        cluster: "prod-eu-1".into(),
        zone: Some("eu-west-1a".into()),
        region: Some("eu-west-1".into()),
    }
}

fn runtime_for(dir: &ConfigMapDir, engine: EngineConfig) -> Result<Arc<FilterRuntime>, LoadError> {
    runtime_counted(dir, engine, FilterMetrics::default())
}

/// [`runtime_for`] counting into `metrics`.
fn runtime_counted(
    dir: &ConfigMapDir,
    engine: EngineConfig,
    metrics: FilterMetrics,
) -> Result<Arc<FilterRuntime>, LoadError> {
    FilterRuntime::new(
        RuntimeConfig {
            engine,
            source: ModuleSource::Directory(dir.path().to_path_buf()),
            pins: BTreeMap::new(),
            local: eu(),
        },
        metrics,
    )
}

/// A module directory holding misbehave and `manifest`.
fn misbehave_dir(manifest: &str) -> ConfigMapDir {
    let mut dir = ConfigMapDir::new();
    dir.update(&[
        ("filters.yaml", manifest.as_bytes()),
        ("misbehave.wasm", &module_bytes("misbehave")),
    ]);
    dir
}

/// A runtime serving misbehave with `manifest`, counting into the metrics returned; the
/// directory is returned to keep it alive.
fn misbehave_counted(manifest: &str) -> (ConfigMapDir, FilterMetrics, Arc<FilterRuntime>) {
    let dir = misbehave_dir(manifest);
    let metrics = FilterMetrics::default();
    let rt = runtime_counted(&dir, EngineConfig::default(), metrics.clone()).expect("loads");
    (dir, metrics, rt)
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
        meshfilter_contract::interface::PACKAGE,
        meshfilter_contract::interface::VERSION
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

/// [`assert_rejected`] for a reload to misbehave with `config` on every hook.
fn assert_misbehave_rejected(config: serde_json::Value, check: impl Fn(&LoadError)) -> Duration {
    let manifest = misbehave_manifest(config);
    assert_rejected(
        &[
            ("filters.yaml", manifest.as_bytes()),
            ("misbehave.wasm", &module_bytes("misbehave")),
        ],
        check,
    )
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
        meshfilter_contract::interface::VERSION
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
                matches!(e, LoadError::Interface { found, .. }
                    if patched.strip_prefix("interface=") == Some(found.as_str())),
                "{e}"
            );
            assert!(e.to_string().contains("misbehave.wasm"), "{e}");
        },
    );
}

#[test]
fn a_rejected_config_is_never_activated() {
    assert_misbehave_rejected(json!({"configure": "reject"}), |e| {
        assert!(matches!(e, LoadError::ConfigRejected { .. }), "{e}")
    });
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
    assert_misbehave_rejected(json!({"onExport": "trap"}), |e| {
        assert!(
            matches!(e, LoadError::SelfTest { .. }) && e.to_string().contains("trapped"),
            "{e}"
        )
    });
}

#[test]
fn an_infinite_loop_is_interrupted_within_its_deadline() {
    let took = assert_misbehave_rejected(json!({"onExport": "loop"}), |e| {
        assert!(e.to_string().contains("deadline"), "{e}")
    });
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
    // The digest from coreutils' sha256sum, not from the runtime under test: an operator
    // pins what `sha256sum module.wasm` prints.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(file.path())
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
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

/// A guest that sleeps asks the host to wait (`pollable.block` or `poll`), and a deadline
/// cannot interrupt a host call: the host must refuse the call itself.
#[test]
fn a_sleeping_module_is_refused_at_once() {
    let took = assert_misbehave_rejected(json!({"onExport": "sleep"}), |e| {
        let text = e.to_string();
        assert!(matches!(e, LoadError::SelfTest { .. }), "{e}");
        assert!(
            text.contains("called a blocking WASI function (wasi:io/poll.")
                && text.contains("filters must not block"),
            "{e}"
        );
    });
    // The module asks for 30 s; the probe fails as soon as it asks.
    assert!(took < Duration::from_secs(1), "reload took {took:?}");
}

#[test]
fn sleeping_for_some_endpoints_passes_the_probe_but_fails_fast_and_counted() {
    let manifest = r#"
import:
  onFailure: keep-last-decision
  chain: [{module: misbehave.wasm, config: {onImport: "sleep-if-label:slow"}}]
"#;
    let (_dir, metrics, rt) = misbehave_counted(manifest);
    let blocked =
        r#"meshfilter_filter_failures_total{module="misbehave.wasm",hook="import",kind="blocked"}"#;
    assert_eq!(filter_metric(&metrics, blocked), 0);

    let previous = ImportDecision::Skip {
        reason: "earlier".into(),
    };
    let slow = endpoint(&[("slow", "yes")], &[]);
    for round in 1..=3 {
        let started = Instant::now();
        let v = rt.decide_import(&slow, Some(&previous));
        let took = started.elapsed();
        eprintln!("blocked call {round} decided in {took:?}");
        assert!(
            took < Duration::from_millis(500),
            "took {took:?} for a 30 s sleep"
        );
        assert_eq!(v.decision, previous, "keep-last-decision: {v:?}");
        match &v.decided_by {
            Decided::FailurePolicy { failure, .. } => {
                assert_eq!(failure.kind(), "blocked");
                assert!(
                    matches!(failure, CallFailure::Blocked { module, function }
                        if module == "misbehave.wasm" && function.starts_with("wasi:io/poll.")),
                    "{failure:?}"
                );
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(
            filter_metric(&metrics, blocked),
            round,
            "counted with the module"
        );
    }
    // Other endpoints are decided by the module, on a fresh instance.
    let v = rt.decide_import(&endpoint(&[], &[]), None);
    assert!(
        matches!(v.decided_by, Decided::Filter { .. }) && v.decision.keeps(),
        "{v:?}"
    );
}

#[test]
fn stdout_and_the_host_log_keep_working_with_lines_cut() {
    // Not memoised: the module reads nothing, so the memo would answer every call.
    let manifest = r#"
export:
  chain: [{module: misbehave.wasm, memoize: false, config: {onExport: huge-log}}]
"#;
    let (_dir, metrics, rt) = misbehave_counted(manifest);
    let cut_lines = r#"meshfilter_filter_truncated_total{module="misbehave.wasm",what="log"}"#;
    let before = filter_metric(&metrics, cut_lines);
    assert_eq!(before, 2, "the probe logged and printed one line each");
    for _ in 0..3 {
        let v = rt.decide_export(&endpoint(&[], &[]), None);
        assert!(
            matches!(
                v.decided_by,
                Decided::Filter {
                    memo_hit: false,
                    ..
                }
            ),
            "printing 100 kB to stdout must not fail the call: {v:?}"
        );
    }
    assert_eq!(
        filter_metric(&metrics, cut_lines),
        before + 6,
        "every line, logged or printed, was cut at {MAX_LOG_LINE_BYTES} bytes"
    );
}

#[test]
fn a_huge_reason_is_cut_before_it_is_kept() {
    let manifest = misbehave_manifest(json!({"onExport": "huge-reason"}));
    let (_dir, metrics, rt) = misbehave_counted(&manifest);
    let reasons_cut = r#"meshfilter_filter_truncated_total{module="misbehave.wasm",what="reason"}"#;
    assert_eq!(
        filter_metric(&metrics, reasons_cut),
        1,
        "the probe's reason was cut"
    );
    // The module reads nothing, so the probe's decision is memoised for every endpoint:
    // the memo holds the cut reason, not the original.
    let ep = endpoint(&[], &[]);
    let first = rt.decide_export(&ep, None);
    assert!(matches!(
        first.decided_by,
        Decided::Filter { memo_hit: true, .. }
    ));
    let reason = first.decision.reason();
    assert!(reason.len() <= MAX_REASON_BYTES, "{} bytes", reason.len());
    assert!(
        reason.ends_with("… (truncated, 100000 bytes)"),
        "the cut is marked: {reason}"
    );
    assert!(
        reason
            .trim_end_matches("… (truncated, 100000 bytes)")
            .chars()
            .all(|c| c == 'é'),
        "cut on a character boundary: {reason}"
    );
    assert_eq!(filter_metric(&metrics, reasons_cut), 1);
}

#[test]
fn a_huge_config_error_is_cut_in_the_error_and_in_status() {
    let mut dir = ConfigMapDir::new();
    let good = misbehave_manifest(json!({"onExport": "sync-global", "version": "good"}));
    let m = module_bytes("misbehave");
    dir.update(&[("filters.yaml", good.as_bytes()), ("misbehave.wasm", &m)]);
    let metrics = FilterMetrics::default();
    let rt = runtime_counted(&dir, EngineConfig::default(), metrics.clone()).expect("loads");
    let bad = misbehave_manifest(json!({"configure": "huge-error"}));
    dir.update(&[("filters.yaml", bad.as_bytes()), ("misbehave.wasm", &m)]);
    let err = rt.reload().expect_err("the config is rejected");
    match &err {
        LoadError::ConfigRejected { module, message } => {
            assert_eq!(module, "misbehave.wasm");
            assert!(message.len() <= MAX_ERROR_BYTES, "{} bytes", message.len());
            assert!(
                message.ends_with(&format!("… (truncated, {} bytes)", 8 << 20)),
                "{}",
                &message[message.len() - 64..]
            );
        }
        other => panic!("expected a rejected config, got {other}"),
    }
    let status = rt.info().last_reload_error.expect("status shows the error");
    assert!(status.len() <= MAX_ERROR_BYTES, "{} bytes", status.len());
    assert!(
        status.contains("misbehave.wasm rejected its config"),
        "{status:.200}"
    );
    assert_eq!(
        filter_metric(
            &metrics,
            r#"meshfilter_filter_truncated_total{module="misbehave.wasm",what="error"}"#
        ),
        1
    );
    assert_eq!(rt.current().number, 1, "the old generation keeps serving");
}

/// Two runtimes on one engine, as `meshfilter demo` runs one per cluster.
fn runtime_on(
    engine: &Arc<FilterEngine>,
    dir: &ConfigMapDir,
    metrics: &FilterMetrics,
) -> Arc<FilterRuntime> {
    FilterRuntime::with_engine(
        engine.clone(),
        ModuleSource::Directory(dir.path().to_path_buf()),
        BTreeMap::new(),
        eu(),
        metrics.clone(),
    )
    .expect("loads")
}

#[test]
fn live_instances_share_one_memory_budget() {
    const MIB: usize = 1 << 20;
    let engine = FilterEngine::new(EngineConfig {
        memory_bytes: 16 * MIB,
        memory_budget_bytes: 24 * MIB,
        // Filling memory must hit a limit, not the clock, even on a busy machine.
        call_timeout: Duration::from_secs(2),
        ..EngineConfig::default()
    })
    .expect("engine");
    let metrics = FilterMetrics::default();

    // The first module grows its instance to 12 MiB and keeps it while it lives.
    let holder_dir = misbehave_dir(&misbehave_manifest(json!({"onExport": "grow:12"})));
    let holder = runtime_on(&engine, &holder_dir, &metrics);
    let held = engine.memory_reserved_bytes();
    assert!(held >= 12 * MIB, "held {held} bytes");

    // A second module that fills its memory is stopped by the budget, before its own
    // 16 MiB limit: it cannot take what the first holds.
    let bomb_dir = misbehave_dir(&misbehave_manifest(
        json!({"onExport": "oom-if-label:boom"}),
    ));
    let bomb = runtime_on(&engine, &bomb_dir, &metrics);
    let boom = endpoint(&[("boom", "1")], &[]);
    let out_of_memory = |rt: &FilterRuntime| match rt.decide_export(&boom, None).decided_by {
        Decided::FailurePolicy {
            failure: CallFailure::OutOfMemory { module, message },
            ..
        } => {
            assert_eq!(module, "misbehave.wasm");
            message
        }
        other => panic!("expected out of memory, got {other:?}"),
    };
    let message = out_of_memory(&bomb);
    assert!(
        message.contains(&format!(
            "process-wide Wasm memory budget of {} bytes",
            24 * MIB
        )),
        "{message}"
    );
    assert!(
        engine.memory_reserved_bytes() <= 24 * MIB,
        "never past the budget"
    );
    assert_eq!(
        filter_metric(
            &metrics,
            r#"meshfilter_filter_failures_total{module="misbehave.wasm",hook="export",kind="out-of-memory"}"#
        ),
        1
    );

    // Dropping the first runtime drops its stores and returns their memory: now the bomb
    // runs into its own limit instead.
    drop(holder);
    let after = engine.memory_reserved_bytes();
    assert!(
        held.saturating_sub(after) >= 12 * MIB,
        "the holder's memory came back: {held} then {after} bytes"
    );
    let message = out_of_memory(&bomb);
    assert!(
        message.contains(&format!("limit of {} bytes per instance", 16 * MIB)),
        "{message}"
    );
    drop(bomb);
    assert_eq!(
        engine.memory_reserved_bytes(),
        0,
        "every store gave its share back"
    );
}
