//! The ipcache miss a filter decides about.

use crate::Candidate;
#[cfg(not(target_arch = "wasm32"))]
use crate::Locality;

#[cfg(target_arch = "wasm32")]
type Inner = crate::wasm::HostMissRequest;
#[cfg(not(target_arch = "wasm32"))]
type Inner = crate::native::MissRequestData;

/// A datapath ipcache miss on one node: a packet went to [`MissRequest::address`] and the
/// node had no entry for it more specific than a pod-CIDR or world entry.
///
/// Like [`Endpoint`](crate::Endpoint) this is a handle in a module: each accessor asks the
/// host, and the decision is memoised on the calls made. In native tests it is a plain
/// value built with [`MissRequest::builder`].
#[derive(Debug)]
#[repr(transparent)]
pub struct MissRequest {
    inner: Inner,
}

impl MissRequest {
    /// The missed address in canonical text form.
    pub fn address(&self) -> String {
        self.inner.address()
    }

    /// The ipcache prefix that covered the address (e.g. a remote node's pod CIDR), if any.
    pub fn covering_prefix(&self) -> Option<String> {
        self.inner.covering_prefix()
    }

    /// Tunnel endpoint of the covering prefix, if any.
    pub fn tunnel_endpoint(&self) -> Option<String> {
        self.inner.tunnel_endpoint()
    }

    /// Name of the node that saw the miss.
    pub fn local_node(&self) -> String {
        self.inner.local_node()
    }

    /// Remote clusters that could own the address, the owner of the covering pod CIDR (if
    /// known) first.
    // Identity on native; converts the generated records on wasm32.
    #[allow(
        clippy::useless_conversion,
        reason = "the conversion is needed on wasm32, where the WIT type differs"
    )]
    pub fn candidates(&self) -> Vec<Candidate> {
        self.inner
            .candidates()
            .into_iter()
            .map(Into::into)
            .collect()
    }
}

#[cfg(target_arch = "wasm32")]
impl MissRequest {
    /// Views a host handle as a `MissRequest`.
    pub(crate) fn from_host(handle: &Inner) -> &MissRequest {
        // SAFETY: `MissRequest` is `#[repr(transparent)]` over `Inner`, so both references
        // have the same layout, and the returned borrow keeps the lifetime of `handle`.
        unsafe { &*(handle as *const Inner).cast::<MissRequest>() }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl MissRequest {
    /// Starts a test miss request (native targets only). Unset fields are empty and there
    /// are no candidates.
    pub fn builder() -> MissRequestBuilder {
        MissRequestBuilder::default()
    }

    /// The accessor calls made on this request so far, in order (native targets only).
    pub fn reads(&self) -> Vec<String> {
        self.inner.reads()
    }
}

/// Builds a test [`MissRequest`] (native targets only).
///
/// ```
/// use meshfilter_guest_sdk::{Locality, MissRequest};
/// let request = MissRequest::builder()
///     .address("10.2.3.4")
///     .covering_prefix("10.2.3.0/24")
///     .candidate(Locality::new("c2").with_region("eu-west-1"), true)
///     .candidate(Locality::new("c3"), false)
///     .build();
/// assert_eq!(request.candidates().len(), 2);
/// ```
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Default)]
#[must_use]
pub struct MissRequestBuilder {
    data: crate::native::MissRequestData,
}

#[cfg(not(target_arch = "wasm32"))]
impl MissRequestBuilder {
    /// Sets the missed address.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.data.address = address.into();
        self
    }

    /// Sets the covering prefix.
    pub fn covering_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.data.covering_prefix = Some(prefix.into());
        self
    }

    /// Sets the tunnel endpoint.
    pub fn tunnel_endpoint(mut self, ip: impl Into<String>) -> Self {
        self.data.tunnel_endpoint = Some(ip.into());
        self
    }

    /// Sets the name of the node that saw the miss.
    pub fn local_node(mut self, node: impl Into<String>) -> Self {
        self.data.local_node = node.into();
        self
    }

    /// Appends a candidate cluster.
    pub fn candidate(mut self, locality: Locality, owns_prefix: bool) -> Self {
        self.data.candidates.push(Candidate {
            locality,
            owns_prefix,
        });
        self
    }

    /// Finishes the request.
    pub fn build(self) -> MissRequest {
        MissRequest { inner: self.data }
    }
}
