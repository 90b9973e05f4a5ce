//! What the node knows about the mesh, from the local etcd that `meshfilter mesh` (or
//! kvstoremesh) fills: cluster IDs, remote nodes with their pod CIDRs and regions, and an
//! in-memory index of every cached endpoint, so a miss on an address that is already in
//! the local cache resolves without a round trip.
//!
//! It keeps the program's maps in step: mesh pod CIDRs always; in standalone mode also
//! the ipcache entries a cilium-agent would install from the same cache (a /32 per
//! endpoint, a world entry per remote pod CIDR tunnelled to its node, and the world
//! default routes), so the standalone datapath behaves like the Cilium slice it replaces.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use ipnet::IpNet;
use meshfilter_cilium::{ClusterName, IpIdentityPair, KvstoreValue, Node};
use meshfilter_common::ipcache::{RemoteEndpointInfo, WORLD_IPV4_ID, WORLD_IPV6_ID, flags};
use meshfilter_etcd::Backoff;
use meshfilter_filter_runtime::{CandidateCluster, Locality};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use crate::datapath::{Datapath, IpcacheMode};

const CLUSTER_CONFIG_PREFIX: &str = "cilium/cluster-config/";
const NODES_PREFIX: &str = "cilium/cache/nodes/v1/";
const ENDPOINTS_PREFIX: &str = "cilium/cache/ip/v1/";

/// A pod CIDR declared in the node's config rather than learnt from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCidr {
    /// The CIDR.
    pub cidr: IpNet,
    /// Cluster owning it.
    pub cluster: String,
}

#[derive(Debug, Default)]
struct State {
    /// Cluster name → cluster ID.
    clusters: BTreeMap<String, u32>,
    /// `(cluster, node name)` → node.
    nodes: HashMap<(String, String), Node>,
    /// Cluster → zone and region of (one of) its nodes, kept with the nodes so a miss
    /// does not scan them.
    localities: HashMap<String, (Option<String>, Option<String>)>,
    /// Every endpoint of the local cache.
    endpoints: HashMap<IpAddr, (String, IpIdentityPair)>,
    /// Endpoints this view put into the standalone ipcache.
    installed: HashSet<IpAddr>,
    /// Mesh pod CIDRs currently in the map, with their owner.
    mesh_cidrs: HashMap<IpNet, (String, u16)>,
    /// Values of pod-CIDR world entries currently in the ipcache (standalone).
    cidr_entries: HashMap<IpNet, RemoteEndpointInfo>,
    /// Counts of values that did not parse, per prefix.
    invalid: u64,
    /// Which of the three prefixes finished their first list.
    synced: HashSet<&'static str>,
}

/// Counts shown in status and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewStatus {
    /// Known clusters and their IDs.
    pub clusters: BTreeMap<String, u32>,
    /// Remote nodes known.
    pub nodes: usize,
    /// Mesh pod CIDRs in the program's map.
    pub mesh_cidrs: usize,
    /// Endpoints in the local cache.
    pub endpoints: usize,
    /// Endpoints installed in the standalone ipcache (cached or resolved).
    pub installed: usize,
    /// Values that did not parse.
    pub invalid: u64,
    /// Every watched prefix finished its first list.
    pub synced: bool,
}

/// The node's view of the mesh.
pub struct MeshView {
    datapath: Arc<Datapath>,
    static_cidrs: Vec<StaticCidr>,
    state: RwLock<State>,
    standalone: bool,
    mirror_cache: bool,
}

impl std::fmt::Debug for MeshView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshView")
            .field("standalone", &self.standalone)
            .finish_non_exhaustive()
    }
}

impl MeshView {
    /// A view feeding `datapath`, with `static_cidrs` always present. In standalone mode
    /// with `mirror_cache`, every endpoint of the local cache is installed as Cilium's
    /// agent would; without it the standalone ipcache holds only what was resolved on a
    /// miss (on-demand only).
    pub fn new(
        datapath: Arc<Datapath>,
        static_cidrs: Vec<StaticCidr>,
        mirror_cache: bool,
    ) -> Arc<MeshView> {
        let standalone = matches!(datapath.mode(), IpcacheMode::Standalone);
        let view = Arc::new(MeshView {
            datapath,
            static_cidrs,
            state: RwLock::new(State::default()),
            standalone,
            mirror_cache: standalone && mirror_cache,
        });
        view.install_defaults();
        view.refresh_cidrs();
        view
    }

