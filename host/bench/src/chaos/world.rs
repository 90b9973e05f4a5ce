//! One remote cluster as its clustermesh-apiserver sees it: nodes with topology labels,
//! identities in the cluster's ID range, endpoints on those nodes, global services, and
//! the random changes a live cluster goes through (pods come and go, relabel, move scope;
//! nodes change region or leave; identities appear and are garbage-collected).
//!
//! The generator only decides what to write. What the soak checks against is read back
//! from the source etcds at the end ([`super::model`]), so a write that failed during a
//! fault (and left this bookkeeping ahead of etcd) cannot make the model wrong.

use std::collections::BTreeMap;

use fastrand::Rng;

use super::wire::{self, EndpointValue, NodeRecord};

/// Nodes per cluster; each owns the /24 pod CIDR `10.<cluster index>.<node>.0/24`.
const NODES: u8 = 8;
/// Pod slots per node (`.10` to `.209`).
const SLOTS: u8 = 200;
/// Identities per cluster at start, and at most.
const IDENTITIES: u32 = 16;
const MAX_IDENTITIES: u32 = 40;
/// Global services per cluster at start.
const SERVICES: u8 = 4;
/// Node regions: the local cluster's, another, and none (the filter fails open on it).
const REGIONS: [Option<&str>; 3] = [Some(super::LOCAL_REGION), Some("us-east-1"), None];
const NAMESPACES: [&str; 3] = ["shop", "payments", "batch"];

/// A node's topology.
#[derive(Debug, Clone)]
struct NodeSpec {
    region: Option<&'static str>,
}

/// An identity's labels that matter to the filters.
#[derive(Debug, Clone)]
struct IdentitySpec {
    namespace: &'static str,
    /// `clustermesh.cilium.io/sync` label.
    sync: Option<&'static str>,
    /// `clustermesh.cilium.io/sync-scope` label.
    scope: Option<&'static str>,
}

/// One pod IP.
#[derive(Debug, Clone)]
struct EndpointSpec {
    /// Local index of its identity.
    identity: u32,
    /// `SyncScope` as a PoC clustermesh-apiserver writes it (direct remotes only).
    scope: Option<&'static str>,
    /// Bumped on every rewrite, so the pod name (and the value) changes.
    generation: u32,
}

/// One change to a source etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceWrite {
    /// Put `value` at `key`.
    Put(String, String),
    /// Delete `key`.
    Delete(String),
}

/// What a resolve asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResolveTarget {
    /// An endpoint that exists.
    Existing,
    /// A regional endpoint on a node in another region (filtered out, resolved on demand).
    Filtered,
    /// An address no endpoint has.
    Unknown,
}

/// One remote cluster's source state as generated.
#[derive(Debug, Clone)]
pub(crate) struct ClusterWorld {
    /// Cluster name.
    pub(crate) name: String,
    /// Position among the remotes: fixes its address space.
    index: u8,
    /// Cilium cluster ID (changes when the cluster is rebuilt with a new ID).
    pub(crate) id: u32,
    /// Whether endpoints carry `SyncScope` themselves (a PoC clustermesh-apiserver read
    /// directly by the mesh) or leave it to `meshfilter export`.
    writes_scope: bool,
    nodes: BTreeMap<u8, NodeSpec>,
    identities: BTreeMap<u32, IdentitySpec>,
    endpoints: BTreeMap<(u8, u8), EndpointSpec>,
    services: BTreeMap<u8, u16>,
}

fn pick<T: Copy>(rng: &mut Rng, choices: &[(u32, T)]) -> T {
    let total: u32 = choices.iter().map(|(w, _)| w).sum();
    let mut at = rng.u32(0..total);
    for (w, c) in choices {
        if at < *w {
            return *c;
        }
        at -= w;
    }
    choices[choices.len() - 1].1
}

impl ClusterWorld {
    /// Cluster `name` at position `index` (1-based) with ID `id` and `endpoints` pods.
    pub(crate) fn new(
        name: &str,
        index: u8,
        id: u32,
        writes_scope: bool,
        endpoints: usize,
        rng: &mut Rng,
    ) -> ClusterWorld {
        let mut world = ClusterWorld {
            name: name.to_string(),
            index,
            id,
            writes_scope,
            nodes: BTreeMap::new(),
            identities: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            services: BTreeMap::new(),
        };
        for n in 0..NODES {
            world.nodes.insert(n, world.random_node(rng));
        }
        for i in 0..IDENTITIES {
            world.identities.insert(i, random_identity(rng));
        }
        for s in 0..SERVICES {
            world.services.insert(s, 8000 + u16::from(s));
        }
        let wanted = endpoints.min(usize::from(NODES) * usize::from(SLOTS));
        while world.endpoints.len() < wanted {
            let at = (rng.u8(0..NODES), rng.u8(0..SLOTS));
            let spec = world.random_endpoint(rng);
            world.endpoints.entry(at).or_insert(spec);
        }
        world
    }

