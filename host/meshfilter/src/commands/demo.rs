//! `meshfilter demo`: the default filter over a sample mesh, export and import side.
//!
//! Every cluster runs cfp-scope with its own locality. Each cluster's endpoints go through
//! its export hook; what it publishes (with the scope it chose) goes through the import
//! hook of every other cluster. The output says what each cluster keeps, and why.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use meshfilter_filter_runtime::{
    EndpointInput, ExportDecision, FilterEngine, FilterMetrics, FilterRuntime, Locality,
    ModuleSource,
};
use serde::Deserialize;

use crate::builtin;
use crate::cli::DemoArgs;

const BUNDLED_SAMPLE: &str = include_str!("../../samples/mesh.yaml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Sample {
    pub(super) clusters: Vec<SampleCluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SampleCluster {
    pub(super) name: String,
    pub(super) zone: Option<String>,
    pub(super) region: Option<String>,
    /// Namespace name to its annotations.
    #[serde(default)]
    pub(super) namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub(super) endpoints: Vec<EndpointInput>,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let text = match &args.sample {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => BUNDLED_SAMPLE.to_string(),
    };
    let sample: Sample = serde_yaml::from_str(&text).context("parsing the sample mesh")?;
    let config = super::parse_config(args.config.as_deref())?;
    let engine = super::engine()?;
    if !args.filters_only {
        super::demo_mesh::run(&sample, config, engine)?;
        return Ok(ExitCode::SUCCESS);
    }
    let runtimes = cluster_runtimes(&sample, &config, &engine)?;

    println!(
        "meshfilter demo: cfp-scope over {} clusters\n",
        sample.clusters.len()
    );
    // Export: what each cluster publishes.
    let mut published: Vec<Vec<Arc<EndpointInput>>> = Vec::new();
    for (c, runtime) in sample.clusters.iter().zip(&runtimes) {
        let origin = runtime.local().clone();
        println!(
            "== {} (region {}, zone {}): {} endpoints, export side",
            c.name,
            origin.region.as_deref().unwrap_or("?"),
            origin.zone.as_deref().unwrap_or("?"),
            c.endpoints.len()
        );
        let mut out = Vec::new();
        for ep in &c.endpoints {
            let mut ep = ep.clone();
            ep.namespace_annotations = c.namespaces.get(&ep.namespace).cloned().unwrap_or_default();
            ep.origin = origin.clone();
            let verdict = runtime.decide_export(&Arc::new(ep.clone()), None);
            let shown = match &verdict.decision {
                ExportDecision::Skip { .. } => "skip".to_string(),
                ExportDecision::Sync { scope, .. } => format!("sync:{scope}"),
            };
            println!(
                "  {:<48} {:<30} {}",
                short(&ep),
                shown,
                verdict.decision.reason()
            );
            if let ExportDecision::Sync { scope, .. } = &verdict.decision {
                // What a consumer sees: the ipcache entry with SyncScope, identity labels.
                out.push(Arc::new(EndpointInput {
                    annotations: BTreeMap::new(),
                    namespace_annotations: BTreeMap::new(),
                    sync_scope: Some(scope.to_field_value()),
                    ..ep
                }));
            }
        }
        println!("  exported {} of {}\n", out.len(), c.endpoints.len());
        published.push(out);
    }

    // Import: what each cluster mirrors from the others.
    let total: usize = sample.clusters.iter().map(|c| c.endpoints.len()).sum();
    let mut full_mesh = 0usize;
    let mut kept_total = 0usize;
    println!("== import side");
    for (ci, (c, runtime)) in sample.clusters.iter().zip(&runtimes).enumerate() {
        let remote: usize = sample
            .clusters
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != ci)
            .map(|(_, o)| o.endpoints.len())
            .sum();
        full_mesh += remote;
        let mut kept = 0usize;
        let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
        for (si, eps) in published.iter().enumerate() {
            if si == ci {
                continue;
            }
            for ep in eps {
                let v = runtime.decide_import(ep, None);
                if v.decision.keeps() {
                    kept += 1;
                } else {
                    *skipped.entry(v.decision.reason().to_string()).or_default() += 1;
                }
            }
        }
        kept_total += kept;
        println!(
            "  {:<10} mirrors {kept:>3} of {remote:>3} remote endpoints",
            c.name
        );
        for (reason, n) in skipped {
            println!("  {:<10}   skipped {n:>2}: {reason}", "");
        }
    }
    println!(
        "\nsummary: {total} endpoints in {} clusters; a full mesh mirrors {full_mesh} remote entries, \
         cfp-scope mirrors {kept_total} ({:.0}% fewer)",
        sample.clusters.len(),
        100.0 * (1.0 - kept_total as f64 / full_mesh.max(1) as f64)
    );
    Ok(ExitCode::SUCCESS)
}

/// One filter runtime per sample cluster, each with that cluster's locality and the
/// default filter set, sharing `engine` (modules compile once).
pub(super) fn cluster_runtimes(
    sample: &Sample,
    config: &serde_json::Value,
    engine: &Arc<FilterEngine>,
) -> anyhow::Result<Vec<Arc<FilterRuntime>>> {
    let metrics = FilterMetrics::default();
    sample
        .clusters
        .iter()
        .map(|c| {
            let local = Locality {
                cluster: c.name.clone(),
                zone: c.zone.clone(),
                region: c.region.clone(),
            };
            let source = ModuleSource::Builtin(builtin::default_set(config.clone()));
            FilterRuntime::with_engine(
                engine.clone(),
                source,
                Default::default(),
                local,
                metrics.clone(),
            )
            .map_err(anyhow::Error::from)
        })
        .collect()
}

pub(super) fn short(ep: &EndpointInput) -> String {
    let mut s = format!("{}/{} {}", ep.namespace, ep.pod_name, ep.ip);
    s.truncate(48);
    s
}
