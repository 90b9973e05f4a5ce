//! One reflector: the source prefix a [`Watcher`] follows, converged into a target.
//!
//! The reflector keeps the source's current content in memory (key to value) and, through
//! [`TargetKeys`], what it wrote to the target. Every change recomputes the target entries
//! of the affected source keys through its [`Mirror`] and writes only the difference, so an
//! excluded entry is always a delete of a copy written earlier, never a silent skip.
//! Converging everything again is cheap, which is what a filter reload, a node update, a
//! relist or a lost lease needs.
//!
//! Source and target fail independently. A broken source is the watcher's business (it
//! relists, gated on the source's sync canary); the reflector keeps the last complete
//! list meanwhile, so nothing is deleted because a source went away. A failed write marks
//! the target unknown: after a jittered backoff the reflector reads the target back and
//! converges everything, without listing the source again.
//!
//! Bounds: an entry larger than [`ReflectorLimits::max_value_bytes`] or beyond
//! [`ReflectorLimits::max_entries`] is refused (never written), counted by reason in
//! status and metrics, so a compromised or broken source cannot fill the target.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use etcd_client::Client;
use meshfilter_api::ReflectorStatus;
use meshfilter_etcd::{Backoff, Change, Entry, WatchEvent, Watcher};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::error::SyncError;
use crate::metrics::{RefusedLabel, ResourceLabel, SyncMetrics};
use crate::target::TargetKeys;
use crate::writer::TargetWriter;

/// What a reflector copies and how.
pub trait Mirror: Send + Sync + 'static {
    /// Short name for logs and status, e.g. `endpoints`.
    fn name(&self) -> &str;
    /// Source prefix to list and watch.
    fn source_prefix(&self) -> &str;
    /// Target key of a source key, or `None` if the key is not mirrored at all.
    fn target_key(&self, source_key: &str) -> Option<String>;
    /// Target prefix holding exactly this reflector's keys (for garbage collection of
    /// what an earlier run left behind).
    fn target_prefix(&self) -> &str;
    /// Sync canary written at the target after the first complete list.
    fn canary_key(&self) -> Option<&str>;
    /// Whether the source and target "prefixes" are single keys (a cluster config), so
    /// `cilium/cluster-config/c1` does not take in `cilium/cluster-config/c10`.
    fn exact(&self) -> bool {
        false
    }
    /// The value to write for one source entry, or `None` when it must not be at the
    /// target (filtered out, or invalid).
    fn transform(&self, source_key: &str, value: &Bytes) -> Option<Bytes>;
    /// Called when a source entry changes (`None`: deleted) before it is transformed.
    fn observe(&self, _source_key: &str, _value: Option<&Bytes>) {}
    /// Where the mirror asks for decisions to be made again.
    fn rechecks(&self) -> Option<Arc<Rechecks>> {
        None
    }
}

/// Requests to decide entries again, from outside the reflector: everything (a new filter
/// generation, new topology) or single keys (a pin from the on-demand resolver).
#[derive(Debug, Default)]
pub struct Rechecks {
    state: Mutex<RecheckState>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct RecheckState {
    all: bool,
    keys: HashSet<String>,
    /// Target keys someone else wrote through the same writer: (key, value, lease).
    written: Vec<(String, Bytes, i64)>,
}

impl Rechecks {
    /// Every entry must be decided again.
    pub fn all(&self) {
        self.state.lock().all = true;
        self.notify.notify_one();
    }

    /// The entry at `source_key` must be decided again.
    pub fn key(&self, source_key: String) {
        self.state.lock().keys.insert(source_key);
        self.notify.notify_one();
    }

    /// `target_key` was written with `value` on `lease` by someone sharing the writer;
    /// the reflector takes it as its own.
    pub fn written(&self, target_key: String, value: Bytes, lease: i64) {
        self.state.lock().written.push((target_key, value, lease));
        self.notify.notify_one();
    }

