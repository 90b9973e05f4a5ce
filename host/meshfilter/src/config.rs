//! The typed config files of `meshfilter mesh` and `meshfilter export`, validated once at
//! start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use meshfilter_cilium::ClusterName;
use meshfilter_cilium::identity::DEFAULT_MAX_CONNECTED_CLUSTERS;
use meshfilter_etcd::EtcdConfig;
use meshfilter_filter_runtime::Locality;
use meshfilter_k8s_source::{ApiAccess, LocalCluster};
use serde::Deserialize;
use serde::de::DeserializeOwned;

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
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// The on-demand resolve API for node agents.
    #[serde(default)]
    pub resolve: ResolveSection,
    /// Write `cilium/.heartbeat` every minute (kvstoremesh's `--enable-heartbeat`).
    #[serde(default = "yes")]
    pub heartbeat: bool,
    /// Leases, the leader lock and periodic enforcement.
    #[serde(default)]
    pub sync: SyncSection,
}

fn yes() -> bool {
    true
}

/// How the cache is written: lease and lock lifetimes, how often the cluster configs are
/// enforced. The defaults are Cilium's; tests shorten them to let leases run out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncSection {
    /// TTL of the leases every written key sits on (Cilium's `kvstore-lease-ttl`).
    #[serde(default = "default_lease_ttl", with = "humantime_serde_compat")]
    pub lease_ttl: std::time::Duration,
    /// TTL of the leader lock's lease: how long a dead leader blocks its successor.
    #[serde(default = "default_lock_ttl", with = "humantime_serde_compat")]
    pub lock_ttl: std::time::Duration,
    /// How often each remote's cached cluster config is written again.
    #[serde(default = "default_enforce_period", with = "humantime_serde_compat")]
    pub config_enforce_period: std::time::Duration,
}

impl Default for SyncSection {
    fn default() -> Self {
        SyncSection {
            lease_ttl: default_lease_ttl(),
            lock_ttl: default_lock_ttl(),
            config_enforce_period: default_enforce_period(),
        }
    }
}

fn default_lease_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(15 * 60)
}

fn default_lock_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(25)
}

fn default_enforce_period() -> std::time::Duration {
    std::time::Duration::from_secs(5 * 60)
}

impl SyncSection {
    fn validate(&self) -> anyhow::Result<()> {
        if self.lease_ttl < std::time::Duration::from_secs(2) {
            bail!(
                "sync.leaseTtl: {:?} is too short (at least 2s)",
                self.lease_ttl
            );
        }
        if self.lock_ttl < std::time::Duration::from_secs(2) {
            bail!(
                "sync.lockTtl: {:?} is too short (at least 2s)",
                self.lock_ttl
            );
        }
        if self.config_enforce_period < std::time::Duration::from_secs(1) {
            bail!(
                "sync.configEnforcePeriod: {:?} is too short (at least 1s)",
                self.config_enforce_period
            );
        }
        Ok(())
    }
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
    /// Requests per second one client (node agent) may make.
    #[serde(default = "default_per_client_per_second")]
    pub per_client_per_second: u32,
}

fn default_per_client_per_second() -> u32 {
    100
}

impl Default for ResolveSection {
    fn default() -> Self {
        ResolveSection {
            pin_ttl: default_pin_ttl(),
            negative_ttl: default_negative_ttl(),
            per_second: default_per_second(),
            per_client_per_second: default_per_client_per_second(),
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
pub(crate) mod humantime_serde_compat {
    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); write e.g. 500ms, 30s, 5m, 1h"
            ))
        })
    }
}

/// Parses a role's YAML config. Every error names the field by its path in the file
/// (`localEtcd.endpoints[0]`, `resolve.pinTtl`) with the value and what is accepted, and a
/// field meshfilter does not read is an error: a misspelt key must not fall back to a
/// default silently.
pub fn parse_yaml<T: DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let parsed = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        serde_yaml::Deserializer::from_str(text),
        &mut note_unknown,
    ));
    let value: T = match parsed {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            if path == "." {
                bail!("{message}");
            }
            // serde_yaml names the enclosing map itself in some messages; say it once.
            let message = match message.split_once(": ") {
                Some((head, rest)) if path.starts_with(head) => rest.to_string(),
                _ => message,
            };
            bail!("{path}: {message}");
        }
    };
    // Only the sections in Cilium's etcd client format are read tolerantly (its connection
    // files may carry more); in a role's config an unread field is a mistake.
    if let Some(path) = unknown.first() {
        let (parent, field) = path.rsplit_once('.').unwrap_or(("", path));
        if parent.ends_with("Etcd") {
            bail!(
                "{path}: unknown field `{field}`, expected one of {}",
                EtcdConfig::FIELDS
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        bail!("{path}: unknown field `{field}`");
    }
    Ok(value)
}

/// `listen`: an `address:port` to bind.
pub(crate) fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address:port to listen on (e.g. 0.0.0.0:9964, [::]:9964)"
        ))
    })
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
    /// Canary rollout of new filter generations, with automatic rollback. Without it a
    /// reloaded generation decides everything at once.
    #[serde(default)]
    pub rollout: Option<RolloutSection>,
}

