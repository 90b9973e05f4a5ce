//! The node's index of the mesh: what the local kvstoremesh cache says, in memory, and
//! nothing else. No I/O and no BPF: [`crate::view`] feeds it the keys and values of three
//! prefixes of the local etcd; it answers the miss path's questions (owner of an address,
//! candidate clusters, the local-cache lookup) and computes what the program's maps must
//! hold, handed out as [`MapChange`]s for [`crate::maps::MapWriter`] to apply.
//!
//! What the maps must hold, as a cilium-agent would install it from the same cache:
//! - the mesh pod CIDRs (static ones from the config, and every remote node's), each with
//!   its cluster's ID from the cluster configs (always);
//! - standalone only: a host entry per endpoint (every cached one with `mirror_cache`,
//!   else only those resolved on a miss), a world entry per remote pod CIDR tunnelled to
//!   its node, and the world default routes `0.0.0.0/0` and `::/0`.
//!
//! Keys are taken apart and values parsed only through `meshfilter-cilium`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use meshfilter_cilium::keys::{cluster_config_root, parse_cluster_config_key, parse_key};
use meshfilter_cilium::{
    CiliumClusterConfig, ClusterName, IpIdentityPair, KvstoreValue, Node, Resource,
};
use meshfilter_common::ipcache::{RemoteEndpointInfo, WORLD_IPV4_ID, WORLD_IPV6_ID, flags};
use meshfilter_filter_runtime::{CandidateCluster, Locality};

use crate::maps::MapChange;

/// A pod CIDR declared in the node's config rather than learnt from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCidr {
    /// The CIDR.
    pub cidr: IpNet,
    /// Cluster owning it.
    pub cluster: String,
}

/// One of the local cache's prefixes the index follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// `cilium/cluster-config/<cluster>`: cluster IDs.
    ClusterConfigs,
    /// `cilium/cache/nodes/v1/<cluster>/<node>`: pod CIDRs, tunnel endpoints, localities.
    Nodes,
    /// `cilium/cache/ip/v1/<cluster>/<ip>`: endpoints.
    Endpoints,
}

impl Source {
    /// Every source, in the order they are followed.
    pub const ALL: [Source; 3] = [Source::ClusterConfigs, Source::Nodes, Source::Endpoints];

    /// The prefix holding this source in a kvstoremesh cache, across every cluster.
    pub fn prefix(self) -> String {
        match self {
            Source::ClusterConfigs => cluster_config_root(),
            Source::Nodes => Resource::Nodes.cache_root(),
            Source::Endpoints => Resource::Endpoints.cache_root(),
        }
    }

    /// Name for logs and status.
    pub fn name(self) -> &'static str {
        match self {
            Source::ClusterConfigs => "cluster-configs",
            Source::Nodes => "nodes",
            Source::Endpoints => "endpoints",
        }
    }

    /// Position in [`Source::ALL`].
    pub(crate) fn slot(self) -> usize {
        self as usize
    }
}

/// What the index computes map contents for.
#[derive(Debug, Clone, Default)]
pub struct IndexConfig {
    /// The program reads its own ipcache (filled from the index) rather than Cilium's.
    pub standalone: bool,
    /// Standalone: every cached endpoint goes into the ipcache, not only those resolved
    /// on a miss.
    pub mirror_cache: bool,
    /// Pod CIDRs known up front.
    pub static_cidrs: Vec<StaticCidr>,
}

/// A remote node, reduced to what the datapath and the miss hook use.
#[derive(Debug, Clone, PartialEq)]
struct RemoteNode {
    pod_cidrs: Vec<IpNet>,
    /// First `InternalIP`: where Cilium tunnels the node's pod CIDRs.
    tunnel: Option<IpAddr>,
    zone: Option<String>,
    region: Option<String>,
}

/// An endpoint and the cluster it belongs to.
#[derive(Debug, Clone, PartialEq)]
struct Endpoint {
    cluster: String,
    pair: IpIdentityPair,
}

/// Who a mesh pod CIDR belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CidrOwner {
    cluster: String,
    /// From the cluster's config; 0 while unknown.
    cluster_id: u16,
    tunnel: Option<IpAddr>,
}

/// Counts of the index, for status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexCounts {
    /// Known clusters and their IDs.
    pub clusters: BTreeMap<String, u32>,
    /// Remote nodes.
    pub nodes: usize,
    /// Mesh pod CIDRs wanted in the program's map.
    pub mesh_cidrs: usize,
    /// Endpoints of the local cache.
    pub endpoints: usize,
    /// Endpoints resolved on a miss and wanted in the standalone ipcache.
    pub resolved: usize,
    /// Values (and keys) that could not be used.
    pub invalid: u64,
    /// Every source finished its first list.
    pub synced: bool,
}

