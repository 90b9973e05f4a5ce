//! The typed config file of `meshfilter node`, validated once at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::IpNet;
use meshfilter_cilium::ClusterName;
use meshfilter_etcd::EtcdConfig;
use meshfilter_node::{Attachment, MissVerdict};
use serde::Deserialize;

use crate::config::{
    ClusterSection, FiltersSection, humantime_serde_compat, parse_yaml, socket_addr,
};

/// `meshfilter node --config <file>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfig {
    /// This node's name (the miss hook sees it); defaults to the host name.
    #[serde(default)]
    pub node_name: Option<String>,
    /// This cluster: its name, zone and region.
    pub cluster: ClusterSection,
    /// `standalone` (own ipcache) or `cilium` (read Cilium's pinned ipcache).
    #[serde(default)]
    pub mode: NodeMode,
    /// Pin of Cilium's ipcache (cilium mode).
    #[serde(default = "default_cilium_ipcache")]
    pub cilium_ipcache: PathBuf,
    /// Interfaces to attach the classifier to.
    pub interfaces: Vec<Attachment>,
    /// What happens to a packet that missed.
    #[serde(default = "default_verdict")]
    pub miss_verdict: MissVerdict,
    /// Also check source addresses (ingress with native routing).
    #[serde(default)]
    pub check_source: bool,
    /// In-kernel dedup window per address.
    #[serde(default = "default_dedup", with = "humantime_serde_compat")]
    pub dedup: Duration,
    /// Global in-kernel rate limit of miss events.
    #[serde(default)]
    pub events: EventsSection,
    /// Events waiting for a resolver at most.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Resolutions in flight at most.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long an address found nowhere is not looked up again.
    #[serde(default = "default_negative_ttl", with = "humantime_serde_compat")]
    pub negative_ttl: Duration,
    /// Timeout of one lookup.
    #[serde(default = "default_resolve_timeout", with = "humantime_serde_compat")]
    pub resolve_timeout: Duration,
    /// The local etcd with the kvstoremesh cache (read only).
    #[serde(default)]
    pub local_etcd: Option<EtcdConfig>,
    /// Base URL of `meshfilter mesh`'s resolve API.
    #[serde(default)]
    pub mesh_api: Option<String>,
    /// Clustermesh directory (Cilium's format, one etcd config per remote cluster): read
    /// missed endpoints directly from their cluster's etcd (standalone mode).
    #[serde(default)]
    pub clusters_dir: Option<PathBuf>,
    /// Standalone: install every endpoint of the local cache (as a cilium-agent would);
    /// off keeps only what misses resolved.
    #[serde(default = "yes")]
    pub mirror_cache: bool,
    /// Pod CIDRs of remote clusters known up front (more come from the node cache).
    #[serde(default)]
    pub mesh_cidrs: Vec<MeshCidrEntry>,
    /// Filter modules (the miss hook).
    #[serde(default)]
    pub filters: FiltersSection,
    /// Address of `/metrics`, `/healthz`, `/readyz`, `/status`.
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
}

/// Standalone or Cilium ipcache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeMode {
    /// Own ipcache map.
    #[default]
    Standalone,
    /// Cilium's pinned map, read only; entries go through the local etcd cache.
    Cilium,
}

/// Global event rate limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventsSection {
    /// Sustained events per second (0: unlimited).
    #[serde(default = "default_per_second")]
    pub per_second: u32,
    /// Events allowed at once above the rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

impl Default for EventsSection {
    fn default() -> Self {
        EventsSection {
            per_second: default_per_second(),
            burst: default_burst(),
        }
    }
}

/// A pod CIDR of a remote cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshCidrEntry {
    /// The CIDR.
    pub cidr: IpNet,
    /// Its cluster.
    pub cluster: String,
}

fn yes() -> bool {
    true
}
fn default_cilium_ipcache() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/tc/globals/cilium_ipcache_v2")
}
fn default_verdict() -> MissVerdict {
    MissVerdict::Pass
}
fn default_dedup() -> Duration {
    Duration::from_secs(1)
}
fn default_queue() -> usize {
    4096
}
fn default_concurrency() -> usize {
    64
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_resolve_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_per_second() -> u32 {
    1000
}
fn default_burst() -> u32 {
    200
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9966))
}

impl NodeConfig {
    /// Reads and validates `path`; errors name the field and the bad value.
    pub fn load(path: &Path) -> anyhow::Result<NodeConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        NodeConfig::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parses and validates config text (paths in it are checked on this machine).
    pub fn parse(text: &str) -> anyhow::Result<NodeConfig> {
        let config: NodeConfig = parse_yaml(text)?;
        config.cluster.validated()?;
        if config.interfaces.is_empty() {
            bail!("interfaces: name at least one interface to attach the classifier to");
        }
        if let Some((i, a)) = config
            .interfaces
            .iter()
            .enumerate()
            .find(|(_, a)| a.interface.is_empty() || a.interface.len() > 15)
        {
            bail!(
                "interfaces[{i}].interface: {:?} is not an interface name (1 to 15 characters, e.g. eth0)",
                a.interface
            );
        }
        if config.local_etcd.is_none() && config.mesh_api.is_none() && config.clusters_dir.is_none()
        {
            bail!(
                "localEtcd, meshApi, clustersDir: configure at least one place to resolve misses from"
            );
        }
        if let Some(dir) = &config.clusters_dir {
            if !dir.is_dir() {
                bail!("clustersDir: {} is not a directory", dir.display());
            }
            if config.mode == NodeMode::Cilium {
                bail!(
                    "clustersDir: direct remote lookups install into the standalone ipcache only; in cilium mode use meshApi (the mesh writes the local cache the agent reads)"
                );
            }
        }
        if let Some(etcd) = &config.local_etcd
            && etcd.endpoints.is_empty()
        {
            bail!("localEtcd.endpoints: at least one endpoint is required");
        }
        if let Some(url) = &config.mesh_api
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!(
                "meshApi: {url:?} is not an http(s) URL (e.g. http://meshfilter-mesh.kube-system.svc:9964)"
            );
        }
        if config.mode == NodeMode::Cilium && config.local_etcd.is_none() {
            bail!(
                "localEtcd: cilium mode needs the local etcd (mesh CIDRs come from its node cache)"
            );
        }
        if config.queue == 0 || config.concurrency == 0 {
            bail!(
                "queue, concurrency: {}, {}: each must be at least 1",
                config.queue,
                config.concurrency
            );
        }
        for (i, c) in config.mesh_cidrs.iter().enumerate() {
            ClusterName::new(c.cluster.clone()).with_context(|| {
                format!(
                    "meshCidrs[{i}].cluster: {:?} is not a valid Cilium cluster name",
                    c.cluster
                )
            })?;
        }
        config.filters.validate(&[], "meshfilter node")?;
        Ok(config)
    }

    /// The node name: configured, else the host name.
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "node".into())
        })
    }
}
