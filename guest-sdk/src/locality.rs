//! Where clusters and nodes are.

use meshfilter_contract::scope;

/// Where a cluster or a node is: its cluster name, and its zone and region from the node
/// labels `topology.kubernetes.io/zone` and `topology.kubernetes.io/region` when known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    /// Cluster name (Cilium's `cluster-name`).
    pub cluster: String,
    /// Zone, when known.
    pub zone: Option<String>,
    /// Region, when known.
    pub region: Option<String>,
}

impl Locality {
    /// A locality in `cluster` with unknown zone and region.
    pub fn new(cluster: impl Into<String>) -> Locality {
        Locality {
            cluster: cluster.into(),
            zone: None,
            region: None,
        }
    }

    /// Sets the zone.
    #[must_use]
    pub fn with_zone(mut self, zone: impl Into<String>) -> Locality {
        self.zone = Some(zone.into());
        self
    }

    /// Sets the region.
    #[must_use]
    pub fn with_region(mut self, region: impl Into<String>) -> Locality {
        self.region = Some(region.into());
        self
    }

    /// Borrowed view for [`Scope::admits`](crate::Scope::admits).
    pub fn as_borrowed(&self) -> scope::Locality<'_> {
        scope::Locality {
            cluster: &self.cluster,
            zone: self.zone.as_deref(),
            region: self.region.as_deref(),
        }
    }
}

/// A remote cluster that may own a missed address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// The cluster and where it is.
    pub locality: Locality,
    /// True when one of this cluster's node pod CIDRs covers the address.
    pub owns_prefix: bool,
}

/// The cluster this host runs in, with its zone and region.
///
/// Each call asks the host; call it only when a decision needs it. In native tests it is
/// the test thread's locality, set with [`testing::set_local`](crate::testing::set_local)
/// (cluster `local`, zone and region unknown until then).
pub fn local() -> Locality {
    #[cfg(target_arch = "wasm32")]
    {
        crate::wasm::local()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::native::local()
    }
}