/// The index. See the module documentation.
#[derive(Debug)]
pub struct MeshIndex {
    config: IndexConfig,
    /// Cluster name → cluster ID.
    clusters: BTreeMap<String, u32>,
    /// `(cluster, node name)` → node.
    nodes: HashMap<(String, String), RemoteNode>,
    /// Cluster → zone and region of (one of) its nodes, recomputed with the CIDRs so a
    /// miss does not scan nodes.
    localities: HashMap<String, (Option<String>, Option<String>)>,
    /// Mesh pod CIDRs (truncated) → owner.
    cidrs: HashMap<IpNet, CidrOwner>,
    /// Prefix lengths present in `cidrs`, longest first, for longest-prefix matches.
    cidr_lengths: Vec<u8>,
    /// Endpoints of the local cache by prefix (`/32` or `/128` for host entries).
    endpoints: HashMap<IpNet, Endpoint>,
    /// Endpoints resolved on a miss (standalone).
    resolved: HashMap<IpNet, Endpoint>,
    dirty_ipcache: HashSet<IpNet>,
    dirty_mesh: HashSet<IpNet>,
    invalid: u64,
    synced: [bool; 3],
}

/// The world default routes a cilium-agent installs.
const WORLD_ROUTES: [(&str, u32); 2] = [("0.0.0.0/0", WORLD_IPV4_ID), ("::/0", WORLD_IPV6_ID)];

fn world_routes() -> impl Iterator<Item = (IpNet, u32)> {
    WORLD_ROUTES
        .into_iter()
        .filter_map(|(net, id)| Some((net.parse().ok()?, id)))
}

impl MeshIndex {
    /// An empty index; the static CIDRs and (standalone) the world routes are wanted from
    /// the start.
    pub fn new(config: IndexConfig) -> MeshIndex {
        let mut index = MeshIndex {
            config,
            clusters: BTreeMap::new(),
            nodes: HashMap::new(),
            localities: HashMap::new(),
            cidrs: HashMap::new(),
            cidr_lengths: Vec::new(),
            endpoints: HashMap::new(),
            resolved: HashMap::new(),
            dirty_ipcache: HashSet::new(),
            dirty_mesh: HashSet::new(),
            invalid: 0,
            synced: [false; 3],
        };
        if index.config.standalone {
            index
                .dirty_ipcache
                .extend(world_routes().map(|(net, _)| net));
        }
        index.recompute_cidrs();
        index
    }

    /// A key of `source` was created or changed.
    pub fn put(&mut self, source: Source, key: &str, value: &[u8]) {
        self.put_one(source, key, value);
        if source != Source::Endpoints {
            self.recompute_cidrs();
        }
    }

    /// A key of `source` was deleted.
    pub fn delete(&mut self, source: Source, key: &str) {
        match source {
            Source::ClusterConfigs => {
                let Some(cluster) = self.usable(parse_cluster_config_key(key), key) else {
                    return;
                };
                self.clusters.remove(cluster.as_str());
            }
            Source::Nodes => {
                let Some((cluster, name)) = self.cache_key(Resource::Nodes, key) else {
                    return;
                };
                self.nodes.remove(&(cluster, name));
            }
            Source::Endpoints => {
                let Some((cluster, suffix)) = self.cache_key(Resource::Endpoints, key) else {
                    return;
                };
                let Some(prefix) = prefix_of_suffix(&suffix) else {
                    self.invalid(key, &"not an IP or prefix");
                    return;
                };
                self.remove_endpoint(prefix, &cluster);
            }
        }
        if source != Source::Endpoints {
            self.recompute_cidrs();
        }
    }