    fn take(&self) -> RecheckState {
        std::mem::take(&mut *self.state.lock())
    }
}

/// Bounds on what one reflector accepts from its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReflectorLimits {
    /// Entries kept from the source; further new keys are refused.
    pub max_entries: usize,
    /// Largest value accepted.
    pub max_value_bytes: usize,
}

impl Default for ReflectorLimits {
    /// Generous for any real cluster (Cilium caps a cluster at 65,535 identities and an
    /// etcd value at 1.5 MiB), and small enough that one source cannot fill the target.
    fn default() -> ReflectorLimits {
        ReflectorLimits {
            max_entries: 1 << 20,
            max_value_bytes: 1 << 20,
        }
    }
}

/// Longest error text kept in status: an error may quote what a remote sent.
pub const MAX_ERROR_CHARS: usize = 1024;

/// `text` cut to `max` characters, marked when cut.
pub(crate) fn bounded(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text,
        Some((cut, _)) => format!("{}… (truncated, {} bytes)", &text[..cut], text.len()),
    }
}

/// What is left to write.
#[derive(Debug, Default)]
struct Pending {
    all: bool,
    keys: HashSet<String>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty()
    }
}

/// One mirror running against one source and one target.
pub struct Reflector<M: Mirror> {
    cluster: String,
    source_client: Client,
    gate: Option<String>,
    writer: Arc<TargetWriter>,
    mirror: Arc<M>,
    status: Arc<Mutex<ReflectorStatus>>,
    synced: watch::Sender<bool>,
    source: HashMap<String, Bytes>,
    /// The list being received, between `Init` and `InitDone`.
    listing: Option<HashMap<String, Bytes>>,
    listed: bool,
    target: TargetKeys,
    target_unknown: bool,
    pending: Pending,
    canary_lease: i64,
    backoff: Backoff,
    limits: ReflectorLimits,
    metrics: SyncMetrics,
    label: ResourceLabel,
}

impl<M: Mirror> Reflector<M> {
    /// A reflector for `mirror` reading `source` (of cluster `cluster`) and writing via
    /// `writer`; failures are retried with `backoff`.
    pub fn new(
        cluster: &str,
        source: Client,
        writer: Arc<TargetWriter>,
        mirror: Arc<M>,
        backoff: Backoff,
        metrics: SyncMetrics,
    ) -> Self {
        let (synced, _) = watch::channel(false);
        let target = if mirror.exact() {
            TargetKeys::exact(writer.clone(), mirror.target_prefix())
        } else {
            TargetKeys::new(writer.clone(), mirror.target_prefix())
        };
        let label = ResourceLabel {
            cluster: cluster.to_string(),
            resource: mirror.name().to_string(),
        };
        Reflector {
            cluster: cluster.to_string(),
            source_client: source,
            gate: None,
            writer,
            mirror,
            status: Arc::default(),
            synced,
            source: HashMap::new(),
            listing: None,
            listed: false,
            target,
            target_unknown: true,
            pending: Pending::default(),
            canary_lease: 0,
            backoff,
            limits: ReflectorLimits::default(),
            metrics,
            label,
        }
    }

    /// Lists the source only once `key` exists there (the source's own sync canary), on
    /// the first list and on every relist.
    pub fn gated_on(mut self, key: Option<String>) -> Self {
        self.gate = key;
        self
    }

