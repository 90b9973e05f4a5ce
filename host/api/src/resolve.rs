//! `/resolve?ip=<address>` of `meshfilter mesh`: the node agent's on-demand lookup.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A resolved endpoint (HTTP 200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    /// The cluster that owns it.
    pub cluster: String,
    /// Its key in the local cache.
    pub key: String,
    /// Its value, verbatim (an `IpIdentityPair`).
    pub value: String,
}

/// Why an address was not resolved, with the HTTP status that carries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum ResolveError {
    /// No remote cluster has it (404).
    #[error("{ip} is not an endpoint of any remote cluster")]
    NotFound {
        /// The address.
        ip: IpAddr,
    },
    /// It was not found recently; not asked again until the negative entry expires (404).
    #[error("{ip} was not found recently (negative-cached)")]
    NegativeCached {
        /// The address.
        ip: IpAddr,
    },
    /// Too many lookups per second, overall or from this client (429).
    #[error("resolution rate limit reached")]
    RateLimited,
    /// It was found, but its entry is not one the mirror would accept (422).
    #[error("{ip} was found in {cluster}, but its entry is invalid")]
    Invalid {
        /// The address.
        ip: IpAddr,
        /// Where it was found.
        cluster: String,
    },
    /// It was found but could not be written into the local cache (504).
    #[error("{ip} was found in {cluster} but could not be written into the local cache")]
    NotInstalled {
        /// The address.
        ip: IpAddr,
        /// Where it was found.
        cluster: String,
    },
    /// This replica does not hold the leader lock and resolves nothing (503).
    #[error("this replica is a standby and does not resolve")]
    Standby,
}

impl ResolveError {
    /// The HTTP status the server answers with.
    pub fn status_code(&self) -> u16 {
        match self {
            ResolveError::NotFound { .. } | ResolveError::NegativeCached { .. } => 404,
            ResolveError::RateLimited => 429,
            ResolveError::Invalid { .. } => 422,
            ResolveError::NotInstalled { .. } => 504,
            ResolveError::Standby => 503,
        }
    }

    /// Whether asking again later may succeed (the client should back off rather than
    /// treat the address as unknown).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ResolveError::RateLimited | ResolveError::NotInstalled { .. } | ResolveError::Standby
        )
    }
}