    fn random_node(&self, rng: &mut Rng) -> NodeSpec {
        NodeSpec {
            region: REGIONS[rng.usize(0..REGIONS.len())],
        }
    }

    fn random_endpoint(&self, rng: &mut Rng) -> EndpointSpec {
        let identities: Vec<u32> = self.identities.keys().copied().collect();
        EndpointSpec {
            identity: identities[rng.usize(0..identities.len())],
            scope: self.random_scope(rng),
            generation: 0,
        }
    }

    fn random_scope(&self, rng: &mut Rng) -> Option<&'static str> {
        if !self.writes_scope {
            return None;
        }
        pick(
            rng,
            &[
                (40, None),
                (20, Some("global")),
                (35, Some("regional")),
                (5, Some("cluster")),
            ],
        )
    }

    /// Numeric identity of local index `i` in the current cluster ID's range.
    fn identity(&self, i: u32) -> u32 {
        (self.id << 16) + 256 + i
    }

    fn node_name(&self, n: u8) -> String {
        format!("{}-node-{n}", self.name)
    }

    fn node_ip(&self, n: u8) -> String {
        format!("172.20.{}.{}", self.index, u16::from(n) + 1)
    }

    fn pod_ip(&self, n: u8, slot: u8) -> String {
        format!("10.{}.{n}.{}", self.index, u16::from(slot) + 10)
    }

    fn config(&self) -> (String, String) {
        (wire::config_key(&self.name), wire::config_value(self.id))
    }

    fn node_kv(&self, n: u8, spec: &NodeSpec) -> (String, String) {
        let name = self.node_name(n);
        let value = NodeRecord {
            cluster: &self.name,
            cluster_id: self.id,
            name: &name,
            ip: &self.node_ip(n),
            pod_cidr_ip: &format!("10.{}.{n}.0", self.index),
            region: spec.region,
            zone: spec.region.map(|r| {
                if r.starts_with("eu") {
                    "eu-west-1a"
                } else {
                    "us-east-1b"
                }
            }),
        }
        .render();
        (format!("{}{name}", wire::nodes_prefix(&self.name)), value)
    }

    fn identity_kv(&self, i: u32, spec: &IdentitySpec) -> (String, String) {
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), format!("app-{i}"));
        labels.insert(
            "io.cilium.k8s.policy.cluster".to_string(),
            self.name.clone(),
        );
        labels.insert(
            "io.kubernetes.pod.namespace".to_string(),
            spec.namespace.to_string(),
        );
        if let Some(sync) = spec.sync {
            labels.insert(wire::SYNC_LABEL.to_string(), sync.to_string());
        }
        if let Some(scope) = spec.scope {
            labels.insert(wire::SCOPE_LABEL.to_string(), scope.to_string());
        }
        (
            format!("{}{}", wire::IDENTITIES, self.identity(i)),
            wire::identity_value(&labels),
        )
    }

    fn endpoint_kv(&self, (n, slot): (u8, u8), spec: &EndpointSpec) -> (String, String) {
        let ip = self.pod_ip(n, slot);
        let namespace = self
            .identities
            .get(&spec.identity)
            .map_or("shop", |i| i.namespace);
        let value = EndpointValue {
            ip: ip.clone(),
            host_ip: self.node_ip(n),
            id: self.identity(spec.identity),
            namespace: namespace.to_string(),
            pod: format!("pod-{n}-{slot}-{}", spec.generation),
            scope: spec.scope.map(str::to_string),
        }
        .render();
        (format!("{}{ip}", wire::ENDPOINTS), value)
    }

    fn service_kv(&self, s: u8, port: u16) -> (String, String) {
        let (namespace, name) = (
            NAMESPACES[usize::from(s) % NAMESPACES.len()],
            format!("svc-{s}"),
        );
        (
            format!("{}{namespace}/{name}", wire::services_prefix(&self.name)),
            wire::service_value(&self.name, self.id, namespace, &name, port),
        )
    }

    /// Everything a clustermesh-apiserver writes before its canaries: the cluster config,
    /// nodes, identities, services, endpoints.
    pub(crate) fn initial_data(&self) -> Vec<(String, String)> {
        let mut kvs = vec![self.config()];
        kvs.extend(self.nodes.iter().map(|(n, s)| self.node_kv(*n, s)));
        kvs.extend(self.identities.iter().map(|(i, s)| self.identity_kv(*i, s)));
        kvs.extend(self.services.iter().map(|(s, p)| self.service_kv(*s, *p)));
        kvs.extend(
            self.endpoints
                .iter()
                .map(|(at, e)| self.endpoint_kv(*at, e)),
        );
        kvs
    }

    /// The sync canaries, written once the initial data is in etcd.
    pub(crate) fn canaries(&self) -> Vec<(String, String)> {
        wire::SOURCE_RESOURCES
            .iter()
            .map(|r| {
                (
                    wire::source_canary(&self.name, r),
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                )
            })
            .collect()
    }

    /// The cluster is rebuilt with Cilium cluster ID `id`: identities are numbered in the
    /// new range from now on (the refill writes them so).
    pub(crate) fn renumber(&mut self, id: u32) {
        self.id = id;
    }

    /// One random change, as the writes that make it.
    pub(crate) fn churn(&mut self, rng: &mut Rng) -> Vec<SourceWrite> {
        #[derive(Clone, Copy)]
        enum Op {
            AddPod,
            ChangePod,
            DeletePod,
            Relabel,
            AddIdentity,
            DeleteIdentity,
            MoveNode,
            NodeComesOrGoes,
            Service,
        }
        let op = pick(
            rng,
            &[
                (30, Op::AddPod),
                (20, Op::ChangePod),
                (18, Op::DeletePod),
                (8, Op::Relabel),
                (3, Op::AddIdentity),
                (2, Op::DeleteIdentity),
                (7, Op::MoveNode),
                (2, Op::NodeComesOrGoes),
                (10, Op::Service),
            ],
        );
        let put = |(k, v): (String, String)| vec![SourceWrite::Put(k, v)];
        match op {
            Op::AddPod => {
                let at = (rng.u8(0..NODES), rng.u8(0..SLOTS));
                if self.endpoints.contains_key(&at) || self.identities.is_empty() {
                    return Vec::new();
                }
                let spec = self.random_endpoint(rng);
                let kv = self.endpoint_kv(at, &spec);
                self.endpoints.insert(at, spec);
                put(kv)
            }
            Op::ChangePod => {
                let Some(at) = self.random_key(rng, |w| &w.endpoints) else {
                    return Vec::new();
                };
                let identities: Vec<u32> = self.identities.keys().copied().collect();
                let new_scope = self.random_scope(rng);
                let Some(spec) = self.endpoints.get_mut(&at) else {
                    return Vec::new();
                };
                spec.generation += 1;
                if rng.bool() || !self.writes_scope {
                    spec.identity = identities[rng.usize(0..identities.len())];
                } else {
                    spec.scope = new_scope;
                }
                let spec = spec.clone();
                put(self.endpoint_kv(at, &spec))
            }
            Op::DeletePod => match self.random_key(rng, |w| &w.endpoints) {
                Some(at) => {
                    self.endpoints.remove(&at);
                    vec![SourceWrite::Delete(format!(
                        "{}{}",
                        wire::ENDPOINTS,
                        self.pod_ip(at.0, at.1)
                    ))]
                }
                None => Vec::new(),
            },
            Op::Relabel => {
                let Some(i) = self.random_key(rng, |w| &w.identities) else {
                    return Vec::new();
                };
                let fresh = random_identity(rng);
                let Some(spec) = self.identities.get_mut(&i) else {
                    return Vec::new();
                };
                spec.sync = fresh.sync;
                spec.scope = fresh.scope;
                let spec = spec.clone();
                put(self.identity_kv(i, &spec))
            }
            Op::AddIdentity => {
                let Some(i) = (0..MAX_IDENTITIES).find(|i| !self.identities.contains_key(i)) else {
                    return Vec::new();
                };
                let spec = random_identity(rng);
                let kv = self.identity_kv(i, &spec);
                self.identities.insert(i, spec);
                put(kv)
            }
            Op::DeleteIdentity => {
                // Cilium garbage-collects identities no endpoint uses any more.
                let Some(i) = self.random_key(rng, |w| &w.identities) else {
                    return Vec::new();
                };
                if self.identities.len() <= 2 || self.endpoints.values().any(|e| e.identity == i) {
                    return Vec::new();
                }
                self.identities.remove(&i);
                vec![SourceWrite::Delete(format!(
                    "{}{}",
                    wire::IDENTITIES,
                    self.identity(i)
                ))]
            }
            Op::MoveNode => {
                let Some(n) = self.random_key(rng, |w| &w.nodes) else {
                    return Vec::new();
                };
                let spec = self.random_node(rng);
                let kv = self.node_kv(n, &spec);
                self.nodes.insert(n, spec);
                put(kv)
            }
            Op::NodeComesOrGoes => {
                let n = rng.u8(0..NODES);
                if self.nodes.remove(&n).is_some() {
                    // Its pods stay for a while: the regional filter cannot place them.
                    vec![SourceWrite::Delete(format!(
                        "{}{}",
                        wire::nodes_prefix(&self.name),
                        self.node_name(n)
                    ))]
                } else {
                    let spec = self.random_node(rng);
                    let kv = self.node_kv(n, &spec);
                    self.nodes.insert(n, spec);
                    put(kv)
                }
            }
            Op::Service => {
                let s = rng.u8(0..SERVICES * 2);
                if self.services.contains_key(&s) && rng.bool() {
                    self.services.remove(&s);
                    let (key, _) = self.service_kv(s, 0);
                    vec![SourceWrite::Delete(key)]
                } else {
                    let port = rng.u16(8000..9000);
                    self.services.insert(s, port);
                    put(self.service_kv(s, port))
                }
            }
        }
    }

    fn random_key<K: Copy + Ord, V>(
        &self,
        rng: &mut Rng,
        map: impl Fn(&ClusterWorld) -> &BTreeMap<K, V>,
    ) -> Option<K> {
        let map = map(self);
        if map.is_empty() {
            return None;
        }
        map.keys().nth(rng.usize(0..map.len())).copied()
    }

    /// An address to resolve: an existing endpoint, a filtered-out one (regional on a
    /// node in another region), or one nobody has. `None` when the cluster has no such
    /// endpoint right now.
    pub(crate) fn resolve_target(&self, rng: &mut Rng, target: ResolveTarget) -> Option<String> {
        match target {
            ResolveTarget::Existing => self
                .random_key(rng, |w| &w.endpoints)
                .map(|(n, s)| self.pod_ip(n, s)),
            ResolveTarget::Filtered => {
                let filtered: Vec<(u8, u8)> = self
                    .endpoints
                    .iter()
                    .filter(|((n, _), e)| {
                        e.scope == Some("regional")
                            && self.nodes.get(n).is_some_and(|node| {
                                node.region.is_some_and(|r| r != super::LOCAL_REGION)
                            })
                    })
                    .map(|(at, _)| *at)
                    .collect();
                (!filtered.is_empty()).then(|| {
                    let (n, s) = filtered[rng.usize(0..filtered.len())];
                    self.pod_ip(n, s)
                })
            }
            ResolveTarget::Unknown => Some(format!(
                "10.{}.{}.{}",
                self.index,
                rng.u8(0..NODES),
                rng.u8(230..250)
            )),
        }
    }
}