    /// A complete listing of `source`: everything not in it is gone (it was deleted while
    /// the watch was down). Marks the source listed.
    pub fn replace<'a>(
        &mut self,
        source: Source,
        entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) {
        match source {
            Source::ClusterConfigs => self.clusters.clear(),
            Source::Nodes => self.nodes.clear(),
            Source::Endpoints => {
                let old = std::mem::take(&mut self.endpoints);
                for (key, value) in entries {
                    self.put_one(source, key, value);
                }
                for (prefix, was) in old {
                    match self.endpoints.get(&prefix) {
                        Some(now) if now.cluster == was.cluster => {}
                        // Gone, or now another cluster's: what was resolved from the old
                        // owner leaves with it.
                        _ => self.forget_resolved_of(prefix, &was.cluster),
                    }
                    self.mark_ipcache(prefix);
                }
                self.synced[source.slot()] = true;
                return;
            }
        }
        for (key, value) in entries {
            self.put_one(source, key, value);
        }
        // Once per listing, not once per node: a relist of thousands of nodes would
        // otherwise recompute every CIDR thousands of times.
        self.recompute_cidrs();
        self.synced[source.slot()] = true;
    }

    /// Every source has finished its first list.
    pub fn synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    /// An endpoint of `cluster` found on a miss: wanted in the standalone ipcache until
    /// its cache entry is deleted (when a lease on it ends) or [`forget_resolved`] is
    /// called. Returns its prefix, `None` for an entry whose mask is not a prefix.
    ///
    /// [`forget_resolved`]: Self::forget_resolved
    pub fn add_resolved(&mut self, cluster: &str, pair: IpIdentityPair) -> Option<IpNet> {
        let prefix = pair.prefix()?;
        self.resolved.insert(
            prefix,
            Endpoint {
                cluster: cluster.to_owned(),
                pair,
            },
        );
        self.mark_ipcache(prefix);
        Some(prefix)
    }

    /// Drops a resolved entry (its install failed).
    pub fn forget_resolved(&mut self, prefix: IpNet) {
        if self.resolved.remove(&prefix).is_some() {
            self.mark_ipcache(prefix);
        }
    }

    /// Name of the cluster with this ID.
    pub fn cluster_name(&self, id: u16) -> Option<&str> {
        self.clusters
            .iter()
            .find(|(_, cid)| **cid == u32::from(id))
            .map(|(n, _)| n.as_str())
    }

    /// The mesh pod CIDR containing `addr` (the longest) and its owner.
    pub fn owner_of(&self, addr: IpAddr) -> Option<(IpNet, &str)> {
        self.cidr_lengths.iter().find_map(|&len| {
            let net = IpNet::new(addr, len).ok()?.trunc();
            self.cidrs.get(&net).map(|o| (net, o.cluster.as_str()))
        })
    }

    /// Clusters that could own `addr`, as the miss hook sees them: every known cluster
    /// (from cluster configs and static CIDRs) with its region and zone (from its nodes),
    /// owners of the covering CIDR marked. `hinted_cluster` is the owner the kernel
    /// already found; without it the CIDRs are searched.
    pub fn candidates(&self, addr: IpAddr, hinted_cluster: Option<&str>) -> Vec<CandidateCluster> {
        let owner = hinted_cluster.or_else(|| self.owner_of(addr).map(|(_, c)| c));
        self.known_clusters()
            .map(|cluster| {
                let (zone, region) = self.localities.get(cluster).cloned().unwrap_or_default();
                CandidateCluster {
                    owns_prefix: owner == Some(cluster),
                    locality: Locality {
                        zone,
                        region,
                        cluster: cluster.to_owned(),
                    },
                }
            })
            .collect()
    }

    /// How many clusters [`candidates`](Self::candidates) lists.
    pub fn known_cluster_count(&self) -> usize {
        self.known_clusters().count()
    }

    fn known_clusters(&self) -> impl Iterator<Item = &str> {
        let configured = self.clusters.keys().map(String::as_str);
        let static_only = self
            .config
            .static_cidrs
            .iter()
            .map(|c| c.cluster.as_str())
            .filter(|c| !self.clusters.contains_key(*c));
        let mut seen = HashSet::new();
        configured
            .chain(static_only)
            .filter(move |c| seen.insert(*c))
    }

    /// The local cache's entry for `addr`, if one of `clusters` has it.
    pub fn cached(&self, addr: IpAddr, clusters: &[String]) -> Option<(String, IpIdentityPair)> {
        let ep = self.endpoints.get(&IpNet::from(addr))?;
        clusters
            .contains(&ep.cluster)
            .then(|| (ep.cluster.clone(), ep.pair.clone()))
    }

    /// What changed in the wanted map contents since the last call, each with the value
    /// the map must hold now (`None`: the entry must go).
    pub fn take_changes(&mut self) -> Vec<MapChange> {
        let mesh = std::mem::take(&mut self.dirty_mesh);
        let ipcache = std::mem::take(&mut self.dirty_ipcache);
        let mut changes = Vec::with_capacity(mesh.len() + ipcache.len());
        changes.extend(mesh.into_iter().map(|prefix| MapChange::MeshCidr {
            prefix,
            wanted: self.wanted_mesh_cidr(prefix),
        }));
        changes.extend(ipcache.into_iter().map(|prefix| MapChange::Ipcache {
            prefix,
            wanted: self.wanted_ipcache(prefix),
        }));
        changes
    }

    /// The cluster ID the mesh CIDR map must hold for `prefix`, if it must hold it.
    pub fn wanted_mesh_cidr(&self, prefix: IpNet) -> Option<u16> {
        self.cidrs.get(&prefix).map(|o| o.cluster_id)
    }

    /// The entry the standalone ipcache must hold for `prefix` (always `None` in cilium
    /// mode): an endpoint's, else a pod CIDR's world entry, else a world route.
    pub fn wanted_ipcache(&self, prefix: IpNet) -> Option<RemoteEndpointInfo> {
        if !self.config.standalone {
            return None;
        }
        let mirrored = self
            .config
            .mirror_cache
            .then(|| self.endpoints.get(&prefix))
            .flatten();
        if let Some(ep) = mirrored.or_else(|| self.resolved.get(&prefix)) {
            return Some(endpoint_info(ep.pair.id, ep.pair.host_ip(), ep.pair.key));
        }
        if let Some(owner) = self.cidrs.get(&prefix)
            && owner.tunnel.is_some()
        {
            let world = if prefix.addr().is_ipv4() {
                WORLD_IPV4_ID
            } else {
                WORLD_IPV6_ID
            };
            return Some(endpoint_info(world, owner.tunnel, 0));
        }
        world_routes()
            .find(|(net, _)| *net == prefix)
            .map(|(_, id)| endpoint_info(id, None, 0))
    }

    /// Counts for status.
    pub fn counts(&self) -> IndexCounts {
        IndexCounts {
            clusters: self.clusters.clone(),
            nodes: self.nodes.len(),
            mesh_cidrs: self.cidrs.len(),
            endpoints: self.endpoints.len(),
            resolved: self.resolved.len(),
            invalid: self.invalid,
            synced: self.synced(),
        }
    }

    fn put_one(&mut self, source: Source, key: &str, value: &[u8]) {
        match source {
            Source::ClusterConfigs => {
                let Some(cluster) = self.usable(parse_cluster_config_key(key), key) else {
                    return;
                };
                let Some(config) =
                    self.usable(CiliumClusterConfig::parse(&cluster, key, value), key)
                else {
                    return;
                };
                self.clusters.insert(cluster.into(), config.id);
            }
            Source::Nodes => {
                let Some((cluster, name)) = self.cache_key(Resource::Nodes, key) else {
                    return;
                };
                let Some(node) = self.parse_in::<Node>(&cluster, &name, key, value) else {
                    return;
                };
                let remote = RemoteNode {
                    pod_cidrs: node.pod_cidrs(),
                    tunnel: node.internal_ips().into_iter().next(),
                    zone: node.zone().map(str::to_owned),
                    region: node.region().map(str::to_owned),
                };
                self.nodes.insert((cluster, name), remote);
            }
            Source::Endpoints => {
                let Some((cluster, suffix)) = self.cache_key(Resource::Endpoints, key) else {
                    return;
                };
                let Some(pair) = self.parse_in::<IpIdentityPair>(&cluster, &suffix, key, value)
                else {
                    return;
                };
                let Some(prefix) = pair.prefix() else {
                    self.invalid(key, &"the mask is not a prefix");
                    return;
                };
                // The cache is fresher than what a miss resolved earlier.
                if let Some(resolved) = self.resolved.get_mut(&prefix)
                    && resolved.cluster == cluster
                {
                    resolved.pair = pair.clone();
                }
                self.endpoints.insert(prefix, Endpoint { cluster, pair });
                self.mark_ipcache(prefix);
            }
        }
    }

    /// Removes `cluster`'s endpoint at `prefix` (another cluster's entry there stays),
    /// and what was resolved from it: the entry left the cache (deleted, or its resolve
    /// lease ended), so it leaves the standalone ipcache too, whoever installed it.
    fn remove_endpoint(&mut self, prefix: IpNet, cluster: &str) {
        if remove_owned(&mut self.endpoints, prefix, cluster) {
            self.forget_resolved_of(prefix, cluster);
            self.mark_ipcache(prefix);
        }
    }

    fn forget_resolved_of(&mut self, prefix: IpNet, cluster: &str) {
        if remove_owned(&mut self.resolved, prefix, cluster) {
            self.mark_ipcache(prefix);
        }
    }

    /// `(cluster, suffix)` of a cache key of `resource`; counts anything else as invalid.
    fn cache_key(&mut self, resource: Resource, key: &str) -> Option<(String, String)> {
        let parsed = self.usable(parse_key(key), key)?;
        match parsed.cluster {
            Some(cluster) if parsed.resource == resource => {
                Some((cluster.to_owned(), parsed.suffix.to_owned()))
            }
            _ => {
                self.invalid(key, &format!("not a {resource} cache key"));
                None
            }
        }
    }

    fn parse_in<V: KvstoreValue>(
        &mut self,
        cluster: &str,
        suffix: &str,
        key: &str,
        value: &[u8],
    ) -> Option<V> {
        let cluster = self.usable(ClusterName::new(cluster), key)?;
        self.usable(V::parse(&cluster, suffix, value), key)
    }

    fn usable<T, E: std::fmt::Display>(&mut self, result: Result<T, E>, key: &str) -> Option<T> {
        result.map_err(|e| self.invalid(key, &e)).ok()
    }

    fn invalid(&mut self, key: &str, error: &dyn std::fmt::Display) {
        self.invalid += 1;
        tracing::warn!(key, %error, "skipping an invalid entry of the local cache");
    }

    fn mark_ipcache(&mut self, prefix: IpNet) {
        if self.config.standalone {
            self.dirty_ipcache.insert(prefix);
        }
    }

    /// Recomputes the mesh pod CIDRs (static ones, then every node's, which win) with
    /// their cluster IDs and tunnels, and the localities, marking what changed.
    fn recompute_cidrs(&mut self) {
        let id_of = |cluster: &str| {
            self.clusters
                .get(cluster)
                .and_then(|id| u16::try_from(*id).ok())
                .unwrap_or(0)
        };
        let mut wanted: HashMap<IpNet, CidrOwner> = HashMap::new();
        for c in &self.config.static_cidrs {
            wanted.insert(
                c.cidr.trunc(),
                CidrOwner {
                    cluster: c.cluster.clone(),
                    cluster_id: id_of(&c.cluster),
                    tunnel: None,
                },
            );
        }
        let mut localities = HashMap::new();
        for ((cluster, _), node) in &self.nodes {
            localities
                .entry(cluster.clone())
                .or_insert_with(|| (node.zone.clone(), node.region.clone()));
            for cidr in &node.pod_cidrs {
                wanted.insert(
                    cidr.trunc(),
                    CidrOwner {
                        cluster: cluster.clone(),
                        cluster_id: id_of(cluster),
                        tunnel: node.tunnel,
                    },
                );
            }
        }
        self.localities = localities;
        let changed: Vec<IpNet> = self
            .cidrs
            .iter()
            .filter(|(net, owner)| wanted.get(net) != Some(owner))
            .map(|(net, _)| *net)
            .chain(
                wanted
                    .iter()
                    .filter(|(net, owner)| self.cidrs.get(net) != Some(owner))
                    .map(|(net, _)| *net),
            )
            .collect();
        for net in changed {
            self.dirty_mesh.insert(net);
            self.mark_ipcache(net);
        }
        let mut lengths: Vec<u8> = wanted.keys().map(IpNet::prefix_len).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        self.cidr_lengths = lengths;
        self.cidrs = wanted;
    }
}

