//! The snapshot file: what filters see of a mesh, in one JSON document.

use std::path::Path;
use std::sync::Arc;

use meshfilter_filter_runtime::{EndpointInput, Locality};
use serde::{Deserialize, Serialize};

use crate::error::WhatIfError;

/// Version of the file format; a reader refuses other versions rather than guess.
pub const FORMAT_VERSION: u32 = 1;

/// What filters see of a mesh at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snapshot {
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// When it was taken (seconds since the Unix epoch).
    pub taken_at_unix: u64,
    /// Where it was taken from, for people (`etcd https://...`, `mesh config ...`).
    pub source: String,
    /// Every cluster, with its endpoints as its own export hook sees them.
    pub clusters: Vec<ClusterSnapshot>,
}

/// One cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSnapshot {
    /// Cilium cluster name.
    pub name: String,
    /// The cluster's region when all its nodes agree on one (what its import hook sees
    /// as the local region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The cluster's zone, when all its nodes are in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Nodes (each holds the same ipcache).
    pub nodes: usize,
    /// Security identities it allocated.
    pub identities: usize,
    /// Its endpoints, with labels, node topology and, where the source has them,
    /// annotations and namespace annotations.
    pub endpoints: Vec<Arc<EndpointInput>>,
}

impl ClusterSnapshot {
    /// The cluster as a locality: what its filters see as `local`.
    pub fn locality(&self) -> Locality {
        Locality {
            cluster: self.name.clone(),
            zone: self.zone.clone(),
            region: self.region.clone(),
        }
    }
}

impl Snapshot {
    /// Reads and checks a snapshot file.
    pub fn read(path: &Path) -> Result<Snapshot, WhatIfError> {
        let bytes = std::fs::read(path).map_err(|error| WhatIfError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Snapshot::parse(path, &bytes)
    }

    /// Parses snapshot bytes; `path` names the file in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Snapshot, WhatIfError> {
        let format = |message: String| WhatIfError::Format {
            path: path.to_path_buf(),
            message,
        };
        // The version first, so a newer file says so instead of failing on a new field.
        #[derive(Deserialize)]
        struct Version {
            format: Option<u32>,
        }
        let version: Version = serde_json::from_slice(bytes)
            .map_err(|e| format(format!("not a snapshot (JSON object expected): {e}")))?;
        match version.format {
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(format(format!(
                    "format {other}; this meshfilter reads format {FORMAT_VERSION}"
                )));
            }
            None => {
                return Err(format(
                    "no `format` field: not a meshfilter snapshot".into(),
                ));
            }
        }
        let snapshot: Snapshot =
            serde_json::from_slice(bytes).map_err(|e| format(e.to_string()))?;
        let mut names = std::collections::BTreeSet::new();
        for c in &snapshot.clusters {
            if !names.insert(c.name.as_str()) {
                return Err(format(format!("cluster {:?} appears twice", c.name)));
            }
            if let Some(e) = c.endpoints.iter().find(|e| e.origin.cluster != c.name) {
                return Err(format(format!(
                    "cluster {:?}: endpoint {} has origin cluster {:?}",
                    c.name,
                    e.display_name(),
                    e.origin.cluster
                )));
            }
        }
        Ok(snapshot)
    }

    /// Writes the snapshot as JSON.
    pub fn write(&self, path: &Path) -> Result<(), WhatIfError> {
        let io = |error| WhatIfError::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut out = std::io::BufWriter::new(file);
        serde_json::to_writer(&mut out, self).map_err(|e| io(e.into()))?;
        std::io::Write::flush(&mut out).map_err(io)
    }

    /// Endpoints over all clusters.
    pub fn endpoint_count(&self) -> usize {
        self.clusters.iter().map(|c| c.endpoints.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Snapshot, WhatIfError> {
        Snapshot::parse(Path::new("s.json"), text.as_bytes())
    }

    #[test]
    fn a_snapshot_round_trips() {
        let s = Snapshot {
            format: FORMAT_VERSION,
            taken_at_unix: 1,
            source: "test".into(),
            clusters: vec![ClusterSnapshot {
                name: "c1".into(),
                region: Some("eu-west-1".into()),
                zone: None,
                nodes: 2,
                identities: 1,
                endpoints: vec![Arc::new(EndpointInput {
                    namespace: "shop".into(),
                    pod_name: "web-0".into(),
                    ip: "10.0.0.1".into(),
                    origin: Locality::cluster("c1"),
                    ..Default::default()
                })],
            }],
        };
        let dir = std::env::temp_dir().join(format!("whatif-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.json");
        s.write(&path).unwrap();
        assert_eq!(Snapshot::read(&path).unwrap(), s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_files_are_named_and_explained() {
        let e = parse("[]").unwrap_err().to_string();
        assert!(e.contains("s.json") && e.contains("not a snapshot"), "{e}");
        let e = parse(r#"{"format": 9, "clusters": []}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("format 9") && e.contains("reads format 1"),
            "{e}"
        );
        let e = parse(r#"{"takenAtUnix": 1}"#).unwrap_err().to_string();
        assert!(e.contains("no `format` field"), "{e}");
        let e =
            parse(r#"{"format": 1, "takenAtUnix": 1, "source": "", "clusters": [], "extra": 1}"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("unknown field `extra`"), "{e}");
        let twice = r#"{"format": 1, "takenAtUnix": 1, "source": "", "clusters": [
            {"name": "a", "nodes": 0, "identities": 0, "endpoints": []},
            {"name": "a", "nodes": 0, "identities": 0, "endpoints": []}]}"#;
        let e = parse(twice).unwrap_err().to_string();
        assert!(e.contains("\"a\" appears twice"), "{e}");
    }
}
