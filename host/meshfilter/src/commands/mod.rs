//! Command implementations.

mod bench;
mod check;
mod demo;
mod diff;
mod export;
mod filter_get;
mod filter_new;
mod mesh;
mod node;
mod serve;
mod snapshot;
mod test;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use meshfilter_filter_runtime::{
    BuiltinSet, EngineConfig, FilterEngine, FilterManifest, FilterMetrics, FilterRuntime, Locality,
    ModuleSource,
};

use crate::builtin;
use crate::cli::{BenchCommand, Command, FilterCommand, LocalityArgs, ModuleArgs};

/// Runs one command; the exit code says whether checks passed.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Filter(FilterCommand::Check(args)) => check::run(&args),
        Command::Filter(FilterCommand::Test(args)) => test::run(&args),
        Command::Filter(FilterCommand::Bench(args)) => bench::filter(&args),
        Command::Filter(FilterCommand::Diff(args)) => diff::run(&args),
        Command::Snapshot(args) => snapshot::run(&args),
        Command::Filter(FilterCommand::Get(args)) => filter_get::run(&args),
        Command::Filter(FilterCommand::New(args)) => filter_new::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Mesh(args) => mesh::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Node(args) => node::run(&args),
        Command::Bench(BenchCommand::Mesh(args)) => bench::mesh(&args),
        Command::Bench(BenchCommand::Node(args)) => bench::node(&args),
        Command::Bench(BenchCommand::Diff(args)) => bench::diff(&args),
        Command::Bench(BenchCommand::Chaos(args)) => bench::chaos(&args),
        Command::Status(args) => mesh::print_status(&args.addr, args.json),
        Command::Explain(args) => mesh::print_explain(&args.addr, &args.target),
    }
}

/// Parses `--config`: JSON or YAML text, or `@file`.
pub fn parse_config(text: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let Some(text) = text else {
        return Ok(serde_json::Value::Null);
    };
    let text = match text.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading config file {path}"))?
        }
        None => text.to_string(),
    };
    serde_yaml::from_str(&text).context("--config is neither JSON nor YAML")
}

/// Reads a module named on the command line: a file or `builtin:<name>`.
pub fn read_module(name: &str) -> anyhow::Result<(String, Vec<u8>)> {
    if let Some(bytes) = builtin::lookup(name) {
        let file = name
            .trim_start_matches("builtin:")
            .trim_end_matches(".wasm");
        return Ok((format!("{file}.wasm"), bytes.to_vec()));
    }
    if name.starts_with("builtin:") {
        let known: Vec<_> = builtin::SHIPPED
            .iter()
            .map(|(n, _)| n.trim_end_matches(".wasm"))
            .collect();
        anyhow::bail!("no shipped filter {name:?}; shipped: {}", known.join(", "));
    }
    let bytes = std::fs::read(name).with_context(|| format!("reading module {name}"))?;
    let file = std::path::Path::new(name)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string());
    Ok((file, bytes))
}

/// The locality given by `--cluster/--zone/--region`.
pub fn locality(args: &ModuleArgs) -> Locality {
    locality_of(&args.local)
}

/// The locality `--cluster/--zone/--region` give.
pub fn locality_of(args: &LocalityArgs) -> Locality {
    Locality {
        cluster: args.cluster.clone(),
        zone: args.zone.clone(),
        region: args.region.clone(),
    }
}

/// Loads one module on every hook through the full runtime path (metadata, compile,
/// configure, self-test, probes).
pub fn load_single(
    engine: &Arc<FilterEngine>,
    args: &ModuleArgs,
    local: Locality,
    memoize: bool,
) -> anyhow::Result<Arc<FilterRuntime>> {
    load_module(engine, &args.module, args.config.as_deref(), local, memoize)
}

/// [`load_single`] for a module name (file or `builtin:<name>`) and `--config` text.
pub fn load_module(
    engine: &Arc<FilterEngine>,
    module: &str,
    config: Option<&str>,
    local: Locality,
    memoize: bool,
) -> anyhow::Result<Arc<FilterRuntime>> {
    let (file, bytes) = read_module(module)?;
    let mut manifest = FilterManifest::single(&file, parse_config(config)?);
    for hook in [
        &mut manifest.export,
        &mut manifest.import,
        &mut manifest.miss,
    ] {
        hook.chain[0].memoize = memoize;
    }
    let source = ModuleSource::Builtin(BuiltinSet {
        modules: vec![(file, Arc::from(bytes))],
        manifest,
    });
    FilterRuntime::with_engine(
        engine.clone(),
        source,
        BTreeMap::new(),
        local,
        FilterMetrics::default(),
    )
    .map_err(anyhow::Error::from)
}

/// An engine with default limits.
pub fn engine() -> anyhow::Result<Arc<FilterEngine>> {
    Ok(FilterEngine::new(EngineConfig::default())?)
}
