//! A made-up mesh of any size, for benchmarks and tests of the diff: the shape of a real
//! one (regions and zones, namespaces, shared label sets, a share of opted-in pods), no
//! real data.

use std::collections::BTreeMap;
use std::sync::Arc;

use meshfilter_filter_runtime::{EndpointInput, Locality};

use crate::snapshot::{ClusterSnapshot, FORMAT_VERSION, Snapshot};

/// What to make.
#[derive(Debug, Clone)]
pub struct SyntheticMesh {
    /// Clusters, spread over three regions of three zones each.
    pub clusters: usize,
    /// Endpoints per cluster.
    pub endpoints: usize,
    /// Share of pods labelled `clustermesh.cilium.io/sync=true`, in percent.
    pub opted_in_percent: u32,
}

const REGIONS: [&str; 3] = ["eu-west-1", "us-east-1", "ap-south-1"];
const NAMESPACES: usize = 50;
const APPS: usize = 200;
const NODES: usize = 50;

/// The snapshot of the mesh `spec` describes; the same spec always gives the same one.
pub fn synthetic(spec: &SyntheticMesh) -> Snapshot {
    let clusters = (0..spec.clusters)
        .map(|c| {
            let name = format!("c{c:03}");
            let region = REGIONS[c % REGIONS.len()];
            let zone = format!("{region}{}", ["a", "b", "c"][(c / REGIONS.len()) % 3]);
            let origin = Locality {
                cluster: name.clone(),
                zone: Some(zone.clone()),
                region: Some(region.to_string()),
            };
            let endpoints = (0..spec.endpoints)
                .map(|i| {
                    let app = format!("app-{}", i % APPS);
                    let mut labels = BTreeMap::from([
                        ("app".to_string(), app),
                        (
                            "io.kubernetes.pod.namespace".to_string(),
                            format!("ns-{}", i % NAMESPACES),
                        ),
                    ]);
                    if (i % 100) < spec.opted_in_percent as usize {
                        labels.insert("clustermesh.cilium.io/sync".into(), "true".into());
                    }
                    Arc::new(EndpointInput {
                        namespace: format!("ns-{}", i % NAMESPACES),
                        pod_name: format!("app-{}-{i}", i % APPS),
                        ip: format!("10.{}.{}.{}", c % 256, (i / 250) % 256, i % 250 + 1),
                        node_ip: Some(format!("172.{}.0.{}", 16 + c % 16, i % NODES + 1)),
                        identity: (c as u32 % 255 + 1) << 16 | (i % APPS) as u32,
                        labels,
                        origin: origin.clone(),
                        ..Default::default()
                    })
                })
                .collect();
            ClusterSnapshot {
                name,
                region: Some(region.to_string()),
                zone: Some(zone),
                nodes: NODES,
                identities: APPS,
                endpoints,
            }
        })
        .collect();
    Snapshot {
        format: FORMAT_VERSION,
        taken_at_unix: 0,
        source: format!(
            "synthetic {} clusters x {} endpoints, {}% opted in",
            spec.clusters, spec.endpoints, spec.opted_in_percent
        ),
        clusters,
    }
}
