//! The typed config file of `meshfilter mesh`, validated once at start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use meshfilter_cilium::ClusterName;
use meshfilter_filter_runtime::Locality;
use meshfilter_sync::EtcdConfig;
use serde::Deserialize;

/// `meshfilter mesh --config <file>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfig {
    /// This cluster: its name, zone and region.
    pub cluster: ClusterSection,
    /// The local etcd holding the kvstoremesh cache (needs write access).
    pub local_etcd: EtcdConfig,
    /// Directory of Cilium clustermesh connection files, one per remote cluster, named
    /// after it.
    pub clusters_dir: PathBuf,
    /// Filter modules.
    #[serde(default)]
    pub filters: FiltersSection,
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/status`,
    /// `/explain`, `/resolve`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The on-demand resolve API for node agents.
    #[serde(default)]
    pub resolve: ResolveSection,
    /// Write `cilium/.heartbeat` every minute (kvstoremesh's `--enable-heartbeat`).
    #[serde(default = "yes")]
    pub heartbeat: bool,
}

fn yes() -> bool {
    true
}

/// On-demand resolution limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResolveSection {
    /// How long a resolved endpoint stays in the cache after its last resolution.
    #[serde(default = "default_pin_ttl", with = "humantime_serde_compat")]
    pub pin_ttl: std::time::Duration,
    /// How long an address found nowhere is not looked up again.
    #[serde(default = "default_negative_ttl", with = "humantime_serde_compat")]
    pub negative_ttl: std::time::Duration,
    /// Remote lookups started per second at most.
    #[serde(default = "default_per_second")]
    pub per_second: u32,
}

impl Default for ResolveSection {
    fn default() -> Self {
        ResolveSection {
            pin_ttl: default_pin_ttl(),
            negative_ttl: default_negative_ttl(),
            per_second: default_per_second(),
        }
    }
}

fn default_pin_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

fn default_negative_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn default_per_second() -> u32 {
    200
}

/// Durations written as `30s`, `5m`, `1h`.
mod humantime_serde_compat {
    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

/// Who this cluster is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Cluster name (Cilium's rules: at most 32 characters, lowercase alphanumerics and '-').
    pub name: String,
    /// Zone (`topology.kubernetes.io/zone`).
    #[serde(default)]
    pub zone: Option<String>,
    /// Region (`topology.kubernetes.io/region`).
    #[serde(default)]
    pub region: Option<String>,
}

/// Where filters come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FiltersSection {
    /// A directory with `filters.yaml` and modules (a mounted ConfigMap), hot-reloaded.
    /// Without it the built-in cfp-scope filter runs on every hook.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// Config of the built-in cfp-scope filter when no directory is given.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Required sha256 per module file.
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
    /// Hooks in shadow mode: decisions are made, counted and shown, but not applied.
    #[serde(default)]
    pub shadow: Vec<meshfilter_filter_runtime::Hook>,
}

impl ClusterSection {
    /// Checks the name against Cilium's rules.
    fn validate(&self) -> anyhow::Result<()> {
        ClusterName::new(self.name.clone()).with_context(|| {
            format!(
                "cluster.name: {:?} is not a valid Cilium cluster name",
                self.name
            )
        })?;
        Ok(())
    }

    /// This cluster's locality.
    pub fn locality(&self) -> Locality {
        Locality {
            cluster: self.name.clone(),
            zone: self.zone.clone(),
            region: self.region.clone(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9964))
}

impl MeshConfig {
    /// Reads and validates `path`; errors name the field and the bad value.
    pub fn load(path: &Path) -> anyhow::Result<MeshConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: MeshConfig = serde_yaml::from_str(&text)
            .with_context(|| format!("invalid config {}", path.display()))?;
        config.cluster.validate()?;
        if config.local_etcd.endpoints.is_empty() {
            bail!("localEtcd.endpoints: at least one endpoint is required");
        }
        if !config.clusters_dir.is_dir() {
            bail!(
                "clustersDir: {} is not a directory",
                config.clusters_dir.display()
            );
        }
        if let Some(dir) = &config.filters.directory
            && !dir.is_dir()
        {
            bail!("filters.directory: {} is not a directory", dir.display());
        }
        if let Some(hook) = config
            .filters
            .shadow
            .iter()
            .find(|h| **h != meshfilter_filter_runtime::Hook::Import)
        {
            bail!("filters.shadow: {hook} does not run in meshfilter mesh (only import does)");
        }
        for (module, sha) in &config.filters.pins {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("filters.pins.{module}: {sha:?} is not a hex sha256");
            }
        }
        Ok(config)
    }

    /// This cluster's locality.
    pub fn locality(&self) -> Locality {
        self.cluster.locality()
    }
}

/// `meshfilter export --config <file>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExportConfig {
    /// This cluster: its name, zone and region.
    pub cluster: ClusterSection,
    /// The unfiltered clustermesh etcd (what a clustermesh-apiserver writes).
    pub source_etcd: EtcdConfig,
    /// The etcd remote clusters read (needs write access).
    pub export_etcd: EtcdConfig,
    /// Filter modules.
    #[serde(default)]
    pub filters: FiltersSection,
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/status`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl ExportConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> anyhow::Result<ExportConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: ExportConfig = serde_yaml::from_str(&text)
            .with_context(|| format!("invalid config {}", path.display()))?;
        config.cluster.validate()?;
        for (field, etcd) in [
            ("sourceEtcd", &config.source_etcd),
            ("exportEtcd", &config.export_etcd),
        ] {
            if etcd.endpoints.is_empty() {
                bail!("{field}.endpoints: at least one endpoint is required");
            }
        }
        if config.source_etcd.endpoints == config.export_etcd.endpoints {
            bail!("exportEtcd: must be another etcd than sourceEtcd");
        }
        Ok(config)
    }

    /// This cluster's locality.
    pub fn locality(&self) -> Locality {
        self.cluster.locality()
    }
}
