//! Memoised decisions keyed by exactly what the guest read.
//!
//! A filter pulls endpoint fields through host calls. Each call is recorded as a
//! [`ReadOp`] with the bytes of the value it returned. Because a filter is a deterministic
//! function of its config and of what it reads, the sequence of reads of one call forms a
//! path in a decision tree: the first read is the same for every input, and each later read
//! depends only on the values before it. Storing those paths in a trie lets the host replay
//! the filter natively: evaluate the first read on a new input, follow the branch for its
//! value, evaluate the next read, and so on until a leaf holds the decision. Inputs that
//! agree on everything the filter looked at share one Wasm call, however much else about
//! them differs. An unseen branch is a miss: the guest runs and its path is added.
//!
//! This is sound only for deterministic filters; the host freezes clocks and seeds random
//! numbers per store for that reason, and a path that contradicts the trie (a different
//! read where the trie expects another) disables memoisation for the module.

use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::HashMap;
use parking_lot::RwLock;
use rustc_hash::FxHasher;

use crate::input::{EndpointInput, Locality, MissInput};

/// One host call a guest made, with its argument.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ReadOp {
    Namespace,
    PodName,
    Ip,
    NodeIp,
    Identity,
    ServiceAccount,
    Label(Box<str>),
    Labels,
    Annotation(Box<str>),
    /// All pod annotations (interface 0.2).
    Annotations,
    NamespaceAnnotation(Box<str>),
    SyncScope,
    Origin,
    Local,
    MissAddress,
    CoveringPrefix,
    TunnelEndpoint,
    LocalNode,
    Candidates,
}

/// The reads of one guest call, in order, with value bytes packed in one buffer so a call
/// allocates nothing once the log has warmed up.
#[derive(Debug, Default)]
pub(crate) struct ReadLog {
    ops: Vec<(ReadOp, usize, usize)>,
    bytes: Vec<u8>,
    /// Off for instances that do not memoise: nothing would read the log.
    off: bool,
}

impl ReadLog {
    /// Starts a call's log; `enabled` is false when the decision will not be memoised.
    pub(crate) fn start(&mut self, enabled: bool) {
        self.clear();
        self.off = !enabled;
    }

    pub(crate) fn clear(&mut self) {
        self.ops.clear();
        self.bytes.clear();
    }

    /// Records a read; `encode` appends the value's canonical bytes.
    pub(crate) fn record(&mut self, op: ReadOp, encode: impl FnOnce(&mut Vec<u8>)) {
        if self.off {
            return;
        }
        let start = self.bytes.len();
        encode(&mut self.bytes);
        self.ops.push((op, start, self.bytes.len()));
    }

    fn iter(&self) -> impl Iterator<Item = (&ReadOp, &[u8])> {
        self.ops.iter().map(|(op, s, e)| (op, &self.bytes[*s..*e]))
    }
}

/// Canonical value encodings shared by the recorder (host calls) and the replayer.
pub(crate) mod encode {
    use crate::input::{CandidateCluster, Locality};

    pub(crate) fn str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    pub(crate) fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                str(out, s);
            }
        }
    }

    pub(crate) fn u32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn locality(out: &mut Vec<u8>, l: &Locality) {
        str(out, &l.cluster);
        opt_str(out, l.zone.as_deref());
        opt_str(out, l.region.as_deref());
    }

    pub(crate) fn pairs<'a>(
        out: &mut Vec<u8>,
        pairs: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
    ) {
        u32(out, pairs.len() as u32);
        for (k, v) in pairs {
            str(out, k);
            str(out, v);
        }
    }

    pub(crate) fn candidates(out: &mut Vec<u8>, c: &[CandidateCluster]) {
        u32(out, c.len() as u32);
        for c in c {
            locality(out, &c.locality);
            out.push(c.owns_prefix as u8);
        }
    }
}

/// Something a filter can read: an endpoint or a miss request, plus the host's locality.
pub(crate) trait Readable {
    /// Appends the value `op` reads on this input; false if the op does not apply to it.
    fn evaluate(&self, op: &ReadOp, local: &Locality, out: &mut Vec<u8>) -> bool;
}

impl Readable for EndpointInput {
    fn evaluate(&self, op: &ReadOp, local: &Locality, out: &mut Vec<u8>) -> bool {
        match op {
            ReadOp::Namespace => encode::str(out, &self.namespace),
            ReadOp::PodName => encode::str(out, &self.pod_name),
            ReadOp::Ip => encode::str(out, &self.ip),
            ReadOp::NodeIp => encode::opt_str(out, self.node_ip.as_deref()),
            ReadOp::Identity => encode::u32(out, self.identity),
            ReadOp::ServiceAccount => encode::opt_str(out, self.service_account.as_deref()),
            ReadOp::Label(k) => encode::opt_str(out, self.labels.get(&**k).map(String::as_str)),
            ReadOp::Labels => encode::pairs(out, self.labels.iter()),
            ReadOp::Annotation(k) => {
                encode::opt_str(out, self.annotations.get(&**k).map(String::as_str))
            }
            ReadOp::Annotations => encode::pairs(out, self.annotations.iter()),
            ReadOp::NamespaceAnnotation(k) => encode::opt_str(
                out,
                self.namespace_annotations.get(&**k).map(String::as_str),
            ),
            ReadOp::SyncScope => encode::opt_str(out, self.sync_scope.as_deref()),
            ReadOp::Origin => encode::locality(out, &self.origin),
            ReadOp::Local => encode::locality(out, local),
            _ => return false,
        }
        true
    }
}