/// Removes the endpoint at `prefix` if `cluster` owns it; whether it did.
fn remove_owned(endpoints: &mut HashMap<IpNet, Endpoint>, prefix: IpNet, cluster: &str) -> bool {
    let owned = endpoints
        .get(&prefix)
        .is_some_and(|ep| ep.cluster == cluster);
    if owned {
        endpoints.remove(&prefix);
    }
    owned
}

/// The prefix an endpoint key suffix names: `10.0.0.1` or `10.0.0.0/8`.
fn prefix_of_suffix(suffix: &str) -> Option<IpNet> {
    suffix
        .parse::<IpNet>()
        .ok()
        .or_else(|| suffix.parse::<IpAddr>().ok().map(IpNet::from))
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

#[cfg(test)]
mod tests {
    use meshfilter_cilium::keys::cluster_config_key;
    use meshfilter_cilium::node::{INTERNAL_IP, NodeAddress};
    use meshfilter_contract::labels::{TOPOLOGY_REGION, TOPOLOGY_ZONE};

    use super::*;

    fn name(c: &str) -> ClusterName {
        ClusterName::new(c).unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// `(key, value)` of a cluster config with `id`.
    fn config(cluster: &str, id: u32) -> (String, Vec<u8>) {
        let config = CiliumClusterConfig {
            id,
            ..Default::default()
        };
        (
            cluster_config_key(&name(cluster)),
            config.as_cached().to_json_bytes(),
        )
    }

    /// `(key, value)` of a node with one IPv4 pod CIDR, an internal IP and a region.
    fn node(
        cluster: &str,
        node: &str,
        cidr: &str,
        internal: &str,
        region: &str,
    ) -> (String, Vec<u8>) {
        let c = name(cluster);
        let mut n = Node::new(node, &c, 0);
        n.ipv4_alloc_cidr = Some(net(cidr));
        n.ip_addresses = Some(vec![NodeAddress {
            kind: INTERNAL_IP.into(),
            ip: ip(internal),
        }]);
        n.labels = Some(BTreeMap::from([
            (TOPOLOGY_REGION.to_owned(), region.to_owned()),
            (TOPOLOGY_ZONE.to_owned(), format!("{region}a")),
        ]));
        (Resource::Nodes.cache_key(&c, node), n.to_json_bytes())
    }

    /// Cluster B's node b1: pod CIDR 198.51.100.0/24 on 203.0.113.2, in us-east-1.
    fn node_b1() -> (String, Vec<u8>) {
        node(
            "cluster-b",
            "b1",
            "198.51.100.0/24",
            "203.0.113.2",
            "us-east-1",
        )
    }

    fn pair(addr: &str, identity: u32, host: &str) -> IpIdentityPair {
        let mut p = IpIdentityPair::new(ip(addr));
        p.id = identity;
        p.host_ip = Some(ip(host));
        p
    }

    /// `(key, value)` of an endpoint.
    fn endpoint(cluster: &str, addr: &str, identity: u32, host: &str) -> (String, Vec<u8>) {
        let p = pair(addr, identity, host);
        (
            Resource::Endpoints.cache_key(&name(cluster), &p.prefix_string()),
            p.to_json_bytes(),
        )
    }

    fn put(index: &mut MeshIndex, source: Source, (key, value): (String, Vec<u8>)) {
        index.put(source, &key, &value);
    }

    fn replace(index: &mut MeshIndex, source: Source, entries: &[(String, Vec<u8>)]) {
        index.replace(source, entries.iter().map(|(k, v)| (k.as_str(), &v[..])));
    }

    fn standalone(mirror_cache: bool) -> MeshIndex {
        MeshIndex::new(IndexConfig {
            standalone: true,
            mirror_cache,
            static_cidrs: Vec::new(),
        })
    }

    /// What the changes say the maps must hold, applied to `maps` as a writer would.
    fn apply(
        index: &mut MeshIndex,
        maps: &mut (BTreeMap<IpNet, RemoteEndpointInfo>, BTreeMap<IpNet, u16>),
    ) {
        for change in index.take_changes() {
            match change {
                MapChange::Ipcache { prefix, wanted } => match wanted {
                    Some(v) => maps.0.insert(prefix, v).map(|_| ()),
                    None => maps.0.remove(&prefix).map(|_| ()),
                },
                MapChange::MeshCidr { prefix, wanted } => match wanted {
                    Some(v) => maps.1.insert(prefix, v).map(|_| ()),
                    None => maps.1.remove(&prefix).map(|_| ()),
                },
            };
        }
    }

    #[test]
    fn sources_watch_ciliums_cache_roots() {
        assert_eq!(Source::ClusterConfigs.prefix(), "cilium/cluster-config/");
        assert_eq!(Source::Nodes.prefix(), "cilium/cache/nodes/v1/");
        assert_eq!(Source::Endpoints.prefix(), "cilium/cache/ip/v1/");
        for (i, s) in Source::ALL.into_iter().enumerate() {
            assert_eq!(s.slot(), i);
        }
    }

    #[test]
    fn cluster_ids_come_from_cluster_configs() {
        let mut index = standalone(true);
        put(&mut index, Source::ClusterConfigs, config("cluster-b", 2));
        put(&mut index, Source::ClusterConfigs, config("cluster-c", 3));
        assert_eq!(index.cluster_name(2), Some("cluster-b"));
        assert_eq!(index.cluster_name(3), Some("cluster-c"));
        assert_eq!(index.cluster_name(4), None);
        index.delete(
            Source::ClusterConfigs,
            &cluster_config_key(&name("cluster-c")),
        );
        assert_eq!(index.cluster_name(3), None);
        assert_eq!(index.known_cluster_count(), 1);
    }

    #[test]
    fn maps_hold_what_a_cilium_agent_installs() {
        let mut index = standalone(true);
        let mut maps = Default::default();
        apply(&mut index, &mut maps);
        // Before anything is known: the world routes only.
        assert_eq!(
            maps.0.keys().copied().collect::<Vec<_>>(),
            [net("0.0.0.0/0"), net("::/0")]
        );
        assert_eq!(maps.0[&net("0.0.0.0/0")].sec_identity, WORLD_IPV4_ID);
        assert_eq!(maps.0[&net("::/0")].sec_identity, WORLD_IPV6_ID);

        put(&mut index, Source::ClusterConfigs, config("cluster-b", 2));
        put(&mut index, Source::Nodes, node_b1());
        put(
            &mut index,
            Source::Endpoints,
            endpoint("cluster-b", "198.51.100.8", 131_074, "203.0.113.2"),
        );
        apply(&mut index, &mut maps);
        // The pod CIDR with its cluster ID, as a mesh CIDR; in the ipcache as world
        // tunnelled to its node; the endpoint as its own /32.
        assert_eq!(maps.1, BTreeMap::from([(net("198.51.100.0/24"), 2)]));
        let cidr = maps.0[&net("198.51.100.0/24")];
        assert_eq!(
            cidr,
            endpoint_info(WORLD_IPV4_ID, Some(ip("203.0.113.2")), 0)
        );
        assert_eq!(cidr.flags, flags::HAS_TUNNEL_EP);
        let host = maps.0[&net("198.51.100.8/32")];
        assert_eq!(host.sec_identity, 131_074);
        assert_eq!(host.tunnel_endpoint[..4], [203, 0, 113, 2]);
        assert_eq!(maps.0.len(), 4);

        // Nothing changed, nothing to write.
        put(
            &mut index,
            Source::Endpoints,
            endpoint("cluster-b", "198.51.100.8", 131_074, "203.0.113.2"),
        );
        assert!(index.take_changes().iter().all(|c| match c {
            MapChange::Ipcache { prefix, wanted } => maps.0.get(prefix) == wanted.as_ref(),
            MapChange::MeshCidr { prefix, wanted } => maps.1.get(prefix) == wanted.as_ref(),
        }));

        // A new cluster ID in the config follows into the mesh CIDR map.
        put(&mut index, Source::ClusterConfigs, config("cluster-b", 7));
        apply(&mut index, &mut maps);
        assert_eq!(maps.1[&net("198.51.100.0/24")], 7);

        // The node leaves: its CIDR leaves both maps, the endpoint stays.
        index.delete(
            Source::Nodes,
            &Resource::Nodes.cache_key(&name("cluster-b"), "b1"),
        );
        apply(&mut index, &mut maps);
        assert!(maps.1.is_empty());
        assert!(!maps.0.contains_key(&net("198.51.100.0/24")));
        assert!(maps.0.contains_key(&net("198.51.100.8/32")));
    }

    #[test]
    fn cilium_mode_wants_only_mesh_cidrs() {
        let mut index = MeshIndex::new(IndexConfig {
            standalone: false,
            mirror_cache: true,
            static_cidrs: vec![StaticCidr {
                cidr: net("198.18.0.0/15"),
                cluster: "cluster-c".into(),
            }],
        });
        put(&mut index, Source::Nodes, node_b1());
        put(
            &mut index,
            Source::Endpoints,
            endpoint("cluster-b", "198.51.100.8", 131_074, "203.0.113.2"),
        );
        assert_eq!(
            index.add_resolved("cluster-b", pair("198.51.100.9", 5, "203.0.113.2")),
            Some(net("198.51.100.9/32"))
        );
        let changes = index.take_changes();
        assert!(
            changes
                .iter()
                .all(|c| matches!(c, MapChange::MeshCidr { .. })),
            "{changes:?}"
        );
        let mut cidrs: Vec<IpNet> = changes.iter().map(|c| c.slot().1).collect();
        cidrs.sort();
        assert_eq!(cidrs, [net("198.18.0.0/15"), net("198.51.100.0/24")]);
        assert_eq!(index.wanted_ipcache(net("0.0.0.0/0")), None);
    }

    #[test]
    fn owners_are_found_by_longest_prefix() {
        let mut index = MeshIndex::new(IndexConfig {
            standalone: true,
            mirror_cache: false,
            static_cidrs: vec![StaticCidr {
                cidr: net("198.51.0.0/16"),
                cluster: "cluster-c".into(),
            }],
        });
        put(&mut index, Source::Nodes, node_b1());
        assert_eq!(
            index.owner_of(ip("198.51.100.7")),
            Some((net("198.51.100.0/24"), "cluster-b"))
        );
        assert_eq!(
            index.owner_of(ip("198.51.7.1")),
            Some((net("198.51.0.0/16"), "cluster-c"))
        );
        assert_eq!(index.owner_of(ip("192.0.2.1")), None);
        assert_eq!(index.owner_of(ip("2001:db8::1")), None);
        // A static CIDR with the node's exact prefix is the node's (with its tunnel).
        let mut index = MeshIndex::new(IndexConfig {
            standalone: true,
            mirror_cache: false,
            static_cidrs: vec![StaticCidr {
                cidr: net("198.51.100.0/24"),
                cluster: "cluster-c".into(),
            }],
        });
        put(&mut index, Source::Nodes, node_b1());
        assert_eq!(
            index.owner_of(ip("198.51.100.7")).map(|(_, c)| c),
            Some("cluster-b")
        );
    }

    #[test]
    fn candidates_carry_localities_and_mark_owners() {
        let mut index = MeshIndex::new(IndexConfig {
            standalone: true,
            mirror_cache: false,
            static_cidrs: vec![StaticCidr {
                cidr: net("198.18.0.0/15"),
                cluster: "cluster-d".into(),
            }],
        });
        put(&mut index, Source::ClusterConfigs, config("cluster-b", 2));
        put(&mut index, Source::ClusterConfigs, config("cluster-c", 3));
        put(&mut index, Source::Nodes, node_b1());
        let candidates = index.candidates(ip("198.51.100.7"), None);
        let names: Vec<&str> = candidates
            .iter()
            .map(|c| c.locality.cluster.as_str())
            .collect();
        assert_eq!(names, ["cluster-b", "cluster-c", "cluster-d"]);
        assert_eq!(index.known_cluster_count(), 3);
        let b = &candidates[0];
        assert!(b.owns_prefix);
        assert_eq!(b.locality.region.as_deref(), Some("us-east-1"));
        assert_eq!(b.locality.zone.as_deref(), Some("us-east-1a"));
        assert!(!candidates[1].owns_prefix && candidates[1].locality.region.is_none());
        // The kernel's hint wins over the search.
        let hinted = index.candidates(ip("198.51.100.7"), Some("cluster-c"));
        assert!(!hinted[0].owns_prefix && hinted[1].owns_prefix);
        let nobody = index.candidates(ip("192.0.2.1"), None);
        assert!(nobody.iter().all(|c| !c.owns_prefix));
    }

    #[test]
    fn the_local_cache_lookup_is_limited_to_the_asked_clusters() {
        let mut index = standalone(false);
        put(
            &mut index,
            Source::Endpoints,
            endpoint("cluster-b", "198.51.100.8", 131_074, "203.0.113.2"),
        );
        let (cluster, found) = index
            .cached(
                ip("198.51.100.8"),
                &["cluster-c".into(), "cluster-b".into()],
            )
            .expect("cached");
        assert_eq!((cluster.as_str(), found.id), ("cluster-b", 131_074));
        assert_eq!(
            index.cached(ip("198.51.100.8"), &["cluster-c".into()]),
            None
        );
        assert_eq!(
            index.cached(ip("198.51.100.9"), &["cluster-b".into()]),
            None
        );
        // Without mirroring, a cached endpoint is not wanted in the ipcache.
        assert_eq!(index.wanted_ipcache(net("198.51.100.8/32")), None);
    }

    #[test]
    fn a_listing_replaces_what_vanished_while_disconnected() {
        let mut index = standalone(true);
        let mut maps = Default::default();
        replace(
            &mut index,
            Source::ClusterConfigs,
            &[config("cluster-b", 2)],
        );
        replace(
            &mut index,
            Source::Nodes,
            &[
                node_b1(),
                node(
                    "cluster-b",
                    "b2",
                    "198.51.101.0/24",
                    "203.0.113.3",
                    "us-east-1",
                ),
            ],
        );
        assert!(!index.synced(), "endpoints not listed yet");
        replace(
            &mut index,
            Source::Endpoints,
            &[
                endpoint("cluster-b", "198.51.100.7", 1, "203.0.113.2"),
                endpoint("cluster-b", "198.51.100.8", 2, "203.0.113.2"),
            ],
        );
        assert!(index.synced());
        apply(&mut index, &mut maps);
        assert_eq!(maps.1.len(), 2);

        // Relisted after a disconnection: b2 and .7 were deleted meanwhile, .8 changed.
        replace(&mut index, Source::Nodes, &[node_b1()]);
        replace(
            &mut index,
            Source::Endpoints,
            &[endpoint("cluster-b", "198.51.100.8", 3, "203.0.113.2")],
        );
        apply(&mut index, &mut maps);
        assert_eq!(
            maps.1.keys().copied().collect::<Vec<_>>(),
            [net("198.51.100.0/24")]
        );
        assert!(!maps.0.contains_key(&net("198.51.101.0/24")));
        assert!(!maps.0.contains_key(&net("198.51.100.7/32")));
        assert_eq!(maps.0[&net("198.51.100.8/32")].sec_identity, 3);
        assert_eq!(index.counts().endpoints, 1);
        assert_eq!(index.counts().nodes, 1);
        // A relisted cluster config set that lost a cluster forgets its ID.
        replace(&mut index, Source::ClusterConfigs, &[]);
        assert_eq!(index.cluster_name(2), None);
        apply(&mut index, &mut maps);
        assert_eq!(maps.1[&net("198.51.100.0/24")], 0, "owner now unknown");
    }

    #[test]
    fn resolved_entries_leave_with_their_cache_entry() {
        let mut index = standalone(false);
        let mut maps = Default::default();
        // Resolved through the mesh, which also writes it into the cache under a lease.
        let prefix = index
            .add_resolved("cluster-b", pair("198.51.100.7", 131_073, "203.0.113.2"))
            .unwrap();
        put(
            &mut index,
            Source::Endpoints,
            endpoint("cluster-b", "198.51.100.7", 131_073, "203.0.113.2"),
        );
        apply(&mut index, &mut maps);
        assert_eq!(maps.0[&prefix].sec_identity, 131_073);
        // The cache is fresher than the miss: a new identity there is installed.
        put(
            &mut index,
            Source::Endpoints,
            endpoint("cluster-b", "198.51.100.7", 131_080, "203.0.113.2"),
        );
        apply(&mut index, &mut maps);
        assert_eq!(maps.0[&prefix].sec_identity, 131_080);
        // Another cluster's delete of the same address changes nothing.
        index.delete(
            Source::Endpoints,
            &Resource::Endpoints.cache_key(&name("cluster-c"), "198.51.100.7"),
        );
        apply(&mut index, &mut maps);
        assert!(maps.0.contains_key(&prefix));
        // The lease ends: the cache entry goes, and the ipcache entry with it.
        index.delete(
            Source::Endpoints,
            &Resource::Endpoints.cache_key(&name("cluster-b"), "198.51.100.7"),
        );
        apply(&mut index, &mut maps);
        assert!(!maps.0.contains_key(&prefix));
        assert_eq!(index.counts().resolved, 0);
        // An entry resolved from a remote etcd (never cached) stays until forgotten.
        let direct = index
            .add_resolved("cluster-b", pair("198.51.100.9", 9, "203.0.113.2"))
            .unwrap();
        replace(&mut index, Source::Endpoints, &[]);
        apply(&mut index, &mut maps);
        assert!(maps.0.contains_key(&direct));
        index.forget_resolved(direct);
        apply(&mut index, &mut maps);
        assert!(!maps.0.contains_key(&direct));
    }

    #[test]
    fn prefix_entries_are_keyed_by_their_prefix() {
        let mut index = standalone(true);
        let mut p = pair("10.0.0.0", 16_777_217, "203.0.113.2");
        p.mask = Some(vec![255, 0, 0, 0]);
        let key = Resource::Endpoints.cache_key(&name("cluster-b"), &p.prefix_string());
        assert!(key.ends_with("10.0.0.0/8"));
        index.put(Source::Endpoints, &key, &p.to_json_bytes());
        assert_eq!(
            index
                .wanted_ipcache(net("10.0.0.0/8"))
                .map(|v| v.sec_identity),
            Some(16_777_217)
        );
        assert_eq!(index.wanted_ipcache(net("10.0.0.0/32")), None);
        index.delete(Source::Endpoints, &key);
        assert_eq!(index.wanted_ipcache(net("10.0.0.0/8")), None);
    }

    #[test]
    fn unusable_entries_are_counted_and_skipped() {
        let mut index = standalone(true);
        // An IP that does not reproduce its key (Cilium refuses it too).
        let (_, value) = endpoint("cluster-b", "198.51.100.8", 1, "203.0.113.2");
        let wrong = Resource::Endpoints.cache_key(&name("cluster-b"), "198.51.100.9");
        index.put(Source::Endpoints, &wrong, &value);
        // A node key under the endpoints prefix, garbage, an invalid cluster name.
        let (node_key, node_value) = node_b1();
        index.put(Source::Endpoints, &node_key, &node_value);
        index.put(Source::Nodes, &node_key, b"{not json");
        index.put(
            Source::ClusterConfigs,
            "cilium/cluster-config/Bad_Name",
            b"{}",
        );
        // A node claiming another cluster than its key's.
        let (_, other) = node("cluster-c", "b1", "198.51.100.0/24", "203.0.113.2", "x");
        index.put(Source::Nodes, &node_key, &other);
        let counts = index.counts();
        assert_eq!(counts.invalid, 5);
        assert_eq!(
            (counts.endpoints, counts.nodes, counts.clusters.len()),
            (0, 0, 0)
        );
    }
}