/// `filters.rollout`: a reloaded generation first decides for a stable hashed share of
/// the endpoints; it is rolled back when it fails or changes too much, and promoted when
/// it stays within bounds for `promoteAfter`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutSection {
    /// Share of endpoints (percent, > 0 and <= 100) the new generation decides.
    #[serde(default = "default_canary_percent")]
    pub canary_percent: f64,
    /// How long the new generation must stay within its bounds to be promoted.
    #[serde(default = "default_promote_after", with = "humantime_serde_compat")]
    pub promote_after: std::time::Duration,
    /// Roll back when more than this share (0 to 1) of its decisions failed...
    #[serde(default = "default_max_failure_ratio")]
    pub max_failure_ratio: f64,
    /// ...once it made at least this many decisions.
    #[serde(default = "default_min_decisions")]
    pub min_decisions: u64,
    /// Roll back when it changed more decisions than this.
    #[serde(default = "default_max_changed")]
    pub max_changed: u64,
}

fn default_canary_percent() -> f64 {
    meshfilter_filter_runtime::RolloutPolicy::default().canary_percent
}

fn default_promote_after() -> std::time::Duration {
    meshfilter_filter_runtime::RolloutPolicy::default().promote_after
}

fn default_max_failure_ratio() -> f64 {
    meshfilter_filter_runtime::RolloutPolicy::default().max_failure_ratio
}

fn default_min_decisions() -> u64 {
    meshfilter_filter_runtime::RolloutPolicy::default().min_calls
}

fn default_max_changed() -> u64 {
    meshfilter_filter_runtime::RolloutPolicy::default().max_changed
}

impl FiltersSection {
    /// The rollout policy, checked; errors name the field and the value.
    pub fn rollout_policy(
        &self,
    ) -> anyhow::Result<Option<meshfilter_filter_runtime::RolloutPolicy>> {
        let Some(r) = &self.rollout else {
            return Ok(None);
        };
        if self.directory.is_none() {
            bail!("filters.rollout: needs filters.directory (built-in filters never reload)");
        }
        let policy = meshfilter_filter_runtime::RolloutPolicy {
            canary_percent: r.canary_percent,
            promote_after: r.promote_after,
            max_failure_ratio: r.max_failure_ratio,
            min_calls: r.min_decisions,
            max_changed: r.max_changed,
        };
        policy
            .validate()
            .map_err(|e| anyhow::anyhow!("filters.rollout.{e}"))?;
        Ok(Some(policy))
    }
}

impl FiltersSection {
    /// Checks what can be checked before the modules load: the directory exists, each pin
    /// is a sha256, and only the hooks in `shadowable` (those this role runs) are shadowed.
    pub fn validate(
        &self,
        shadowable: &[meshfilter_filter_runtime::Hook],
        role: &str,
    ) -> anyhow::Result<()> {
        if let Some(dir) = &self.directory
            && !dir.is_dir()
        {
            bail!(
                "filters.directory: {} is not a directory (mount the filters ConfigMap there, or leave it out for the built-in cfp-scope)",
                dir.display()
            );
        }
        if let Some(hook) = self.shadow.iter().find(|h| !shadowable.contains(h)) {
            let accepted: Vec<String> = shadowable.iter().map(|h| h.to_string()).collect();
            if accepted.is_empty() {
                bail!("filters.shadow: {hook} cannot be shadowed in {role} (no hook can)");
            }
            bail!(
                "filters.shadow: {hook} cannot be shadowed in {role} (accepted: {})",
                accepted.join(", ")
            );
        }
        for (module, sha) in &self.pins {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "filters.pins.{module}: {sha:?} is not a sha256 (64 hex digits, as `meshfilter filter get` and sha256sum print it)"
                );
            }
        }
        self.rollout_policy()?;
        Ok(())
    }
}