impl Readable for MissInput {
    fn evaluate(&self, op: &ReadOp, local: &Locality, out: &mut Vec<u8>) -> bool {
        match op {
            ReadOp::MissAddress => encode::str(out, &self.address),
            ReadOp::CoveringPrefix => encode::opt_str(out, self.covering_prefix.as_deref()),
            ReadOp::TunnelEndpoint => encode::opt_str(out, self.tunnel_endpoint.as_deref()),
            ReadOp::LocalNode => encode::str(out, &self.local_node),
            ReadOp::Candidates => encode::candidates(out, &self.candidates),
            ReadOp::Local => encode::locality(out, local),
            _ => return false,
        }
        true
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;

enum Node<D> {
    /// A branch whose path has been seen up to here but whose next step is not yet known.
    Empty,
    Leaf(D),
    Branch {
        op: ReadOp,
        children: HashMap<Box<[u8]>, Node<D>, FxBuild>,
    },
}

/// Outcome of adding a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Insert {
    Added,
    /// The path contradicts the trie: the filter is not deterministic.
    Conflict,
    /// The trie is full; the path was not stored.
    Full,
}

/// Decision trie for one filter instance and hook.
pub(crate) struct Memo<D> {
    root: RwLock<Node<D>>,
    leaves: AtomicUsize,
    max_leaves: usize,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl<D: Clone> Memo<D> {
    pub(crate) fn new(max_leaves: usize) -> Memo<D> {
        Memo {
            root: RwLock::new(Node::Empty),
            leaves: AtomicUsize::new(0),
            max_leaves,
        }
    }

    /// Number of stored decisions.
    pub(crate) fn len(&self) -> usize {
        self.leaves.load(Ordering::Relaxed)
    }

    /// Replays the trie on `input`; `Some` is the decision the guest would make.
    pub(crate) fn lookup<I: Readable + ?Sized>(&self, input: &I, local: &Locality) -> Option<D> {
        let root = self.root.read();
        let mut node = &*root;
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            loop {
                match node {
                    Node::Empty => return None,
                    Node::Leaf(d) => return Some(d.clone()),
                    Node::Branch { op, children } => {
                        scratch.clear();
                        if !input.evaluate(op, local, &mut scratch) {
                            return None;
                        }
                        node = children.get(scratch.as_slice())?;
                    }
                }
            }
        })
    }

    /// Adds the path a guest call took and the decision it made.
    pub(crate) fn insert(&self, log: &ReadLog, decision: D) -> Insert {
        if self.len() >= self.max_leaves {
            return Insert::Full;
        }
        let mut root = self.root.write();
        let mut node = &mut *root;
        for (op, value) in log.iter() {
            if let Node::Empty = node {
                *node = Node::Branch {
                    op: op.clone(),
                    children: HashMap::default(),
                };
            }
            match node {
                Node::Branch {
                    op: expected,
                    children,
                } if expected == op => {
                    node = children
                        .entry(Box::<[u8]>::from(value))
                        .or_insert(Node::Empty);
                }
                _ => return Insert::Conflict,
            }
        }
        match node {
            Node::Empty => {
                *node = Node::Leaf(decision);
                self.leaves.fetch_add(1, Ordering::Relaxed);
                Insert::Added
            }
            Node::Leaf(_) => Insert::Added,
            Node::Branch { .. } => Insert::Conflict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(sync: Option<&str>, app: &str) -> EndpointInput {
        let mut ep = EndpointInput {
            namespace: "ns".into(),
            ..Default::default()
        };
        if let Some(v) = sync {
            ep.labels.insert("sync".into(), v.into());
        }
        ep.labels.insert("app".into(), app.into());
        ep
    }

    /// Records what a filter reading `sync` and, only when it is "true", `app` would read.
    fn log_for(ep: &EndpointInput) -> ReadLog {
        let local = Locality::default();
        let mut log = ReadLog::default();
        for op in [ReadOp::Label("sync".into()), ReadOp::Label("app".into())] {
            let mut value = Vec::new();
            ep.evaluate(&op, &local, &mut value);
            log.record(op.clone(), |out| out.extend_from_slice(&value));
            if ep.labels.get("sync").map(String::as_str) != Some("true") {
                break;
            }
        }
        log
    }

    #[test]
    fn replays_only_what_was_read() {
        let memo = Memo::new(100);
        let local = Locality::default();
        let a = endpoint(Some("true"), "web");
        assert_eq!(memo.lookup(&a, &local), None);
        assert_eq!(memo.insert(&log_for(&a), "sync web"), Insert::Added);
        assert_eq!(memo.lookup(&a, &local), Some("sync web"));

        // Different app, sync true: the second read differs, so it is a miss.
        let b = endpoint(Some("true"), "db");
        assert_eq!(memo.lookup(&b, &local), None);

        // Not opted in: only the first read counts, any app shares the decision.
        let c = endpoint(None, "x");
        assert_eq!(memo.insert(&log_for(&c), "skip"), Insert::Added);
        assert_eq!(memo.lookup(&endpoint(None, "y"), &local), Some("skip"));
        assert_eq!(memo.len(), 2);
    }

    #[test]
    fn contradicting_paths_are_refused() {
        let memo = Memo::new(100);
        let a = endpoint(Some("true"), "web");
        memo.insert(&log_for(&a), "x");
        let mut other = ReadLog::default();
        other.record(ReadOp::Namespace, |out| encode::str(out, "ns"));
        assert_eq!(memo.insert(&other, "y"), Insert::Conflict);
    }

    #[test]
    fn a_full_trie_stores_nothing_more() {
        let memo = Memo::new(1);
        memo.insert(&log_for(&endpoint(None, "a")), "skip");
        assert_eq!(
            memo.insert(&log_for(&endpoint(Some("true"), "a")), "sync"),
            Insert::Full
        );
    }
}