fn random_identity(rng: &mut Rng) -> IdentitySpec {
    IdentitySpec {
        namespace: NAMESPACES[rng.usize(0..NAMESPACES.len())],
        sync: pick(rng, &[(50, Some("true")), (10, Some("false")), (40, None)]),
        scope: pick(
            rng,
            &[
                (55, None),
                (30, Some("regional")),
                (10, Some("global")),
                (5, Some("cluster")),
            ],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_keeps_writes_in_the_clusters_layout() {
        let mut rng = Rng::with_seed(7);
        let mut world = ClusterWorld::new("remote-2", 2, 2, true, 50, &mut rng);
        assert_eq!(world.endpoints.len(), 50);
        let data = world.initial_data();
        assert_eq!(data[0].0, "cilium/cluster-config/remote-2");
        for _ in 0..500 {
            for write in world.churn(&mut rng) {
                let key = match write {
                    SourceWrite::Put(k, _) | SourceWrite::Delete(k) => k,
                };
                assert!(
                    key.starts_with(wire::ENDPOINTS)
                        || key.starts_with(wire::IDENTITIES)
                        || key.starts_with("cilium/state/nodes/v1/remote-2/")
                        || key.starts_with("cilium/state/services/v1/remote-2/"),
                    "{key}"
                );
            }
        }
        world.renumber(9);
        assert!(
            world
                .initial_data()
                .iter()
                .filter(|(k, _)| k.starts_with(wire::IDENTITIES))
                .all(|(k, _)| k[wire::IDENTITIES.len()..].parse::<u32>().unwrap() >> 16 == 9)
        );
    }
}