impl ClusterSection {
    /// Checks the name against Cilium's rules.
    pub fn validated(&self) -> anyhow::Result<ClusterName> {
        ClusterName::new(self.name.clone()).with_context(|| {
            format!(
                "cluster.name: {:?} is not a valid Cilium cluster name (at most 32 characters: lowercase letters, digits and '-', starting and ending with a letter or digit)",
                self.name
            )
        })
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
        MeshConfig::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parses and validates config text (paths in it are checked on this machine).
    pub fn parse(text: &str) -> anyhow::Result<MeshConfig> {
        let config: MeshConfig = parse_yaml(text)?;
        config.cluster.validated()?;
        config.sync.validate()?;
        if config.local_etcd.endpoints.is_empty() {
            bail!("localEtcd.endpoints: at least one endpoint is required");
        }
        if !config.clusters_dir.is_dir() {
            bail!(
                "clustersDir: {} is not a directory (Cilium mounts the clustermesh secret at /var/lib/cilium/clustermesh)",
                config.clusters_dir.display()
            );
        }
        config.filters.validate(
            &[meshfilter_filter_runtime::Hook::Import],
            "meshfilter mesh",
        )?;
        Ok(config)
    }

    /// This cluster's locality.
    pub fn locality(&self) -> Locality {
        self.cluster.locality()
    }
}

/// `meshfilter export --config <file>`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExportFile {
    cluster: ClusterSection,
    #[serde(default)]
    source_etcd: Option<EtcdConfig>,
    #[serde(default)]
    kubernetes: Option<KubernetesSection>,
    export_etcd: EtcdConfig,
    #[serde(default)]
    filters: FiltersSection,
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    listen: SocketAddr,
    #[serde(default)]
    sync: SyncSection,
}

/// `kubernetes`: how `meshfilter export` reaches the API server (in-cluster, through the
/// pod's service account, unless a kubeconfig or context is given), and what Kubernetes
/// does not say about the cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesSection {
    /// Cilium's cluster ID (`cluster-id`, Helm `cluster.id`): the cluster config and the
    /// node records carry it.
    #[serde(rename = "clusterID")]
    pub cluster_id: u32,
    /// Cilium's `max-connected-clusters`, 255 (default) or 511.
    #[serde(default = "default_max_connected_clusters")]
    pub max_connected_clusters: u32,
    /// A kubeconfig file instead of the in-cluster config.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// A context of the kubeconfig (`$KUBECONFIG` or `~/.kube/config` when no file is
    /// given) instead of its current context.
    #[serde(default)]
    pub context: Option<String>,
}

fn default_max_connected_clusters() -> u32 {
    DEFAULT_MAX_CONNECTED_CLUSTERS
}

impl KubernetesSection {
    /// Validates the section into the API access and the cluster the export writes.
    fn validate(self, name: ClusterName) -> anyhow::Result<ExportSource> {
        let max = self.max_connected_clusters;
        if max != 255 && max != 511 {
            bail!("kubernetes.maxConnectedClusters: {max} is neither 255 nor 511");
        }
        if !(1..=max).contains(&self.cluster_id) {
            bail!(
                "kubernetes.clusterID: {} is outside 1..={max}",
                self.cluster_id
            );
        }
        if let Some(path) = &self.kubeconfig
            && !path.is_file()
        {
            bail!("kubernetes.kubeconfig: {} is not a file", path.display());
        }
        if self.context.as_deref() == Some("") {
            bail!("kubernetes.context: empty; leave it out for the current context");
        }
        let access = match (self.kubeconfig, self.context) {
            (None, None) => ApiAccess::InCluster,
            (path, context) => ApiAccess::Kubeconfig { path, context },
        };
        let cluster = LocalCluster {
            name,
            id: self.cluster_id,
            max_connected_clusters: max,
        };
        Ok(ExportSource::Kubernetes { access, cluster })
    }
}

/// Where `meshfilter export` reads the cluster's endpoints.
#[derive(Debug, Clone)]
pub enum ExportSource {
    /// The unfiltered clustermesh etcd (what a clustermesh-apiserver writes).
    Etcd(EtcdConfig),
    /// The Kubernetes API: CiliumEndpoints, Pods, Namespaces, CiliumNodes.
    Kubernetes {
        /// How to reach the API server.
        access: ApiAccess,
        /// The cluster's ID and mesh size, for what the export writes.
        cluster: LocalCluster,
    },
}

