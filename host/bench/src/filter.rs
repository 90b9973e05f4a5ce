//! `meshfilter filter bench`: decision latency and throughput of one module.
//!
//! Three measurements on one thread: uncached Wasm decisions (memoisation off, so every
//! decision runs the module), memoised Wasm decisions over many endpoints that share few
//! identities, and, for the shipped cfp-scope filter, the same logic compiled natively.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshfilter_contract::labels;
use meshfilter_filter_runtime::{EndpointInput, FilterRuntime, Hook, Locality};

use crate::error::BenchError;

/// Endpoints in the hot working set: recently parsed, in cache.
const HOT_SET: usize = 1_000;

/// What `meshfilter filter bench` measures: one module, loaded twice.
#[derive(Clone)]
pub struct FilterBenchOptions {
    /// The module with memoisation off: every decision runs it.
    pub uncached: Arc<FilterRuntime>,
    /// The same module with memoisation on.
    pub memoised: Arc<FilterRuntime>,
    /// Decisions per uncached run.
    pub iterations: usize,
    /// Distinct synthetic endpoints.
    pub endpoints: usize,
    /// Identities (label sets) they share.
    pub identities: usize,
    /// Labels per endpoint.
    pub labels: usize,
}

/// Runs the measurements, printing each as it is taken.
pub fn run(args: &FilterBenchOptions) -> Result<(), BenchError> {
    let local = args.uncached.local().clone();
    let endpoints = synthetic_endpoints(args.endpoints, args.identities.max(1), args.labels);
    println!(
        "endpoints: {} distinct, {} identities, {} labels each; {} decisions per uncached run",
        endpoints.len(),
        args.identities,
        args.labels,
        args.iterations
    );

    // What timing one call costs by itself, to read the figures below against.
    let timer = measure(args.iterations, |i| {
        black_box(i);
    });
    println!(
        "timer overhead      p50 {:>7.0} ns (included in every per-decision figure)",
        timer.p50.as_nanos() as f64
    );

    // Uncached: memoisation off, so every decision runs the module. Measured on a hot
    // working set (as in the pipeline, where an endpoint is decided right after it was
    // parsed) and on the whole cold set.
    let uncached = &args.uncached;
    let generation = uncached.current();
    let hot = &endpoints[..endpoints.len().min(HOT_SET)];
    for ep in hot {
        black_box(generation.decide_export(ep, None));
    }
    let wasm = measure(args.iterations, |i| {
        black_box(generation.decide_export(&hot[i % hot.len()], None));
    });
    report("wasm, uncached", &wasm);
    let cold = measure(args.iterations.min(endpoints.len()), |i| {
        black_box(generation.decide_export(&endpoints[(i * 7919) % endpoints.len()], None));
    });
    report("  (cold endpoints)", &cold);

    let generation = args.memoised.current();
    let started = Instant::now();
    for ep in &endpoints {
        black_box(generation.decide_export(ep, None));
    }
    let first_pass = started.elapsed();
    let calls = generation.memo_sizes(Hook::Export).iter().sum::<usize>();
    let memo = measure(args.iterations, |i| {
        black_box(generation.decide_export(&hot[i % hot.len()], None));
    });
    println!(
        "wasm, memoised      first pass over {} endpoints: {:.1} ms, {} module calls ({} decision paths); {:.2} M effective decisions/s",
        endpoints.len(),
        first_pass.as_secs_f64() * 1e3,
        calls,
        calls,
        endpoints.len() as f64 / first_pass.as_secs_f64() / 1e6
    );
    report("wasm, memoised", &memo);

    let name = uncached
        .info()
        .modules
        .first()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    if name == "cfp-scope" {
        let native = native::measure_cfp_scope(&endpoints, &local, args.iterations)?;
        report("native, cfp-scope", &native);
        println!(
            "wasm/native p50 ratio: {:.1}x",
            wasm.p50.as_secs_f64() / native.p50.as_secs_f64().max(1e-12)
        );
    } else {
        println!(
            "(native comparison only for the shipped cfp-scope filter; this module is {name:?})"
        );
    }
    Ok(())
}

/// Latency distribution of one run.
pub struct Measurement {
    pub count: usize,
    pub total: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

/// Times `count` calls of `f(i)` one by one.
pub fn measure(count: usize, mut f: impl FnMut(usize)) -> Measurement {
    let mut samples = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        f(i);
        samples.push(t.elapsed());
    }
    let total = started.elapsed();
    samples.sort_unstable();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .copied()
    };
    Measurement {
        count,
        total,
        p50: at(0.50).unwrap_or_default(),
        p99: at(0.99).unwrap_or_default(),
    }
}

