//! `meshfilter bench ...` and `meshfilter filter bench`: flags in, a benchmark of
//! `meshfilter-bench` run, its exit code out. Each benchmark prints its own figures.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use meshfilter_bench::{ChaosOptions, FilterBenchOptions, MeshBenchOptions, NodeBenchOptions};
use meshfilter_whatif::{SyntheticMesh, synthetic};

use crate::builtin;
use crate::cli::{
    BenchArgs, BenchChaosArgs, BenchDiffArgs, BenchMeshArgs, BenchNodeArgs, DiffArgs,
};

/// `meshfilter filter bench`: the module loaded twice, memoisation off and on.
pub fn filter(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let engine = super::engine()?;
    let local = super::locality(&args.module);
    meshfilter_bench::filter::run(&FilterBenchOptions {
        uncached: super::load_single(&engine, &args.module, local.clone(), false)?,
        memoised: super::load_single(&engine, &args.module, local, true)?,
        iterations: args.iterations,
        endpoints: args.endpoints,
        identities: args.identities,
        labels: args.labels,
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn mesh(args: &BenchMeshArgs) -> anyhow::Result<ExitCode> {
    meshfilter_bench::mesh::run(&MeshBenchOptions {
        binary: this_binary()?,
        remotes: args.remotes,
        endpoints: args.endpoints,
        opted_in: args.opted_in,
        identities: args.identities,
        nodes: args.nodes,
        timeout: Duration::from_secs(args.timeout_secs),
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn node(args: &BenchNodeArgs) -> anyhow::Result<ExitCode> {
    meshfilter_bench::node::run(&NodeBenchOptions {
        binary: this_binary()?,
        addresses: args.addresses,
        remote_addresses: args.remote_addresses,
        interval: args.interval,
        flood: args.flood,
        filters: builtin::default_set(serde_json::Value::Null),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `filter diff` over a synthetic mesh of production size: stock Cilium (cfp-scope
/// opt-out) against the CFP default (opt-in).
pub fn diff(args: &BenchDiffArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("snapshot.json");
    let made = Instant::now();
    let snapshot = synthetic(&SyntheticMesh {
        clusters: args.clusters,
        endpoints: args.endpoints,
        opted_in_percent: args.opted_in,
    });
    snapshot.write(&path)?;
    let bytes = std::fs::metadata(&path)?.len();
    eprintln!(
        "snapshot: {} clusters x {} endpoints, {:.1} MB, written in {:.1} s",
        args.clusters,
        args.endpoints,
        bytes as f64 / 1e6,
        made.elapsed().as_secs_f64()
    );
    drop(snapshot);
    let started = Instant::now();
    let code = super::diff::run(&DiffArgs {
        old: "builtin:cfp-scope".into(),
        new: "builtin:cfp-scope".into(),
        snapshot: path,
        old_config: Some(r#"{"default": "opt-out"}"#.into()),
        new_config: Some(r#"{"default": "opt-in"}"#.into()),
        json: false,
        top: 10,
        max_stopped: None,
        max_removed: None,
        threads: args.threads,
    })?;
    eprintln!(
        "filter diff, snapshot read included: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(code)
}

pub fn chaos(args: &BenchChaosArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(clock_seed);
    println!("chaos soak: seed {seed}");
    let report = meshfilter_bench::chaos::run(&ChaosOptions {
        binary: this_binary()?,
        minutes: args.minutes,
        remotes: args.remotes,
        endpoints: args.endpoints,
        seed,
        logs: args.logs.clone(),
    })?;
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// This binary: the benchmarks run it as `meshfilter mesh` and `meshfilter export`.
fn this_binary() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("finding the meshfilter binary")
}

/// A seed from the clock and the process ID: different on every run, printed so the run
/// can be replayed.
fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    nanos ^ (u64::from(std::process::id()) << 32)
}
