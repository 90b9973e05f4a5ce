//! `meshfilter demo`: the default filter over a sample mesh, export and import side.
//!
//! Every cluster runs cfp-scope with its own locality. Each cluster's endpoints go through
//! its export hook; what it publishes (with the scope it chose) goes through the import
//! hook of every other cluster. The output says what each cluster keeps, and why.

mod mesh;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use meshfilter_cilium::ClusterName;
use meshfilter_filter_runtime::{
    BuiltinSet, EndpointInput, EngineConfig, ExportDecision, FilterEngine, FilterMetrics,
    FilterRuntime, Locality, ModuleSource,
};
use serde::Deserialize;

use crate::error::BenchError;

/// Four clusters in three regions, with pods that show each rule of the default filter.
const BUNDLED_SAMPLE: &str = include_str!("../../samples/mesh.yaml");

/// A mesh to run the demo over: clusters with their locality, namespaces and pods.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    clusters: Vec<SampleCluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleCluster {
    /// Checked as Cilium checks a cluster name when the sample is read.
    name: ClusterName,
    zone: Option<String>,
    region: Option<String>,
    /// Namespace name to its annotations.
    #[serde(default)]
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    endpoints: Vec<EndpointInput>,
}

impl Sample {
    /// The sample shipped with meshfilter.
    pub fn bundled() -> Result<Sample, BenchError> {
        Sample::parse(BUNDLED_SAMPLE, "bundled")
    }

    /// A sample from a YAML file.
    pub fn read(path: &Path) -> Result<Sample, BenchError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| BenchError::Sample {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        Sample::parse(&text, &origin)
    }

    fn parse(text: &str, origin: &str) -> Result<Sample, BenchError> {
        let sample: Sample = serde_yaml::from_str(text).map_err(|e| BenchError::Sample {
            origin: origin.into(),
            message: e.to_string(),
        })?;
        if sample.clusters.len() < 2 {
            return Err(BenchError::Sample {
                origin: origin.into(),
                message: format!(
                    "a mesh needs at least two clusters, this one has {}",
                    sample.clusters.len()
                ),
            });
        }
        for c in &sample.clusters {
            for ep in &c.endpoints {
                if ep.ip.parse::<std::net::IpAddr>().is_err() {
                    return Err(BenchError::Sample {
                        origin: origin.into(),
                        message: format!(
                            "cluster {}: endpoint {}/{} has ip {:?}, not an IP address",
                            c.name, ep.namespace, ep.pod_name, ep.ip
                        ),
                    });
                }
            }
        }
        Ok(sample)
    }
}

/// What `meshfilter demo` runs.
#[derive(Debug)]
pub struct DemoOptions {
    /// The mesh.
    pub sample: Sample,
    /// The filter set every cluster runs (each with its own locality).
    pub filters: BuiltinSet,
    /// Only the decisions, without etcd.
    pub filters_only: bool,
}

/// Runs the demo, printing what each cluster exports and mirrors, and why.
pub fn run(options: &DemoOptions) -> Result<(), BenchError> {
    let sample = &options.sample;
    let engine = FilterEngine::new(EngineConfig::default())?;
    if !options.filters_only {
        return mesh::run(sample, &options.filters, engine);
    }
    let runtimes = cluster_runtimes(sample, &options.filters, &engine)?;

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
    Ok(())
}

/// One filter runtime per sample cluster, each with that cluster's locality and the
/// default filter set, sharing `engine` (modules compile once).
fn cluster_runtimes(
    sample: &Sample,
    filters: &BuiltinSet,
    engine: &Arc<FilterEngine>,
) -> Result<Vec<Arc<FilterRuntime>>, BenchError> {
    let metrics = FilterMetrics::default();
    sample
        .clusters
        .iter()
        .map(|c| {
            let local = Locality {
                cluster: c.name.to_string(),
                zone: c.zone.clone(),
                region: c.region.clone(),
            };
            let source = ModuleSource::Builtin(filters.clone());
            FilterRuntime::with_engine(
                engine.clone(),
                source,
                Default::default(),
                local,
                metrics.clone(),
            )
            .map_err(BenchError::from)
        })
        .collect()
}

fn short(ep: &EndpointInput) -> String {
    let mut s = format!("{}/{} {}", ep.namespace, ep.pod_name, ep.ip);
    s.truncate(48);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        match Sample::parse(text, "test.yaml") {
            Ok(sample) => panic!("accepted: {sample:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_bundled_sample_has_four_clusters_and_72_pods() {
        // Counted in the YAML file itself: 4 `- name:` cluster entries, 72 `ip:` lines.
        let sample = Sample::bundled().unwrap();
        assert_eq!(sample.clusters.len(), 4);
        let pods: usize = sample.clusters.iter().map(|c| c.endpoints.len()).sum();
        assert_eq!(pods, BUNDLED_SAMPLE.matches("ip:").count());
        assert_eq!(pods, 72);
    }

    #[test]
    fn a_mesh_of_one_cluster_is_refused() {
        let e = refused("clusters:\n- name: a\n  zone: z\n  region: r\n  endpoints: []\n");
        assert!(
            e.contains("test.yaml") && e.contains("at least two clusters"),
            "{e}"
        );
    }

    #[test]
    fn an_endpoint_without_an_ip_address_is_named() {
        let e = refused(
            "clusters:\n- name: a\n  endpoints:\n  - {namespace: shop, podName: web-0, ip: nope, identity: 1}\n- name: b\n  endpoints: []\n",
        );
        assert!(
            e.contains("cluster a") && e.contains("shop/web-0") && e.contains("\"nope\""),
            "{e}"
        );
    }

    #[test]
    fn a_cluster_name_cilium_refuses_is_refused() {
        let e =
            refused("clusters:\n- name: Prod_EU\n  endpoints: []\n- name: b\n  endpoints: []\n");
        assert!(e.contains("test.yaml") && e.contains("Prod_EU"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = refused("clusters: []\nregions: []\n");
        assert!(e.contains("regions"), "{e}");
    }
}
