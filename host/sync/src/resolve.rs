//! On-demand resolution: one endpoint, looked up across the mesh even if the filters
//! left it out, for the node agent's datapath-miss path.
//!
//! The owner of the covering pod CIDR is asked first, then the other remotes. A found
//! endpoint is pinned in its cluster's import mirror: the reflector writes it into the
//! local cache like any mirrored entry (same lease, same watch updates) and deletes it
//! once the pin expires unused; resolving it again renews the pin. One fetch per address
//! is in flight at a time, misses are negative-cached, and fetches are rate-limited so a
//! flood of unknown addresses cannot turn into a flood of etcd requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::remote::RemoteStatusHandle;

/// A resolved endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    /// The cluster that owns it.
    pub cluster: String,
    /// Its key in the local cache.
    pub key: String,
    /// Its value, verbatim.
    pub value: String,
}

/// Why an address was not resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum ResolveError {
    /// No remote cluster has it.
    #[error("{ip} is not an endpoint of any remote cluster")]
    NotFound {
        /// The address.
        ip: IpAddr,
    },
    /// It was not found recently; not asked again until the negative entry expires.
    #[error("{ip} was not found recently (negative-cached)")]
    NegativeCached {
        /// The address.
        ip: IpAddr,
    },
    /// Too many fetches per second.
    #[error("resolution rate limit reached")]
    RateLimited,
    /// It was found but did not appear in the local cache in time.
    #[error("{ip} was found in {cluster} but could not be written into the local cache")]
    NotInstalled {
        /// The address.
        ip: IpAddr,
        /// Where it was found.
        cluster: String,
    },
}

/// Counters of the resolver.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolverStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests that joined a fetch already in flight for the same address.
    pub deduplicated: AtomicU64,
    /// Requests answered from the negative cache.
    pub negative_hits: AtomicU64,
    /// Requests refused by the rate limit.
    pub rate_limited: AtomicU64,
    /// Fetches sent to remote etcds.
    pub remote_reads: AtomicU64,
    /// Addresses resolved.
    pub resolved: AtomicU64,
}

type Inflight = Arc<OnceCell<Result<Resolved, ResolveError>>>;

/// Resolves addresses across the remotes a mesh mirrors.
pub struct Resolver {
    remotes: Arc<dyn Fn() -> Vec<(String, RemoteStatusHandle)> + Send + Sync>,
    local: etcd_client::Client,
    pin_ttl: Duration,
    negative_ttl: Duration,
    per_second: f64,
    bucket: Mutex<(f64, Instant)>,
    inflight: Mutex<HashMap<IpAddr, Inflight>>,
    negative: Mutex<HashMap<IpAddr, Instant>>,
    /// The lease resolved entries are written under, and when it was granted: shared by
    /// every resolution within a second, so most cost one write, not a grant and a write.
    lease: tokio::sync::Mutex<Option<(i64, Instant)>>,
    stats: ResolverStats,
}