impl ExportSource {
    /// `etcd` or `kubernetes`, for logs, status and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ExportSource::Etcd(_) => "etcd",
            ExportSource::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// `meshfilter export --config <file>`, validated.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// This cluster: its name, zone and region.
    pub cluster: ClusterSection,
    /// This cluster's name, checked.
    pub cluster_name: ClusterName,
    /// Where endpoints come from: `sourceEtcd` or `kubernetes`, exactly one.
    pub source: ExportSource,
    /// The etcd remote clusters read (needs write access).
    pub export_etcd: EtcdConfig,
    /// Filter modules.
    pub filters: FiltersSection,
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/status`).
    pub listen: SocketAddr,
    /// Leases and the leader lock.
    pub sync: SyncSection,
}

impl ExportConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> anyhow::Result<ExportConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        ExportConfig::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parses and validates config text; errors name the field and the bad value.
    pub fn parse(text: &str) -> anyhow::Result<ExportConfig> {
        let file: ExportFile = parse_yaml(text)?;
        let cluster_name = file.cluster.validated()?;
        file.sync.validate()?;
        file.filters.validate(&[], "meshfilter export")?;
        if file.export_etcd.endpoints.is_empty() {
            bail!("exportEtcd.endpoints: at least one endpoint is required");
        }
        let source = match (file.source_etcd, file.kubernetes) {
            (Some(_), Some(_)) => {
                bail!("sourceEtcd, kubernetes: give one source, not both")
            }
            (None, None) => {
                bail!("sourceEtcd or kubernetes: a source is required")
            }
            (Some(etcd), None) => {
                if etcd.endpoints.is_empty() {
                    bail!("sourceEtcd.endpoints: at least one endpoint is required");
                }
                if etcd.endpoints == file.export_etcd.endpoints {
                    bail!("exportEtcd: must be another etcd than sourceEtcd");
                }
                ExportSource::Etcd(etcd)
            }
            (None, Some(kubernetes)) => kubernetes.validate(cluster_name.clone())?,
        };
        Ok(ExportConfig {
            cluster: file.cluster,
            cluster_name,
            source,
            export_etcd: file.export_etcd,
            filters: file.filters,
            listen: file.listen,
            sync: file.sync,
        })
    }

    /// This cluster's locality.
    pub fn locality(&self) -> Locality {
        self.cluster.locality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPORT: &str = "exportEtcd: {endpoints: [http://127.0.0.1:2479]}\n";

    fn export(text: &str) -> anyhow::Result<ExportConfig> {
        ExportConfig::parse(&format!("cluster: {{name: prod-eu-1}}\n{text}{EXPORT}"))
    }

    #[test]
    fn export_reads_from_etcd_or_kubernetes() {
        let etcd = export("sourceEtcd: {endpoints: [http://127.0.0.1:2379]}\n").unwrap();
        assert!(matches!(etcd.source, ExportSource::Etcd(_)));
        assert_eq!(etcd.source.kind(), "etcd");

        let in_cluster = export("kubernetes: {clusterID: 7}\n").unwrap();
        assert_eq!(in_cluster.source.kind(), "kubernetes");
        let ExportSource::Kubernetes { access, cluster } = in_cluster.source else {
            unreachable!()
        };
        assert_eq!(access, ApiAccess::InCluster);
        assert_eq!(cluster.name.as_str(), "prod-eu-1");
        assert_eq!((cluster.id, cluster.max_connected_clusters), (7, 255));

        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\n").unwrap();
        let with_context = export(&format!(
            "kubernetes: {{clusterID: 300, maxConnectedClusters: 511, kubeconfig: {}, context: east}}\n",
            kubeconfig.display()
        ))
        .unwrap();
        let ExportSource::Kubernetes { access, cluster } = with_context.source else {
            unreachable!()
        };
        assert_eq!(
            access,
            ApiAccess::Kubeconfig {
                path: Some(kubeconfig),
                context: Some("east".into())
            }
        );
        assert_eq!(cluster.id, 300);
        let context_only = export("kubernetes: {clusterID: 7, context: west}\n").unwrap();
        let ExportSource::Kubernetes { access, .. } = context_only.source else {
            unreachable!()
        };
        assert_eq!(
            access,
            ApiAccess::Kubeconfig {
                path: None,
                context: Some("west".into())
            }
        );
    }

    #[test]
    fn mesh_errors_name_the_path_the_value_and_what_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let base = format!(
            "cluster: {{name: prod-eu-1}}\nclustersDir: {}\n",
            dir.path().display()
        );
        let etcd = "localEtcd: {endpoints: [http://127.0.0.1:2379]}\n";
        let ok = MeshConfig::parse(&format!("{base}{etcd}")).unwrap();
        assert_eq!(ok.listen, default_listen());
        for (extra, expected) in [
            (
                "localEtcd: {endpoints: [http://x:2379], ca-file: /ca}\n",
                "localEtcd.ca-file: unknown field `ca-file`, expected one of `endpoints`, `trusted-ca-file`",
            ),
            (
                &format!("{etcd}resolv: {{}}\n"),
                "resolv: unknown field `resolv`, expected one of `cluster`",
            ),
            (
                &format!("{etcd}resolve: {{pinTtl: five minutes}}\n"),
                "resolve.pinTtl: \"five minutes\" is not a duration",
            ),
            (
                &format!("{etcd}resolve: {{perSecond: lots}}\n"),
                "resolve.perSecond: invalid type: string \"lots\", expected u32",
            ),
            (
                &format!("{etcd}listen: 9964\n"),
                "listen: \"9964\" is not an address:port to listen on (e.g. 0.0.0.0:9964",
            ),
            (
                &format!("{etcd}filters: {{shadow: [export]}}\n"),
                "filters.shadow: export cannot be shadowed in meshfilter mesh (accepted: import)",
            ),
            (
                &format!("{etcd}filters: {{shadow: [sideways]}}\n"),
                "filters.shadow[0]: unknown variant `sideways`, expected one of `export`, `import`, `miss`",
            ),
            (
                &format!("{etcd}filters: {{pins: {{cfp-scope.wasm: abc}}}}\n"),
                "filters.pins.cfp-scope.wasm: \"abc\" is not a sha256 (64 hex digits",
            ),
            (
                &format!("{etcd}sync: {{leaseTtl: 1s}}\n"),
                "sync.leaseTtl: 1s is too short (at least 2s)",
            ),
        ] {
            let e = format!(
                "{:#}",
                MeshConfig::parse(&format!("{base}{extra}")).unwrap_err()
            );
            assert!(e.starts_with(expected), "{extra}: {e}");
        }
        let e = format!(
            "{:#}",
            MeshConfig::parse(&format!(
                "{etcd}cluster: {{name: Prod_EU}}\nclustersDir: /nonexistent\n"
            ))
            .unwrap_err()
        );
        assert!(e.starts_with("cluster.name: \"Prod_EU\" is not a valid Cilium cluster name (at most 32 characters"), "{e}");
    }

    #[test]
    fn export_errors_name_the_field() {
        let source = "sourceEtcd: {endpoints: [http://127.0.0.1:2379]}\n";
        for (text, field) in [
            (
                String::new(),
                "sourceEtcd or kubernetes: a source is required",
            ),
            (
                format!("{source}kubernetes: {{clusterID: 1}}\n"),
                "sourceEtcd, kubernetes: give one source",
            ),
            ("kubernetes: {}\n".into(), "missing field `clusterID`"),
            (
                "kubernetes: {clusterID: 256}\n".into(),
                "kubernetes.clusterID: 256 is outside 1..=255",
            ),
            (
                "kubernetes: {clusterID: 0}\n".into(),
                "kubernetes.clusterID: 0",
            ),
            (
                "kubernetes: {clusterID: 1, maxConnectedClusters: 300}\n".into(),
                "kubernetes.maxConnectedClusters: 300",
            ),
            (
                "kubernetes: {clusterID: 1, kubeconfig: /nonexistent/kubeconfig}\n".into(),
                "kubernetes.kubeconfig: /nonexistent/kubeconfig is not a file",
            ),
            (
                "kubernetes: {clusterID: 1, context: ''}\n".into(),
                "kubernetes.context: empty",
            ),
            (
                "kubernetes: {clusterID: 1, namespace: x}\n".into(),
                "unknown field `namespace`",
            ),
            (
                "sourceEtcd: {endpoints: []}\n".into(),
                "sourceEtcd.endpoints",
            ),
            (
                "sourceEtcd: {endpoints: [http://127.0.0.1:2479]}\n".into(),
                "exportEtcd: must be another etcd",
            ),
        ] {
            let e = format!("{:#}", export(&text).unwrap_err());
            assert!(e.contains(field), "{text}: {e}");
        }
    }
}