    /// Refuses what exceeds `limits`.
    pub fn with_limits(mut self, limits: ReflectorLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The mirror's name (`endpoints`, `nodes`, ...), as status reports it.
    pub fn name(&self) -> &str {
        self.mirror.name()
    }

    /// Status shared with whoever reports it.
    pub fn status(&self) -> Arc<Mutex<ReflectorStatus>> {
        self.status.clone()
    }

    /// Becomes true once the first list is written and the canary is in place.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// Runs until `cancel`. Errors are retried, never returned.
    pub async fn run(mut self, cancel: CancellationToken) {
        let span = tracing::info_span!("reflector", cluster = %self.cluster, resource = %self.mirror.name());
        tracing::Instrument::instrument(self.run_inner(cancel), span).await
    }

    async fn run_inner(&mut self, cancel: CancellationToken) {
        let client = self.source_client.clone();
        let watcher = if self.mirror.exact() {
            Watcher::key(&self.cluster, client, self.mirror.source_prefix())
        } else {
            Watcher::new(&self.cluster, client, self.mirror.source_prefix())
        };
        let watcher = watcher
            .gated_on(self.gate.clone())
            .with_backoff(self.backoff.clone());
        let stop_watcher = cancel.child_token();
        let (mut events, watch_task) = watcher.spawn(16, stop_watcher.clone());
        let mut lease_lost = self.writer.lease_lost();
        lease_lost.mark_unchanged();
        let rechecks = self.mirror.rechecks();
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                changed = lease_lost.changed() => {
                    if changed.is_ok() {
                        tracing::warn!("a lease was lost: writing every key again");
                        self.target_unknown = true;
                        self.pending.all = true;
                    }
                }
                _ = async { match &rechecks { Some(r) => r.notify.notified().await, None => std::future::pending().await } } => {
                    if let Some(r) = &rechecks {
                        let asked = r.take();
                        self.pending.all |= asked.all;
                        self.pending.keys.extend(asked.keys);
                        for (key, value, lease) in asked.written {
                            self.target.record(key, value, lease);
                        }
                    }
                }
                _ = async { match retry_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                    retry_at = None;
                }
            }
            if retry_at.is_none()
                && self.listed
                && self.listing.is_none()
                && !self.pending.is_empty()
            {
                match self.flush().await {
                    Ok(()) => self.backoff.reset(),
                    Err(e) => {
                        let delay = self.backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?delay, "writing the target failed");
                        self.target_unknown = true;
                        self.pending.all = true;
                        self.failed(&e);
                        retry_at = Some(tokio::time::Instant::now() + delay);
                    }
                }
            }
        }
        stop_watcher.cancel();
        let _ = watch_task.await;
        tracing::debug!("reflector stopped");
    }

    fn failed(&self, e: &dyn std::fmt::Display) {
        let mut s = self.status.lock();
        s.retries += 1;
        s.last_error = Some(bounded(e.to_string(), MAX_ERROR_CHARS));
        self.metrics.retries.get_or_create(&self.label).inc();
    }

    fn on_event(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Gated { key } => self.status.lock().waiting_for = Some(key),
            WatchEvent::Init => self.listing = Some(HashMap::new()),
            WatchEvent::InitPage(entries) => {
                let mut listing = self.listing.take().unwrap_or_default();
                for entry in entries {
                    if self.accept(&entry, listing.len(), listing.contains_key(&entry.key)) {
                        listing.insert(entry.key, entry.value);
                    }
                }
                self.listing = Some(listing);
            }
            WatchEvent::InitDone {
                revision: _,
                cluster_id,
            } => {
                let listed = self.listing.take().unwrap_or_default();
                // Cilium's relist GC: whatever is no longer listed is deleted.
                for gone in self.source.keys().filter(|k| !listed.contains_key(*k)) {
                    self.mirror.observe(gone, None);
                }
                for (key, value) in &listed {
                    if self.source.get(key) != Some(value) {
                        self.mirror.observe(key, Some(value));
                    }
                }
                self.source = listed;
                self.listed = true;
                self.pending.all = true;
                self.metrics.lists.get_or_create(&self.label).inc();
                self.metrics
                    .source_entries
                    .get_or_create(&self.label)
                    .set(self.source.len() as i64);
                let mut s = self.status.lock();
                s.lists += 1;
                s.waiting_for = None;
                s.source_entries = self.source.len();
                s.etcd_cluster_id = cluster_id;
            }
            WatchEvent::Changes(changes) => {
                for change in changes {
                    let key = change.key().to_string();
                    match change {
                        Change::Put(entry)
                            if self.accept(
                                &entry,
                                self.source.len(),
                                self.source.contains_key(&entry.key),
                            ) =>
                        {
                            self.mirror.observe(&entry.key, Some(&entry.value));
                            self.source.insert(entry.key, entry.value);
                        }
                        // Refused or deleted: whatever was there goes.
                        _ => {
                            if self.source.remove(&key).is_some() {
                                self.mirror.observe(&key, None);
                            }
                        }
                    }
                    self.pending.keys.insert(key);
                }
                self.metrics
                    .source_entries
                    .get_or_create(&self.label)
                    .set(self.source.len() as i64);
                self.status.lock().source_entries = self.source.len();
            }
            WatchEvent::Error(e) => self.failed(&e),
        }
    }

    /// Whether `entry` fits the bounds, given `held` entries so far and whether its key
    /// is one of them. Counts a refusal.
    fn accept(&self, entry: &Entry, held: usize, known: bool) -> bool {
        let reason = if entry.value.len() > self.limits.max_value_bytes {
            "too-large"
        } else if !known && held >= self.limits.max_entries {
            "over-cap"
        } else {
            return true;
        };
        let first = {
            let mut s = self.status.lock();
            let n = s.refused.entry(reason.to_string()).or_default();
            *n += 1;
            *n == 1
        };
        if first {
            tracing::warn!(key = %entry.key, bytes = entry.value.len(), reason, limits = ?self.limits,
                "refusing a source entry (further refusals are counted, not logged)");
        }
        self.metrics
            .refused
            .get_or_create(&RefusedLabel {
                cluster: self.cluster.clone(),
                resource: self.label.resource.clone(),
                reason,
            })
            .inc();
        false
    }

    /// Writes what is pending; the canary after the first complete write, and again
    /// whenever its lease is no longer ours.
    async fn flush(&mut self) -> Result<(), SyncError> {
        if self.target_unknown {
            self.target.adopt().await?;
            self.target_unknown = false;
            self.pending.all = true;
        }
        let pending = std::mem::take(&mut self.pending);
        let written = if pending.all {
            self.converge_all().await
        } else {
            self.converge_keys(pending.keys.iter()).await
        };
        if let Err(e) = written {
            self.pending = pending;
            return Err(e);
        }
        let synced = *self.synced.borrow();
        if !synced || !self.writer.live_leases().contains(&self.canary_lease) {
            if let Some(key) = self.mirror.canary_key() {
                self.canary_lease = self.writer.write_canary(key, self.canary_lease).await?;
            }
            if !synced {
                self.synced.send_replace(true);
                self.status.lock().synced = true;
                self.metrics.synced.get_or_create(&self.label).set(1);
                tracing::info!(
                    entries = self.source.len(),
                    written = self.target.len(),
                    "initial sync complete"
                );
            }
        }
        self.status.lock().last_error = None;
        Ok(())
    }

    /// Decides every source entry again and writes the difference, deleting target keys
    /// that no source entry wants any more.
    async fn converge_all(&mut self) -> Result<(), SyncError> {
        let mirror = self.mirror.clone();
        let source = &self.source;
        // Filter decisions run Wasm: keep them off the async workers.
        let desired: HashMap<String, Bytes> = tokio::task::block_in_place(|| {
            source
                .iter()
                .filter_map(|(k, v)| Some((mirror.target_key(k)?, mirror.transform(k, v)?)))
                .collect()
        });
        let written = self.target.converge_all(&desired).await;
        self.record_target();
        written
    }

    /// Decides the given source keys again and writes the difference.
    async fn converge_keys(
        &mut self,
        keys: impl Iterator<Item = &String>,
    ) -> Result<(), SyncError> {
        let mirror = self.mirror.clone();
        let source = &self.source;
        let wanted: Vec<(String, Option<Bytes>)> = tokio::task::block_in_place(|| {
            keys.filter_map(|k| {
                let target = mirror.target_key(k)?;
                Some((target, source.get(k).and_then(|v| mirror.transform(k, v))))
            })
            .collect()
        });
        let written = self.target.converge(wanted).await;
        self.record_target();
        written
    }

    fn record_target(&self) {
        self.status.lock().target_entries = self.target.len();
        self.metrics
            .target_entries
            .get_or_create(&self.label)
            .set(self.target.len() as i64);
    }
}
