//! One reflector: list and watch a prefix of a source etcd, converge a target.
//!
//! The reflector keeps the source's current content in memory (key to value) and what it
//! wrote to the target (key to value). Every change recomputes the target entries of the
//! affected source keys through its [`Mirror`] and writes only the difference, so an
//! excluded entry is always a delete of a copy written earlier, never a silent skip.
//! Converging everything again is cheap, which is what a filter reload, a node update or
//! a re-list needs.
//!
//! Life cycle, in a loop until cancelled: list the prefix (paged, at one revision), check
//! the etcd cluster ID against the pinned one, replace the source map with the list and
//! converge everything (keys not seen are deleted: Cilium's relist GC), write the sync
//! canary once the first list is written, then watch from the list's revision. A watch
//! that is compacted, cancelled, or reports another cluster ID goes back to listing; a
//! connection error waits out a jittered backoff first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::SyncError;
use crate::target::TargetKeys;
use crate::writer::TargetWriter;

/// Keys per list page. etcd 3.4 counts the whole range for every page, so small pages
/// over a large prefix are slow; large pages keep a 500K-key list to a few requests.
const LIST_PAGE: i64 = 10_000;

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
    /// The value to write for one source entry, or `None` when it must not be at the
    /// target (filtered out, or invalid).
    fn transform(&self, source_key: &str, value: &Bytes) -> Option<Bytes>;
    /// Called when a source entry changes (`None`: deleted) before it is transformed.
    fn observe(&self, _source_key: &str, _value: Option<&Bytes>) {}
    /// Bumped when every entry must be decided again (a new filter generation, or new
    /// topology that decisions depend on).
    fn redecide(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// Live counters of one reflector.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReflectorStatus {
    /// The first list has been written and the canary is in place.
    pub synced: bool,
    /// Entries at the source.
    pub source_entries: usize,
    /// Entries written at the target.
    pub target_entries: usize,
    /// Lists done (1 plus every re-list).
    pub lists: u64,
    /// Connection or watch failures that led to a retry.
    pub retries: u64,
    /// The etcd cluster ID the source is pinned to.
    pub cluster_id: u64,
    /// Last error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// One mirror running against one source and one target.
pub struct Reflector<M: Mirror> {
    cluster: String,
    source: Client,
    writer: Arc<TargetWriter>,
    mirror: Arc<M>,
    status: Arc<Mutex<ReflectorStatus>>,
    synced: watch::Sender<bool>,
    source_map: HashMap<String, Bytes>,
    target: TargetKeys,
    pinned_cluster_id: Option<u64>,
    backoff: Backoff,
    /// Set when a write may have failed half-way: re-read the target before converging.
    target_unknown: bool,
}

impl<M: Mirror> Reflector<M> {
    /// A reflector for `mirror` reading `source` (of cluster `cluster`) and writing via `writer`.
    pub fn new(
        cluster: &str,
        source: Client,
        writer: Arc<TargetWriter>,
        mirror: Arc<M>,
        backoff: Backoff,
    ) -> Self {
        let (synced, _) = watch::channel(false);
        let target = TargetKeys::new(writer.clone(), mirror.target_prefix());
        Reflector {
            cluster: cluster.to_string(),
            source,
            writer,
            mirror,
            status: Arc::default(),
            synced,
            source_map: HashMap::new(),
            target,
            pinned_cluster_id: None,
            backoff,
            target_unknown: false,
        }
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
        let mut lease_lost = self.writer.lease_lost();
        lease_lost.mark_unchanged();
        let mut redecide = self.mirror.redecide();
        if let Some(r) = redecide.as_mut() {
            r.mark_unchanged();
        }
        if let Err(e) = self.target.adopt().await {
            tracing::warn!(cluster = %self.cluster, resource = %self.mirror.name(), error = %e, "cannot list what an earlier run wrote; it will be collected later");
        }
        while !cancel.is_cancelled() {
            let result = self.cycle(&cancel, &mut lease_lost, &mut redecide).await;
            if cancel.is_cancelled() {
                break;
            }
            let delay = match result {
                Ok(()) => Duration::ZERO,
                Err(e) => {
                    self.target_unknown = true;
                    let delay = self.backoff.next_delay();
                    tracing::warn!(cluster = %self.cluster, resource = %self.mirror.name(), error = %e, retry_in = ?delay, "sync interrupted");
                    let mut s = self.status.lock();
                    s.retries += 1;
                    s.last_error = Some(e.to_string());
                    delay
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        tracing::debug!(cluster = %self.cluster, resource = %self.mirror.name(), "reflector stopped");
    }

    /// One list, then watch until something breaks. `Ok` asks for an immediate re-list.
    async fn cycle(
        &mut self,
        cancel: &CancellationToken,
        lease_lost: &mut watch::Receiver<u64>,
        redecide: &mut Option<watch::Receiver<u64>>,
    ) -> Result<(), SyncError> {
        let revision = self.list().await?;
        if std::mem::take(&mut self.target_unknown) {
            self.target.adopt().await?;
        }
        self.converge_all().await?;
        if !*self.synced.borrow() {
            self.write_canary().await?;
            self.synced.send_replace(true);
            self.status.lock().synced = true;
            tracing::info!(cluster = %self.cluster, resource = %self.mirror.name(),
                entries = self.source_map.len(), written = self.target.len(), "initial sync complete");
        }
        self.backoff.reset();
        self.status.lock().last_error = None;

        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1)
            .with_prev_key();
        let mut watch_client = self.source.watch_client();
        let mut stream = watch_client
            .watch(self.mirror.source_prefix().as_bytes(), Some(options))
            .await
            .map_err(SyncError::etcd(&self.cluster))?;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                changed = lease_lost.changed() => {
                    if changed.is_ok() {
                        tracing::warn!(cluster = %self.cluster, resource = %self.mirror.name(), "lease lost: writing every key again");
                        self.resync_target().await?;
                    }
                }
                changed = async { match redecide.as_mut() { Some(r) => r.changed().await, None => std::future::pending().await } } => {
                    if changed.is_ok() {
                        self.converge_all().await?;
                    }
                }
                message = stream.message() => {
                    let Some(resp) = message.map_err(SyncError::etcd(&self.cluster))? else {
                        return Err(SyncError::WatchClosed { cluster: self.cluster.clone(), reason: "stream ended".into() });
                    };
                    if let Some(header) = resp.header() {
                        self.check_cluster_id(header.cluster_id())?;
                    }
                    if resp.compact_revision() > 0 {
                        tracing::warn!(cluster = %self.cluster, resource = %self.mirror.name(),
                            revision = resp.compact_revision(), "watch compacted: listing again");
                        return Ok(());
                    }
                    if resp.canceled() {
                        return Err(SyncError::WatchClosed { cluster: self.cluster.clone(), reason: resp.cancel_reason().to_string() });
                    }
                    let mut changed = Vec::with_capacity(resp.events().len());
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        let Ok(key) = kv.key_str() else { continue };
                        match event.event_type() {
                            EventType::Put => {
                                let value = Bytes::copy_from_slice(kv.value());
                                self.mirror.observe(key, Some(&value));
                                self.source_map.insert(key.to_string(), value);
                            }
                            EventType::Delete => {
                                self.mirror.observe(key, None);
                                self.source_map.remove(key);
                            }
                        }
                        changed.push(key.to_string());
                    }
                    self.converge_keys(changed).await?;
                }
            }
        }
    }

    /// Lists the source prefix at one revision; replaces the source map.
    async fn list(&mut self) -> Result<i64, SyncError> {
        let prefix = self.mirror.source_prefix().to_string();
        let end = prefix_end(prefix.as_bytes());
        let mut kv = self.source.kv_client();
        let mut next = prefix.as_bytes().to_vec();
        let mut revision = 0i64;
        let mut listed = HashMap::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let request = kv.get(next.clone(), Some(options));
            let resp = match tokio::time::timeout(Duration::from_secs(60), request).await {
                Ok(r) => r.map_err(SyncError::etcd(&self.cluster))?,
                Err(_) => {
                    return Err(SyncError::Timeout {
                        cluster: self.cluster.clone(),
                        what: "list",
                    });
                }
            };
            if let Some(header) = resp.header() {
                self.check_cluster_id(header.cluster_id())?;
                if revision == 0 {
                    revision = header.revision();
                }
            }
            for kv in resp.kvs() {
                if let Ok(key) = kv.key_str() {
                    listed.insert(key.to_string(), Bytes::copy_from_slice(kv.value()));
                }
            }
            match (resp.more(), resp.kvs().last()) {
                (true, Some(last)) => {
                    next = last.key().to_vec();
                    next.push(0);
                }
                _ => break,
            }
        }
        // Cilium's relist GC: whatever is no longer listed is treated as deleted.
        for gone in self.source_map.keys().filter(|k| !listed.contains_key(*k)) {
            self.mirror.observe(gone, None);
        }
        for (key, value) in &listed {
            if self.source_map.get(key) != Some(value) {
                self.mirror.observe(key, Some(value));
            }
        }
        self.source_map = listed;
        let mut s = self.status.lock();
        s.lists += 1;
        s.source_entries = self.source_map.len();
        Ok(revision)
    }

    /// Pins the source's etcd cluster ID; a different one means another etcd answers
    /// now, so everything must be listed again from scratch.
    fn check_cluster_id(&mut self, id: u64) -> Result<(), SyncError> {
        match self.pinned_cluster_id {
            None => {
                self.pinned_cluster_id = Some(id);
                self.status.lock().cluster_id = id;
                Ok(())
            }
            Some(pinned) if pinned == id => Ok(()),
            Some(pinned) => {
                self.pinned_cluster_id = Some(id);
                self.status.lock().cluster_id = id;
                Err(SyncError::ClusterIdChanged {
                    cluster: self.cluster.clone(),
                    from: pinned,
                    to: id,
                })
            }
        }
    }

    /// Decides every source entry again and writes the difference, deleting target keys
    /// that no source entry wants any more.
    async fn converge_all(&mut self) -> Result<(), SyncError> {
        let mirror = self.mirror.clone();
        let source = &self.source_map;
        // Filter decisions run Wasm: keep them off the async workers.
        let desired: HashMap<String, Bytes> = tokio::task::block_in_place(|| {
            source
                .iter()
                .filter_map(|(k, v)| Some((mirror.target_key(k)?, mirror.transform(k, v)?)))
                .collect()
        });
        let written = self.target.converge_all(&desired).await;
        self.status.lock().target_entries = self.target.len();
        written
    }

    /// Decides the given source keys again and writes the difference.
    async fn converge_keys(&mut self, keys: Vec<String>) -> Result<(), SyncError> {
        let mirror = self.mirror.clone();
        let wanted: Vec<(String, Option<Bytes>)> = tokio::task::block_in_place(|| {
            keys.iter()
                .filter_map(|k| {
                    let target = mirror.target_key(k)?;
                    Some((
                        target,
                        self.source_map.get(k).and_then(|v| mirror.transform(k, v)),
                    ))
                })
                .collect()
        });
        let written = self.target.converge(wanted).await;
        self.status.lock().target_entries = self.target.len();
        written
    }

    /// After a lost lease the target no longer holds what `written` says: read what it
    /// does hold, then converge (which writes everything missing, canary included).
    async fn resync_target(&mut self) -> Result<(), SyncError> {
        self.target.adopt().await?;
        self.converge_all().await?;
        if *self.synced.borrow() {
            self.write_canary().await?;
        }
        Ok(())
    }

    async fn write_canary(&self) -> Result<(), SyncError> {
        match self.mirror.canary_key() {
            Some(key) => self.writer.write_canary(key).await,
            None => Ok(()),
        }
    }
}

/// The end of the range holding every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"cilium/state/"), b"cilium/state0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
