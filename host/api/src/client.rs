//! A blocking client of `meshfilter mesh`'s HTTP API, for the CLI and the node agent
//! (which calls it off its async workers).

use std::net::IpAddr;
use std::time::Duration;

use crate::resolve::{ResolveError, Resolved};
use crate::status::MeshStatus;

/// Why a call did not produce an answer of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server could not be reached or did not answer in time.
    #[error("{url}: {message}")]
    Transport {
        /// What was asked.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered something this client does not understand.
    #[error("{url} answered {status}: {message}")]
    Unexpected {
        /// What was asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The body, or why it could not be read.
        message: String,
    },
}

/// Longest body kept in an error.
const MAX_ERROR_BODY: usize = 512;

/// A client of one `meshfilter mesh` at `base` (e.g. `http://10.0.0.1:9964`).
#[derive(Debug, Clone)]
pub struct MeshClient {
    base: String,
    agent: ureq::Agent,
}

impl MeshClient {
    /// A client with `timeout` per request; connections are kept alive between calls.
    pub fn new(base: &str, timeout: Duration) -> MeshClient {
        let base = if base.contains("://") {
            base.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        MeshClient {
            base,
            agent: ureq::AgentBuilder::new().timeout(timeout).build(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /status`.
    pub fn status(&self) -> Result<MeshStatus, ApiError> {
        let url = format!("{}/status", self.base);
        let (status, body) = self.get(&url)?;
        if status != 200 {
            return Err(unexpected(&url, status, &body));
        }
        serde_json::from_str(&body).map_err(|e| unexpected(&url, status, &e.to_string()))
    }

    /// `GET /explain?cluster=..&ip=..`: why an endpoint is or is not in the cache, as the
    /// server renders it. `Err` carries the server's answer when it is not 200.
    pub fn explain(&self, cluster: &str, ip: &str) -> Result<serde_json::Value, ApiError> {
        let url = format!("{}/explain?cluster={cluster}&ip={ip}", self.base);
        let (status, body) = self.get(&url)?;
        if status != 200 {
            return Err(unexpected(&url, status, &body));
        }
        serde_json::from_str(&body).map_err(|e| unexpected(&url, status, &e.to_string()))
    }

    /// `GET /resolve?ip=..`: `Ok(Ok(..))` resolved, `Ok(Err(..))` the API's answer why
    /// not, `Err` no answer of the API.
    pub fn resolve(&self, ip: IpAddr) -> Result<Result<Resolved, ResolveError>, ApiError> {
        let url = format!("{}/resolve?ip={ip}", self.base);
        let (status, body) = self.get(&url)?;
        if status == 200 {
            return serde_json::from_str(&body)
                .map(Ok)
                .map_err(|e| unexpected(&url, status, &e.to_string()));
        }
        match serde_json::from_str::<ResolveError>(&body) {
            Ok(e) if e.status_code() == status => Ok(Err(e)),
            _ => Err(unexpected(&url, status, &body)),
        }
    }

    /// The status and body of a GET, whatever the status.
    fn get(&self, url: &str) -> Result<(u16, String), ApiError> {
        let resp = match self.agent.get(url).call() {
            Ok(resp) => resp,
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(e) => {
                return Err(ApiError::Transport {
                    url: url.to_string(),
                    message: e.to_string(),
                });
            }
        };
        let status = resp.status();
        let body = resp.into_string().map_err(|e| ApiError::Transport {
            url: url.to_string(),
            message: format!("reading the answer: {e}"),
        })?;
        Ok((status, body))
    }
}

fn unexpected(url: &str, status: u16, body: &str) -> ApiError {
    let mut message: String = body.chars().take(MAX_ERROR_BODY).collect();
    if message.len() < body.len() {
        message.push('…');
    }
    ApiError::Unexpected {
        url: url.to_string(),
        status,
        message,
    }
}
