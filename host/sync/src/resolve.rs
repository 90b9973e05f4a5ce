//! On-demand resolution: one endpoint, looked up across the mesh even if the filters
//! left it out, for the node agent's datapath-miss path.
//!
//! The owner of the covering pod CIDR is asked first, then the other remotes. A found
//! endpoint is checked the way the mirror checks what it writes (it parses as an entry of
//! that cluster for that address, its identity lies in the cluster's range, it is not too
//! large), created in the local cache only if the key is absent (so a mirrored key never
//! changes hands), through the mirror's own writer (its leases, its leader fence), and
//! pinned in the cluster's import mirror, which keeps it while the pin lasts and deletes
//! it once the pin expires unless the filters keep it; resolving it again renews the pin.
//!
//! One fetch per address is in flight at a time, misses are negative-cached, fetches are
//! rate-limited overall and per client, and remote reads time out, so a flood of unknown
//! addresses cannot turn into a flood of etcd requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meshfilter_api::{ResolveError, Resolved, ResolverCounters};
use meshfilter_cilium::{ClusterName, Resource};
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::metrics::SyncMetrics;
use crate::reflector::ReflectorLimits;
use crate::remote::RemoteStatusHandle;
use crate::writer::TargetWriter;

/// Counters of the resolver, counted as things happen ([`Resolver::counters`] reads them).
#[derive(Debug, Default)]
pub struct ResolverStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests that joined a fetch already in flight for the same address.
    pub deduplicated: AtomicU64,
    /// Requests answered from the negative cache.
    pub negative_hits: AtomicU64,
    /// Requests refused by the overall rate limit.
    pub rate_limited: AtomicU64,
    /// Requests refused by the per-client rate limit.
    pub client_rate_limited: AtomicU64,
    /// Fetches sent to remote etcds.
    pub remote_reads: AtomicU64,
    /// Remote reads that failed or timed out.
    pub remote_errors: AtomicU64,
    /// Found entries refused because the mirror would not accept them.
    pub refused: AtomicU64,
    /// Addresses resolved.
    pub resolved: AtomicU64,
}

type Inflight = Arc<OnceCell<Result<Resolved, ResolveError>>>;

/// How a resolver is bounded.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// How long a found entry stays pinned after its last resolution.
    pub pin_ttl: Duration,
    /// How long a miss is remembered.
    pub negative_ttl: Duration,
    /// Fetches started per second, overall.
    pub per_second: u32,
    /// Requests per second from one client address.
    pub per_client_per_second: u32,
    /// How long one remote read may take.
    pub remote_timeout: Duration,
}

impl Default for ResolverConfig {
    fn default() -> ResolverConfig {
        ResolverConfig {
            pin_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(5),
            per_second: 1000,
            per_client_per_second: 200,
            remote_timeout: Duration::from_secs(2),
        }
    }
}

/// Clients tracked for the per-client limit; beyond this, the oldest buckets go.
const MAX_CLIENTS: usize = 65_536;

/// A token bucket refilled at `rate` per second up to `rate`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: f64) -> Bucket {
        Bucket {
            tokens: rate,
            at: Instant::now(),
        }
    }

    fn take(&mut self, rate: f64) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The remotes a resolver searches, as the mesh lists them.
pub type RemoteList = Arc<dyn Fn() -> Vec<(ClusterName, RemoteStatusHandle)> + Send + Sync>;

/// Resolves addresses across the remotes a mesh mirrors.
pub struct Resolver {
    remotes: RemoteList,
    writer: Arc<TargetWriter>,
    config: ResolverConfig,
    bucket: Mutex<Bucket>,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
    inflight: Mutex<HashMap<IpAddr, Inflight>>,
    negative: Mutex<HashMap<IpAddr, Instant>>,
    stats: ResolverStats,
    metrics: SyncMetrics,
}

impl Resolver {
    /// Searches `remotes`, writing found entries through `writer` (the mirror's).
    pub fn new(
        remotes: RemoteList,
        writer: Arc<TargetWriter>,
        config: ResolverConfig,
        metrics: SyncMetrics,
    ) -> Arc<Resolver> {
        let rate = f64::from(config.per_second.max(1));
        Arc::new(Resolver {
            remotes,
            writer,
            bucket: Mutex::new(Bucket::full(rate)),
            config,
            clients: Mutex::default(),
            inflight: Mutex::default(),
            negative: Mutex::default(),
            stats: ResolverStats::default(),
            metrics,
        })
    }

    /// Counters.
    pub fn stats(&self) -> &ResolverStats {
        &self.stats
    }

