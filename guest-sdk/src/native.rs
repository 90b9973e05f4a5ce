//! The native backend: plain values instead of host handles, for `cargo test`.
//!
//! The data types mirror the generated bindings' method names and types so that
//! [`Endpoint`](crate::Endpoint) and [`MissRequest`](crate::MissRequest) have one set of
//! accessors on every target. Each accessor records the call, as the host would for its
//! memo key.

use crate::{Candidate, Level, Locality};
use std::cell::RefCell;
use std::collections::BTreeMap;

thread_local! {
    static LOCAL: RefCell<Locality> = RefCell::new(Locality::new("local"));
    static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn local() -> Locality {
    LOCAL.with_borrow(Locality::clone)
}

pub(crate) fn set_local(locality: Locality) {
    LOCAL.set(locality);
}

pub(crate) fn log(level: Level, message: String) {
    eprintln!("[{level}] {message}");
    LOGS.with_borrow_mut(|logs| logs.push((level, message)));
}

pub(crate) fn take_logs() -> Vec<(Level, String)> {
    LOGS.take()
}

/// The accessor calls made on one test value.
#[derive(Debug, Default)]
struct Reads(RefCell<Vec<String>>);

impl Reads {
    /// Records `call` and returns `value`.
    fn record<T>(&self, call: impl Into<String>, value: T) -> T {
        self.0.borrow_mut().push(call.into());
        value
    }

    fn list(&self) -> Vec<String> {
        self.0.borrow().clone()
    }
}

#[derive(Debug)]
pub(crate) struct EndpointData {
    pub(crate) namespace: String,
    pub(crate) pod_name: String,
    pub(crate) ip: String,
    pub(crate) node_ip: Option<String>,
    pub(crate) identity: u32,
    pub(crate) service_account: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) annotations: BTreeMap<String, String>,
    pub(crate) namespace_annotations: BTreeMap<String, String>,
    pub(crate) sync_scope: Option<String>,
    pub(crate) origin: Locality,
    reads: Reads,
}

impl Default for EndpointData {
    fn default() -> EndpointData {
        EndpointData {
            namespace: "default".to_string(),
            pod_name: String::new(),
            ip: String::new(),
            node_ip: None,
            identity: 0,
            service_account: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            namespace_annotations: BTreeMap::new(),
            sync_scope: None,
            origin: Locality::default(),
            reads: Reads::default(),
        }
    }
}

impl EndpointData {
    pub(crate) fn namespace(&self) -> String {
        self.reads.record("namespace()", self.namespace.clone())
    }

    pub(crate) fn pod_name(&self) -> String {
        self.reads.record("pod_name()", self.pod_name.clone())
    }

    pub(crate) fn ip(&self) -> String {
        self.reads.record("ip()", self.ip.clone())
    }

    pub(crate) fn node_ip(&self) -> Option<String> {
        self.reads.record("node_ip()", self.node_ip.clone())
    }

    pub(crate) fn identity(&self) -> u32 {
        self.reads.record("identity()", self.identity)
    }

    pub(crate) fn service_account(&self) -> Option<String> {
        self.reads
            .record("service_account()", self.service_account.clone())
    }

    pub(crate) fn label(&self, key: &str) -> Option<String> {
        self.reads
            .record(format!("label({key})"), self.labels.get(key).cloned())
    }

    pub(crate) fn labels(&self) -> Vec<(String, String)> {
        let all = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.reads.record("labels()", all)
    }

    pub(crate) fn annotation(&self, key: &str) -> Option<String> {
        self.reads.record(
            format!("annotation({key})"),
            self.annotations.get(key).cloned(),
        )
    }

    pub(crate) fn annotations(&self) -> Vec<(String, String)> {
        let all = self
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.reads.record("annotations()", all)
    }

    pub(crate) fn namespace_annotation(&self, key: &str) -> Option<String> {
        self.reads.record(
            format!("namespace_annotation({key})"),
            self.namespace_annotations.get(key).cloned(),
        )
    }

    pub(crate) fn sync_scope(&self) -> Option<String> {
        self.reads.record("sync_scope()", self.sync_scope.clone())
    }

    pub(crate) fn origin(&self) -> Locality {
        self.reads.record("origin()", self.origin.clone())
    }

    pub(crate) fn reads(&self) -> Vec<String> {
        self.reads.list()
    }
}

#[derive(Debug, Default)]
pub(crate) struct MissRequestData {
    pub(crate) address: String,
    pub(crate) covering_prefix: Option<String>,
    pub(crate) tunnel_endpoint: Option<String>,
    pub(crate) local_node: String,
    pub(crate) candidates: Vec<Candidate>,
    reads: Reads,
}

impl MissRequestData {
    pub(crate) fn address(&self) -> String {
        self.reads.record("address()", self.address.clone())
    }

    pub(crate) fn covering_prefix(&self) -> Option<String> {
        self.reads
            .record("covering_prefix()", self.covering_prefix.clone())
    }

    pub(crate) fn tunnel_endpoint(&self) -> Option<String> {
        self.reads
            .record("tunnel_endpoint()", self.tunnel_endpoint.clone())
    }

    pub(crate) fn local_node(&self) -> String {
        self.reads.record("local_node()", self.local_node.clone())
    }

    pub(crate) fn candidates(&self) -> Vec<Candidate> {
        self.reads.record("candidates()", self.candidates.clone())
    }

    pub(crate) fn reads(&self) -> Vec<String> {
        self.reads.list()
    }
}
