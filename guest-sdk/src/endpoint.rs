//! The endpoint a filter decides about.

use crate::Locality;

#[cfg(target_arch = "wasm32")]
type Inner = crate::wasm::HostEndpoint;
#[cfg(not(target_arch = "wasm32"))]
type Inner = crate::native::EndpointData;

/// One pod endpoint: seen by [`Filter::export`](crate::Filter::export) in the source
/// cluster (from its CiliumEndpoint, Pod and Namespace) and by
/// [`Filter::import`](crate::Filter::import) in a consuming cluster (from the remote
/// ipcache entry joined with its identity and node).
///
/// # Each accessor is a question to the host
///
/// In a module this is a handle: every method call asks the host for one field, and the
/// host memoises the decision keyed by exactly the calls made and their results. Call only
/// what the decision needs, when it needs it, and do not cache results across decisions
/// (see [the determinism contract](crate#the-determinism-contract)). Prefer
/// [`Endpoint::label`] over [`Endpoint::labels`]: one key read is a small memo key, all
/// labels make every distinct label set a separate entry.
///
/// # In native tests
///
/// The same type is a plain value built with [`Endpoint::builder`], and
/// [`Endpoint::reads`] lists the accessor calls made so far.
#[derive(Debug)]
#[repr(transparent)]
pub struct Endpoint {
    inner: Inner,
}

// The casts in `wasm.rs` rely on this layout; the accessors are the same on both targets
// (the native backend mirrors the generated binding's method names and types).
impl Endpoint {
    /// Kubernetes namespace of the pod.
    pub fn namespace(&self) -> String {
        self.inner.namespace()
    }

    /// Pod name.
    pub fn pod_name(&self) -> String {
        self.inner.pod_name()
    }

    /// The endpoint's IP address in canonical text form.
    pub fn ip(&self) -> String {
        self.inner.ip()
    }

    /// IP of the node hosting the pod (Cilium's `HostIP`), if known.
    pub fn node_ip(&self) -> Option<String> {
        self.inner.node_ip()
    }

    /// Numeric security identity.
    pub fn identity(&self) -> u32 {
        self.inner.identity()
    }

    /// Kubernetes service account, if known.
    pub fn service_account(&self) -> Option<String> {
        self.inner.service_account()
    }

    /// Value of one pod label. On the import side pod labels come from the endpoint's
    /// security identity (source `k8s`).
    pub fn label(&self, key: &str) -> Option<String> {
        self.inner.label(key)
    }

    /// All pod labels, sorted by key. Makes the whole label set part of the memo key:
    /// use [`Endpoint::label`] when the keys are known.
    pub fn labels(&self) -> Vec<(String, String)> {
        self.inner.labels()
    }

    /// Value of one pod annotation (export side only; always `None` on import).
    pub fn annotation(&self, key: &str) -> Option<String> {
        self.inner.annotation(key)
    }

    /// All pod annotations, sorted by key (export side only; empty on import). Makes every
    /// annotation part of the memo key: use [`Endpoint::annotation`] when the key is
    /// known, this when it is not (all keys with a prefix, say). Interface 0.2.
    pub fn annotations(&self) -> Vec<(String, String)> {
        self.inner.annotations()
    }

    /// Value of one annotation of the pod's namespace (export side only).
    pub fn namespace_annotation(&self, key: &str) -> Option<String> {
        self.inner.namespace_annotation(key)
    }

    /// The scope recorded at the source (the `SyncScope` field of the ipcache entry), raw:
    /// parse it with [`Scope::parse`](crate::Scope::parse). Import side only; `None` on
    /// export.
    pub fn sync_scope(&self) -> Option<String> {
        self.inner.sync_scope()
    }

    /// Where the endpoint is: its cluster, and its node's zone and region. On the export
    /// side the cluster is this one.
    // Identity on native; converts the generated record on wasm32.
    #[allow(
        clippy::useless_conversion,
        reason = "the conversion is needed on wasm32, where the WIT type differs"
    )]
    pub fn origin(&self) -> Locality {
        self.inner.origin().into()
    }
}

#[cfg(target_arch = "wasm32")]
impl Endpoint {
    /// Views a host handle as an `Endpoint`.
    pub(crate) fn from_host(handle: &Inner) -> &Endpoint {
        // SAFETY: `Endpoint` is `#[repr(transparent)]` over `Inner`, so both references
        // have the same layout, and the returned borrow keeps the lifetime of `handle`.
        unsafe { &*(handle as *const Inner).cast::<Endpoint>() }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Endpoint {
    /// Starts a test endpoint (native targets only). Unset fields are empty, the namespace
    /// is `default` and the origin is the test thread's [`local()`](crate::local()).
    pub fn builder() -> EndpointBuilder {
        EndpointBuilder::default()
    }

    /// The accessor calls made on this endpoint so far, in order, written as calls:
    /// `label(app)`, `origin()` (native targets only). What the host would use as the
    /// memo key.
    pub fn reads(&self) -> Vec<String> {
        self.inner.reads()
    }
}

/// Builds a test [`Endpoint`] (native targets only).
///
/// ```
/// use meshfilter_guest_sdk::{Endpoint, Locality};
/// let endpoint = Endpoint::builder()
///     .namespace("shop")
///     .pod_name("web-0")
///     .label("app", "web")
///     .annotation("clustermesh.cilium.io/sync-scope", "regional")
///     .origin(Locality::new("c2").with_region("eu-west-1"))
///     .build();
/// assert_eq!(endpoint.label("app").as_deref(), Some("web"));
/// ```
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Default)]
#[must_use]
pub struct EndpointBuilder {
    data: crate::native::EndpointData,
    origin_set: bool,
}

#[cfg(not(target_arch = "wasm32"))]
impl EndpointBuilder {
    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.data.namespace = namespace.into();
        self
    }

    /// Sets the pod name.
    pub fn pod_name(mut self, name: impl Into<String>) -> Self {
        self.data.pod_name = name.into();
        self
    }

    /// Sets the endpoint IP.
    pub fn ip(mut self, ip: impl Into<String>) -> Self {
        self.data.ip = ip.into();
        self
    }

    /// Sets the node IP.
    pub fn node_ip(mut self, ip: impl Into<String>) -> Self {
        self.data.node_ip = Some(ip.into());
        self
    }

    /// Sets the security identity.
    pub fn identity(mut self, identity: u32) -> Self {
        self.data.identity = identity;
        self
    }

    /// Sets the service account.
    pub fn service_account(mut self, account: impl Into<String>) -> Self {
        self.data.service_account = Some(account.into());
        self
    }

    /// Adds a pod label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.data.labels.insert(key.into(), value.into());
        self
    }

    /// Adds a pod annotation.
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.data.annotations.insert(key.into(), value.into());
        self
    }

    /// Adds an annotation of the pod's namespace.
    pub fn namespace_annotation(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.data
            .namespace_annotations
            .insert(key.into(), value.into());
        self
    }

    /// Sets the raw `SyncScope` of an imported entry.
    pub fn sync_scope(mut self, scope: impl Into<String>) -> Self {
        self.data.sync_scope = Some(scope.into());
        self
    }

    /// Sets where the endpoint is.
    pub fn origin(mut self, origin: Locality) -> Self {
        self.data.origin = origin;
        self.origin_set = true;
        self
    }

    /// Finishes the endpoint.
    pub fn build(mut self) -> Endpoint {
        if !self.origin_set {
            self.data.origin = crate::local();
        }
        Endpoint { inner: self.data }
    }
}