    /// Status counts.
    pub fn status(&self) -> ViewStatus {
        let s = self.state.read();
        let wanted = 3;
        ViewStatus {
            clusters: s.clusters.clone(),
            nodes: s.nodes.len(),
            mesh_cidrs: s.mesh_cidrs.len(),
            endpoints: s.endpoints.len(),
            installed: s.installed.len(),
            invalid: s.invalid,
            synced: s.synced.len() >= wanted,
        }
    }

    /// Name of the cluster with this ID.
    pub fn cluster_name(&self, id: u16) -> Option<String> {
        let s = self.state.read();
        s.clusters
            .iter()
            .find(|(_, cid)| **cid == u32::from(id))
            .map(|(n, _)| n.clone())
    }

    /// The mesh pod CIDR containing `addr` and its owner.
    pub fn owner_of(&self, addr: IpAddr) -> Option<(IpNet, String)> {
        let s = self.state.read();
        s.mesh_cidrs
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(n, (c, _))| (*n, c.clone()))
    }

    /// Clusters that could own `addr`, as the miss hook sees them: every known cluster
    /// with its region and zone (from its nodes), owners of a covering CIDR marked.
    pub fn candidates(&self, addr: IpAddr, hinted_cluster: Option<&str>) -> Vec<CandidateCluster> {
        // The kernel already found the covering CIDR's cluster; scan only without it.
        let owner = match hinted_cluster {
            Some(c) => Some(c.to_owned()),
            None => self.owner_of(addr).map(|(_, c)| c),
        };
        let s = self.state.read();
        let mut names: Vec<&String> = s.clusters.keys().collect();
        for c in self.static_cidrs.iter().map(|c| &c.cluster) {
            if !names.contains(&c) {
                names.push(c);
            }
        }
        names
            .into_iter()
            .map(|cluster| {
                let (zone, region) = s.localities.get(cluster).cloned().unwrap_or_default();
                CandidateCluster {
                    owns_prefix: owner.as_deref() == Some(cluster.as_str()),
                    locality: Locality {
                        zone,
                        region,
                        cluster: cluster.clone(),
                    },
                }
            })
            .collect()
    }

    /// Follows the local etcd until cancelled, reconnecting with backoff.
    pub async fn run(self: Arc<Self>, client: Client, cancel: CancellationToken) {
        let prefixes = vec![CLUSTER_CONFIG_PREFIX, NODES_PREFIX, ENDPOINTS_PREFIX];
        let tasks: Vec<_> = prefixes
            .into_iter()
            .map(|prefix| {
                let view = self.clone();
                let client = client.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move { view.follow(client, prefix, cancel).await })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn follow(&self, mut client: Client, prefix: &'static str, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.list_and_watch(&mut client, prefix, &mut backoff) => r,
            };
            let delay = backoff.next_delay();
            tracing::warn!(prefix, error = %result.err().map(|e| e.to_string()).unwrap_or_default(), ?delay, "local etcd watch ended, re-listing");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn list_and_watch(
        &self,
        client: &mut Client,
        prefix: &'static str,
        backoff: &mut Backoff,
    ) -> Result<(), etcd_client::Error> {
        let listed = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = listed.header().map_or(0, |h| h.revision());
        let snapshot: Vec<(String, Vec<u8>)> = listed
            .kvs()
            .iter()
            .filter_map(|kv| Some((kv.key_str().ok()?.to_owned(), kv.value().to_vec())))
            .collect();
        self.replace(prefix, snapshot);
        self.state.write().synced.insert(prefix);
        backoff.reset();
        let mut watch_client = client.watch_client();
        let mut stream = watch_client
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() || resp.compact_revision() > 0 {
                return Err(etcd_client::Error::WatchError(format!(
                    "watch on {prefix} cancelled (compacted at {})",
                    resp.compact_revision()
                )));
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                match event.event_type() {
                    EventType::Put => self.put(prefix, key, kv.value()),
                    EventType::Delete => self.delete(prefix, key),
                }
                if prefix != ENDPOINTS_PREFIX {
                    self.refresh_cidrs();
                }
            }
        }
        Err(etcd_client::Error::WatchError(format!(
            "watch on {prefix} closed"
        )))
    }

    /// Replaces everything under `prefix` with a fresh listing (after a reconnect).
    fn replace(&self, prefix: &'static str, snapshot: Vec<(String, Vec<u8>)>) {
        let listed: HashSet<&str> = snapshot.iter().map(|(k, _)| k.as_str()).collect();
        let stale: Vec<String> = {
            let s = self.state.read();
            match prefix {
                CLUSTER_CONFIG_PREFIX => s
                    .clusters
                    .keys()
                    .map(|c| format!("{CLUSTER_CONFIG_PREFIX}{c}"))
                    .collect(),
                NODES_PREFIX => s
                    .nodes
                    .keys()
                    .map(|(c, n)| format!("{NODES_PREFIX}{c}/{n}"))
                    .collect(),
                _ => s
                    .endpoints
                    .iter()
                    .map(|(ip, (c, _))| format!("{ENDPOINTS_PREFIX}{c}/{ip}"))
                    .collect(),
            }
        };
        for key in stale.iter().filter(|k| !listed.contains(k.as_str())) {
            self.delete(prefix, key);
        }
        for (key, value) in &snapshot {
            self.put(prefix, key, value);
        }
        // Once per listing, not once per node: a relist of thousands of nodes would
        // otherwise recompute every CIDR thousands of times. Cluster configs count too:
        // they give the CIDRs their cluster IDs.
        if prefix != ENDPOINTS_PREFIX {
            self.refresh_cidrs();
        }
    }

    fn put(&self, prefix: &'static str, key: &str, value: &[u8]) {
        let Some(rest) = key.strip_prefix(prefix) else {
            return;
        };
        match prefix {
            CLUSTER_CONFIG_PREFIX => {
                let Ok(name) = ClusterName::new(rest) else {
                    return;
                };
                match meshfilter_cilium::CiliumClusterConfig::parse(&name, rest, value) {
                    Ok(config) => {
                        self.state
                            .write()
                            .clusters
                            .insert(rest.to_owned(), config.id);
                    }
                    Err(e) => self.invalid(key, &e),
                }
            }
            NODES_PREFIX => {
                let Some((cluster, name)) = rest.split_once('/') else {
                    return;
                };
                let Ok(cluster_name) = ClusterName::new(cluster) else {
                    return;
                };
                match Node::parse(&cluster_name, name, value) {
                    Ok(node) => {
                        self.state
                            .write()
                            .nodes
                            .insert((cluster.to_owned(), name.to_owned()), node);
                    }
                    Err(e) => self.invalid(key, &e),
                }
            }
            _ => {
                let Some((cluster, ip)) = rest.split_once('/') else {
                    return;
                };
                let Ok(cluster_name) = ClusterName::new(cluster) else {
                    return;
                };
                match IpIdentityPair::parse(&cluster_name, ip, value) {
                    Ok(pair) => {
                        let addr = pair.ip();
                        self.state
                            .write()
                            .endpoints
                            .insert(addr, (cluster.to_owned(), pair.clone()));
                        if self.mirror_cache {
                            self.install_endpoint(pair);
                        }
                    }
                    Err(e) => self.invalid(key, &e),
                }
            }
        }
    }

    fn delete(&self, prefix: &'static str, key: &str) {
        let Some(rest) = key.strip_prefix(prefix) else {
            return;
        };
        match prefix {
            CLUSTER_CONFIG_PREFIX => {
                self.state.write().clusters.remove(rest);
            }
            NODES_PREFIX => {
                let Some((cluster, name)) = rest.split_once('/') else {
                    return;
                };
                self.state
                    .write()
                    .nodes
                    .remove(&(cluster.to_owned(), name.to_owned()));
            }
            _ => {
                let Some((cluster, ip)) = rest.split_once('/') else {
                    return;
                };
                let Ok(ip) = ip.parse::<IpAddr>() else { return };
                // The entry left the cache (deleted, or its resolve lease ended): it
                // leaves the standalone ipcache too, whoever installed it.
                let removed = {
                    let mut s = self.state.write();
                    match s.endpoints.get(&ip) {
                        Some((c, _)) if c == cluster => {
                            s.endpoints.remove(&ip);
                            s.installed.remove(&ip)
                        }
                        _ => false,
                    }
                };
                if removed && let Err(e) = self.datapath.remove_ipcache(IpNet::from(ip)) {
                    tracing::warn!(%ip, error = %e, "removing an ipcache entry");
                }
            }
        }
    }

    fn invalid(&self, key: &str, error: &dyn std::fmt::Display) {
        self.state.write().invalid += 1;
        tracing::warn!(key, %error, "skipping an invalid value in the local cache");
    }

    /// The local cache's entry for `addr`, if one of `clusters` has it.
    pub fn cached(&self, addr: IpAddr, clusters: &[String]) -> Option<(String, IpIdentityPair)> {
        let s = self.state.read();
        let (cluster, pair) = s.endpoints.get(&addr)?;
        clusters
            .iter()
            .any(|c| c == cluster)
            .then(|| (cluster.clone(), pair.clone()))
    }

    /// Installs a resolved or cached endpoint into the standalone ipcache (a no-op in
    /// cilium mode, where the agent installs what the local cache holds).
    pub fn install_endpoint(&self, pair: IpIdentityPair) {
        if !self.standalone {
            return;
        }
        let ip = pair.ip();
        let info = endpoint_info(pair.id, pair.host_ip(), pair.key);
        match self.datapath.upsert_ipcache(IpNet::from(ip), info) {
            Ok(()) => {
                self.state.write().installed.insert(ip);
            }
            Err(e) => tracing::warn!(%ip, error = %e, "installing an ipcache entry"),
        }
    }

    /// The world routes a cilium-agent installs (`0.0.0.0/0`, `::/0`).
    fn install_defaults(&self) {
        if !self.standalone {
            return;
        }
        for (net, id) in [("0.0.0.0/0", WORLD_IPV4_ID), ("::/0", WORLD_IPV6_ID)] {
            let net: IpNet = net.parse().expect("literal");
            if let Err(e) = self
                .datapath
                .upsert_ipcache(net, endpoint_info(id, None, 0))
            {
                tracing::warn!(%net, error = %e, "installing the world entry");
            }
        }
    }

    /// Recomputes the mesh pod CIDRs (and, standalone, their tunnelled world entries)
    /// from static config plus remote nodes, and applies the difference.
    fn refresh_cidrs(&self) {
        let mut s = self.state.write();
        let mut wanted: HashMap<IpNet, (String, Option<IpAddr>)> = HashMap::new();
        for c in &self.static_cidrs {
            wanted.insert(c.cidr.trunc(), (c.cluster.clone(), None));
        }
        let mut localities = HashMap::new();
        for ((cluster, _), node) in &s.nodes {
            localities.entry(cluster.clone()).or_insert_with(|| {
                (
                    node.zone().map(str::to_owned),
                    node.region().map(str::to_owned),
                )
            });
            let tunnel = node.internal_ips().into_iter().next();
            for cidr in node.pod_cidrs() {
                wanted.insert(cidr.trunc(), (cluster.clone(), tunnel));
            }
        }
        s.localities = localities;
        let gone: Vec<IpNet> = s
            .mesh_cidrs
            .keys()
            .filter(|n| !wanted.contains_key(n))
            .copied()
            .collect();
        for net in gone {
            s.mesh_cidrs.remove(&net);
            if let Err(e) = self.datapath.remove_mesh_cidr(net) {
                tracing::warn!(%net, error = %e, "removing a mesh pod CIDR");
            }
            if s.cidr_entries.remove(&net).is_some()
                && let Err(e) = self.datapath.remove_ipcache(net)
            {
                tracing::warn!(%net, error = %e, "removing a pod CIDR entry");
            }
        }
        for (net, (cluster, tunnel)) in wanted {
            let cluster_id = s.clusters.get(&cluster).copied().unwrap_or(0) as u16;
            let owner = (cluster, cluster_id);
            if s.mesh_cidrs.get(&net) != Some(&owner) {
                match self.datapath.upsert_mesh_cidr(net, cluster_id) {
                    Ok(()) => {
                        s.mesh_cidrs.insert(net, owner);
                    }
                    Err(e) => tracing::warn!(%net, error = %e, "adding a mesh pod CIDR"),
                }
            }
            if self.standalone && tunnel.is_some() {
                let world = if net.addr().is_ipv4() {
                    WORLD_IPV4_ID
                } else {
                    WORLD_IPV6_ID
                };
                let info = endpoint_info(world, tunnel, 0);
                if s.cidr_entries.get(&net) != Some(&info) {
                    match self.datapath.upsert_ipcache(net, info) {
                        Ok(()) => {
                            s.cidr_entries.insert(net, info);
                        }
                        Err(e) => tracing::warn!(%net, error = %e, "adding a pod CIDR entry"),
                    }
                }
            }
        }
    }
}

/// An ipcache value as Cilium writes it for a remote endpoint or pod CIDR.
pub fn endpoint_info(identity: u32, tunnel: Option<IpAddr>, key: u8) -> RemoteEndpointInfo {
    let mut tunnel_endpoint = [0u8; 16];
    let mut bits = 0u8;
    match tunnel {
        Some(IpAddr::V4(v4)) => {
            tunnel_endpoint[..4].copy_from_slice(&v4.octets());
            bits |= flags::HAS_TUNNEL_EP;
        }
        Some(IpAddr::V6(v6)) => {
            tunnel_endpoint = v6.octets();
            bits |= flags::HAS_TUNNEL_EP | flags::IPV6_TUNNEL_EP;
        }
        None => {}
    }
    RemoteEndpointInfo {
        sec_identity: identity,
        tunnel_endpoint,
        pad: 0,
        key,
        flags: bits,
    }
}