impl Resolver {
    /// `remotes` lists the mirrored remotes; found entries stay pinned for `pin_ttl`
    /// after their last resolution, misses are remembered for `negative_ttl`, and at most
    /// `per_second` fetches start per second.
    pub fn new(
        remotes: Arc<dyn Fn() -> Vec<(String, RemoteStatusHandle)> + Send + Sync>,
        local: etcd_client::Client,
        pin_ttl: Duration,
        negative_ttl: Duration,
        per_second: u32,
    ) -> Arc<Resolver> {
        let per_second = f64::from(per_second.max(1));
        Arc::new(Resolver {
            remotes,
            local,
            pin_ttl,
            negative_ttl,
            per_second,
            bucket: Mutex::new((per_second, Instant::now())),
            inflight: Mutex::default(),
            negative: Mutex::default(),
            lease: tokio::sync::Mutex::new(None),
            stats: ResolverStats::default(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> &ResolverStats {
        &self.stats
    }

    /// Resolves `ip` and waits until it is in the local cache.
    pub async fn resolve(&self, ip: IpAddr) -> Result<Resolved, ResolveError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if self
            .negative
            .lock()
            .get(&ip)
            .is_some_and(|until| *until > Instant::now())
        {
            self.stats.negative_hits.fetch_add(1, Ordering::Relaxed);
            return Err(ResolveError::NegativeCached { ip });
        }
        let cell = {
            let mut inflight = self.inflight.lock();
            match inflight.get(&ip) {
                Some(c) => {
                    self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                    c.clone()
                }
                None => inflight.entry(ip).or_default().clone(),
            }
        };
        let result = cell.get_or_init(|| self.fetch(ip)).await.clone();
        let mut inflight = self.inflight.lock();
        if inflight.get(&ip).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&ip);
        }
        result
    }

    /// Expires pins that were not renewed; call periodically.
    pub fn expire(&self) {
        let now = Instant::now();
        for (_, handle) in (self.remotes)() {
            if let Some(mirror) = handle.endpoints() {
                mirror.expire_pins(now);
            }
        }
        self.negative.lock().retain(|_, until| *until > now);
    }

    fn take_token(&self) -> bool {
        let mut b = self.bucket.lock();
        let now = Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * self.per_second).min(self.per_second);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// A lease that lives as long as a pin (plus at most the second it is shared for).
    async fn write_lease(&self) -> Result<i64, etcd_client::Error> {
        let mut lease = self.lease.lock().await;
        if let Some((id, granted)) = *lease
            && granted.elapsed() < Duration::from_secs(1)
        {
            return Ok(id);
        }
        let ttl = i64::try_from(self.pin_ttl.as_secs().max(1) + 1).unwrap_or(i64::MAX);
        let id = self.local.lease_client().grant(ttl, None).await?.id();
        *lease = Some((id, Instant::now()));
        Ok(id)
    }

    async fn fetch(&self, ip: IpAddr) -> Result<Resolved, ResolveError> {
        if !self.take_token() {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(ResolveError::RateLimited);
        }
        let mut remotes = (self.remotes)();
        // The owner of the covering pod CIDR first.
        remotes.sort_by_key(|(_, h)| !h.owns(&ip));
        let key_ip = ip.to_string();
        for (cluster, handle) in remotes {
            let (Some((client, prefix)), Some(mirror)) = (handle.source(), handle.endpoints())
            else {
                continue;
            };
            self.stats.remote_reads.fetch_add(1, Ordering::Relaxed);
            let found = client
                .kv_client()
                .get(
                    format!("{prefix}{key_ip}"),
                    Some(etcd_client::GetOptions::new().with_serializable()),
                )
                .await;
            let Ok(resp) = found else { continue };
            let Some(kv) = resp.kvs().first() else {
                continue;
            };
            let value = kv.value_str().unwrap_or_default().to_string();
            mirror.pin(&key_ip, Instant::now() + self.pin_ttl);
            // Write it now rather than wait for the mirror: the pin makes the mirror
            // write (and later delete) it too, under its own lease, but converging a
            // whole remote takes longer than a node agent should wait. The entry's own
            // lease ends with the pin, so nothing outlives it if the mirror never runs.
            let key = format!("cilium/cache/ip/v1/{cluster}/{key_ip}");
            let written = async {
                let lease = self.write_lease().await?;
                self.local
                    .kv_client()
                    .put(
                        key.as_bytes(),
                        value.as_bytes(),
                        Some(etcd_client::PutOptions::new().with_lease(lease)),
                    )
                    .await
            }
            .await;
            return match written {
                Ok(_) => {
                    self.stats.resolved.fetch_add(1, Ordering::Relaxed);
                    Ok(Resolved {
                        cluster,
                        key,
                        value,
                    })
                }
                Err(e) => {
                    tracing::warn!(%ip, %cluster, error = %e, "writing a resolved entry into the local cache");
                    Err(ResolveError::NotInstalled { ip, cluster })
                }
            };
        }
        self.negative
            .lock()
            .insert(ip, Instant::now() + self.negative_ttl);
        Err(ResolveError::NotFound { ip })
    }
}