    /// The counters as `/status` shows them.
    pub fn counters(&self) -> ResolverCounters {
        let s = &self.stats;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ResolverCounters {
            requests: n(&s.requests),
            deduplicated: n(&s.deduplicated),
            negative_hits: n(&s.negative_hits),
            rate_limited: n(&s.rate_limited),
            client_rate_limited: n(&s.client_rate_limited),
            remote_reads: n(&s.remote_reads),
            remote_errors: n(&s.remote_errors),
            refused: n(&s.refused),
            resolved: n(&s.resolved),
        }
    }

    /// How long a found entry stays pinned.
    pub fn pin_ttl(&self) -> Duration {
        self.config.pin_ttl
    }

    /// Resolves `ip` for `client` and waits until it is in the local cache.
    pub async fn resolve(
        &self,
        ip: IpAddr,
        client: Option<IpAddr>,
    ) -> Result<Resolved, ResolveError> {
        self.count(&self.stats.requests, "request");
        if let Some(client) = client
            && !self.client_token(client)
        {
            self.count(&self.stats.client_rate_limited, "client-rate-limited");
            return Err(ResolveError::RateLimited);
        }
        if self
            .negative
            .lock()
            .get(&ip)
            .is_some_and(|until| *until > Instant::now())
        {
            self.count(&self.stats.negative_hits, "negative-hit");
            return Err(ResolveError::NegativeCached { ip });
        }
        let cell = {
            let mut inflight = self.inflight.lock();
            match inflight.get(&ip) {
                Some(c) => {
                    self.count(&self.stats.deduplicated, "deduplicated");
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

    /// Counts one event in status and in metrics.
    fn count(&self, counter: &AtomicU64, outcome: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics.resolved(outcome);
    }

    fn client_token(&self, client: IpAddr) -> bool {
        let rate = f64::from(self.config.per_client_per_second.max(1));
        let mut clients = self.clients.lock();
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            // Forget idle clients first; a full table of busy ones is reset.
            let idle = Instant::now() - Duration::from_secs(10);
            clients.retain(|_, b| b.at > idle);
            if clients.len() >= MAX_CLIENTS {
                clients.clear();
            }
        }
        clients
            .entry(client)
            .or_insert_with(|| Bucket::full(rate))
            .take(rate)
    }

    async fn fetch(&self, ip: IpAddr) -> Result<Resolved, ResolveError> {
        let rate = f64::from(self.config.per_second.max(1));
        if !self.bucket.lock().take(rate) {
            self.count(&self.stats.rate_limited, "rate-limited");
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
            self.count(&self.stats.remote_reads, "remote-read");
            let mut kv = client.kv_client();
            let read = kv.get(
                format!("{prefix}{key_ip}"),
                Some(etcd_client::GetOptions::new().with_serializable()),
            );
            let resp = match tokio::time::timeout(self.config.remote_timeout, read).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => {
                    self.count(&self.stats.remote_errors, "remote-error");
                    tracing::debug!(%ip, %cluster, error = %e, "remote read failed");
                    continue;
                }
                Err(_) => {
                    self.count(&self.stats.remote_errors, "remote-error");
                    tracing::debug!(%ip, %cluster, "remote read timed out");
                    continue;
                }
            };
            let Some(kv) = resp.kvs().first() else {
                continue;
            };
            let value = Bytes::copy_from_slice(kv.value());
            let checked = if value.len() > ReflectorLimits::default().max_value_bytes {
                Err(format!(
                    "{} bytes is more than an entry may be",
                    value.len()
                ))
            } else {
                mirror.validate(&key_ip, &value)
            };
            if let Err(why) = checked {
                self.count(&self.stats.refused, "refused");
                tracing::warn!(%ip, %cluster, why, "refusing a resolved entry the mirror would not accept");
                return Err(ResolveError::Invalid {
                    ip,
                    cluster: cluster.to_string(),
                });
            }
            let key = Resource::Endpoints.cache_key(&cluster, &key_ip);
            // Created only if absent: a key the mirror already holds keeps its value and
            // its lease. The pin then makes the mirror take the entry as its own.
            return match self.writer.create(&key, value.clone()).await {
                Ok(created) => {
                    mirror.pin(
                        &key_ip,
                        Instant::now() + self.config.pin_ttl,
                        created.map(|lease| (value.clone(), lease)),
                    );
                    self.count(&self.stats.resolved, "resolved");
                    Ok(Resolved {
                        cluster: cluster.to_string(),
                        key,
                        value: String::from_utf8_lossy(&value).into_owned(),
                    })
                }
                Err(e) => {
                    tracing::warn!(%ip, %cluster, error = %e, "writing a resolved entry into the local cache");
                    Err(ResolveError::NotInstalled {
                        ip,
                        cluster: cluster.to_string(),
                    })
                }
            };
        }
        self.negative
            .lock()
            .insert(ip, Instant::now() + self.config.negative_ttl);
        Err(ResolveError::NotFound { ip })
    }
}