fn report(label: &str, m: &Measurement) {
    println!(
        "{label:<19} p50 {:>7.0} ns   p99 {:>7.0} ns   {:>6.2} M decisions/s ({} decisions)",
        m.p50.as_nanos() as f64,
        m.p99.as_nanos() as f64,
        m.count as f64 / m.total.as_secs_f64() / 1e6,
        m.count
    );
}

/// Namespace, labels and annotations shared by the endpoints of one identity.
type LabelSet = (String, BTreeMap<String, String>, BTreeMap<String, String>);

/// Endpoints spread over `identities` label sets; 5% opted in, some regional.
pub fn synthetic_endpoints(
    count: usize,
    identities: usize,
    label_count: usize,
) -> Vec<Arc<EndpointInput>> {
    let sets: Vec<LabelSet> = (0..identities)
        .map(|i| {
            let mut l = BTreeMap::new();
            let candidates = [
                ("app", format!("svc-{}", i % 500)),
                ("tier", ["web", "api", "db"][i % 3].to_string()),
                ("team", format!("team-{}", i % 40)),
                ("version", format!("v{}", i % 7)),
                ("component", format!("c{}", i % 13)),
                ("env", "prod".to_string()),
                ("owner", format!("o{}", i % 17)),
                ("cost-center", format!("cc{}", i % 11)),
                ("release", format!("r{i}")),
            ];
            for (k, v) in candidates.into_iter().take(label_count.saturating_sub(1)) {
                l.insert(format!("app.kubernetes.io/{k}"), v);
            }
            if i % 20 == 0 {
                l.insert(labels::SYNC.to_string(), "true".to_string());
            } else if label_count > 0 {
                l.insert("pod-template-hash".to_string(), format!("{i:08x}"));
            }
            let mut a = BTreeMap::new();
            if i % 60 == 0 {
                a.insert(labels::SYNC_SCOPE.to_string(), "regional".to_string());
            }
            (format!("ns-{}", i % 200), l, a)
        })
        .collect();
    (0..count)
        .map(|j| {
            let (ns, labels, annotations) = &sets[j % identities];
            Arc::new(EndpointInput {
                namespace: ns.clone(),
                pod_name: format!("pod-{j}"),
                ip: format!("10.{}.{}.{}", (j >> 16) & 0xff, (j >> 8) & 0xff, j & 0xff),
                node_ip: Some(format!("172.16.{}.{}", (j >> 8) & 0x3f, j & 0xff)),
                identity: 65_536 + (j % identities) as u32,
                labels: labels.clone(),
                annotations: annotations.clone(),
                origin: Locality::cluster("bench"),
                ..Default::default()
            })
        })
        .collect()
}

pub mod native {
    //! The cfp-scope filter compiled natively, run through the guest SDK's native harness:
    //! the same Rust code as the module, without Wasm.
    use meshfilter_guest_sdk::{Endpoint, Filter, testing};

    use super::*;

    pub fn measure_cfp_scope(
        endpoints: &[Arc<EndpointInput>],
        local: &Locality,
        iterations: usize,
    ) -> Result<Measurement, BenchError> {
        let mut sdk_local = meshfilter_guest_sdk::Locality::new(local.cluster.clone());
        sdk_local.zone = local.zone.clone();
        sdk_local.region = local.region.clone();
        testing::set_local(sdk_local);
        let filter: cfp_scope::CfpScope = testing::load("null")
            .map_err(|e| BenchError::Incomplete(format!("cfp-scope, native: {e}")))?;
        // Native endpoints are built up front: the measurement is the decision alone.
        let native: Vec<Endpoint> = endpoints
            .iter()
            .take(iterations.min(endpoints.len()))
            .map(|ep| {
                let mut b = Endpoint::builder()
                    .namespace(ep.namespace.clone())
                    .pod_name(ep.pod_name.clone())
                    .ip(ep.ip.clone())
                    .identity(ep.identity);
                for (k, v) in &ep.labels {
                    b = b.label(k.clone(), v.clone());
                }
                for (k, v) in &ep.annotations {
                    b = b.annotation(k.clone(), v.clone());
                }
                b.build()
            })
            .collect();
        Ok(measure(iterations, |i| {
            black_box(filter.export(&native[i % native.len()]));
        }))
    }
}
