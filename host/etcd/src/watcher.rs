//! The one list/watch loop: everything under a prefix, as a stream of events.
//!
//! Modelled on kube-runtime's `watcher`: a consumer sees `Init`, the pages of a complete
//! list (`InitPage`), `InitDone`, then `Changes` until something breaks, and then `Init`
//! again. Whatever was not in the latest complete list is gone (Cilium's relist garbage
//! collection), so a consumer only ever needs to replace its state at `InitDone`.
//!
//! What it does the way Cilium's `WatchStore` and `remote_cluster.go` do:
//! - **Sync canaries gate every list.** A remote clustermesh-apiserver's etcd is often
//!   ephemeral: after a restart it is empty, then refills. Listing it while it refills
//!   would look like mass deletion. With a gate key (the remote's own
//!   `cilium/synced/<cluster>/...` canary) the watcher lists only once that key exists,
//!   on the first list and on every relist.
//! - **The etcd cluster ID is pinned.** Another cluster answering (a replaced pod, a load
//!   balancer failover) is an error that leads to a fresh, gated list.
//! - **Compaction relists at once**; every other failure waits out a jittered backoff.
//!
//! The loop runs in its own task and hands events over a bounded channel, so consumers
//! can `select!` on it next to their own work without cancellation hazards, and a slow
//! consumer slows the watcher instead of growing a queue.

use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::error::EtcdError;
use crate::list::{Entry, MAX_RESPONSE_BYTES, Pages};

/// One change seen by the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key was created or changed.
    Put(Entry),
    /// The key was deleted.
    Delete {
        /// The key.
        key: String,
    },
}

impl Change {
    /// The key changed.
    pub fn key(&self) -> &str {
        match self {
            Change::Put(e) => &e.key,
            Change::Delete { key } => key,
        }
    }
}

/// What a watcher reports.
#[derive(Debug)]
pub enum WatchEvent {
    /// The source is not synced yet: waiting for `key` to exist before listing.
    Gated {
        /// The gate key (a sync canary).
        key: String,
    },
    /// A list begins: the pages that follow, up to `InitDone`, are the complete content.
    Init,
    /// One page of the list.
    InitPage(Vec<Entry>),
    /// The list is complete; everything not listed since `Init` is gone.
    InitDone {
        /// The revision the list was read at; changes follow from the next one.
        revision: i64,
        /// The etcd cluster the list came from (pinned from now on).
        cluster_id: u64,
    },
    /// Changes from one watch response, in order.
    Changes(Vec<Change>),
    /// Listing or watching failed; the watcher retries after a backoff and lists again.
    Error(EtcdError),
}

/// Lists and watches one prefix of one etcd.
pub struct Watcher {
    etcd: String,
    client: Client,
    prefix: String,
    /// Watch `prefix` as one exact key rather than as a prefix.
    exact: bool,
    gate: Option<String>,
    backoff: Backoff,
    page_keys: i64,
    pinned: Option<u64>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("etcd", &self.etcd)
            .field("prefix", &self.prefix)
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

/// Why a session ended without an error.
enum Ended {
    /// Cancelled, or nobody listens any more.
    Stop,
    /// The watch fell behind a compaction: list again now.
    Relist,
}

/// How long opening a watch may take.
const WATCH_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

impl Watcher {
    /// Watches `prefix` of `client`; `etcd` names it in logs and errors.
    pub fn new(etcd: &str, client: Client, prefix: impl Into<String>) -> Watcher {
        Watcher {
            etcd: etcd.to_string(),
            client,
            prefix: prefix.into(),
            exact: false,
            gate: None,
            backoff: Backoff::default(),
            page_keys: crate::list::DEFAULT_PAGE_KEYS,
            pinned: None,
        }
    }

    /// Watches the single key `key` of `client` (for a cluster config), rather than a
    /// prefix: `cilium/cluster-config/c1` must not see `cilium/cluster-config/c10`.
    pub fn key(etcd: &str, client: Client, key: impl Into<String>) -> Watcher {
        Watcher {
            exact: true,
            ..Watcher::new(etcd, client, key)
        }
    }

    /// Lists only once `key` exists (`None`: list at once).
    pub fn gated_on(mut self, key: Option<String>) -> Watcher {
        self.gate = key;
        self
    }

    /// Retries with `backoff` instead of the default (1 s up to 2 min).
    pub fn with_backoff(mut self, backoff: Backoff) -> Watcher {
        self.backoff = backoff;
        self
    }

    /// Lists `keys` per page.
    pub fn page_keys(mut self, keys: i64) -> Watcher {
        self.page_keys = keys.max(1);
        self
    }

    /// Starts the loop in a task of its own, in the caller's tracing span, until `cancel`
    /// fires or the receiver is dropped. `capacity` bounds the events in flight.
    pub fn spawn(
        self,
        capacity: usize,
        cancel: CancellationToken,
    ) -> (mpsc::Receiver<WatchEvent>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let task = tokio::spawn(self.run(tx, cancel).instrument(tracing::Span::current()));
        (rx, task)
    }

    /// The loop: sessions (gate, list, watch) until cancelled, with a backoff after each
    /// failure.
    pub async fn run(mut self, tx: mpsc::Sender<WatchEvent>, cancel: CancellationToken) {
        loop {
            let ended = tokio::select! {
                _ = cancel.cancelled() => return,
                ended = self.session(&tx) => ended,
            };
            match ended {
                Ok(Ended::Stop) => return,
                Ok(Ended::Relist) => continue,
                Err(error) => {
                    let (etcd, prefix, message) =
                        (self.etcd.clone(), self.prefix.clone(), error.to_string());
                    if tx.send(WatchEvent::Error(error)).await.is_err() {
                        return;
                    }
                    let note = |delay| {
                        tracing::warn!(%etcd, %prefix, error = %message, retry_in = ?delay, "watch interrupted");
                    };
                    if !self.backoff.wait_noted(&cancel, note).await {
                        return;
                    }
                }
            }
        }
    }

    /// One gated list, then the watch until it breaks.
    async fn session(&mut self, tx: &mpsc::Sender<WatchEvent>) -> Result<Ended, EtcdError> {
        if let Some(gate) = self.gate.clone()
            && !self.wait_for_gate(&gate, tx).await?
        {
            return Ok(Ended::Stop);
        }
        if tx.send(WatchEvent::Init).await.is_err() {
            return Ok(Ended::Stop);
        }
        let pages = if self.exact {
            Pages::exact(&self.client, &self.etcd, &self.prefix)
        } else {
            Pages::new(&self.client, &self.etcd, &self.prefix)
        };
        let mut pages = pages.page_keys(self.page_keys);
        let mut revision = 0;
        let mut cluster_id = 0;
        loop {
            let page = match pages.next().await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(EtcdError::Compacted { .. }) => return Ok(Ended::Relist),
                Err(e) => return Err(e),
            };
            self.check_cluster_id(page.cluster_id)?;
            (revision, cluster_id) = (page.revision, page.cluster_id);
            if tx.send(WatchEvent::InitPage(page.entries)).await.is_err() {
                return Ok(Ended::Stop);
            }
        }
        if revision == 0 {
            // An empty prefix still answers with a header; a missing one would be a bug in
            // the server, but never a reason to watch from revision 1.
            revision = self.current_revision().await?;
        }
        if tx
            .send(WatchEvent::InitDone {
                revision,
                cluster_id,
            })
            .await
            .is_err()
        {
            return Ok(Ended::Stop);
        }
        self.backoff.reset();
        self.watch(revision, tx).await
    }

    /// Follows changes after `revision`.
    async fn watch(
        &mut self,
        revision: i64,
        tx: &mpsc::Sender<WatchEvent>,
    ) -> Result<Ended, EtcdError> {
        let mut options = WatchOptions::new().with_start_revision(revision + 1);
        if !self.exact {
            options = options.with_prefix();
        }
        let mut client = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let open = client.watch(self.prefix.as_bytes(), Some(options));
        let mut stream = tokio::time::timeout(WATCH_OPEN_TIMEOUT, open)
            .await
            .map_err(|_| EtcdError::Timeout {
                etcd: self.etcd.clone(),
                what: "opening a watch",
            })?
            .map_err(EtcdError::request(&self.etcd))?;
        loop {
            let Some(resp) = stream
                .message()
                .await
                .map_err(EtcdError::request(&self.etcd))?
            else {
                return Err(EtcdError::WatchClosed {
                    etcd: self.etcd.clone(),
                    reason: "stream ended".into(),
                });
            };
            if let Some(header) = resp.header() {
                self.check_cluster_id(header.cluster_id())?;
            }
            if resp.compact_revision() > 0 {
                tracing::warn!(etcd = %self.etcd, prefix = %self.prefix, revision = resp.compact_revision(), "watch compacted: listing again");
                return Ok(Ended::Relist);
            }
            if resp.canceled() {
                return Err(EtcdError::WatchClosed {
                    etcd: self.etcd.clone(),
                    reason: resp.cancel_reason().to_string(),
                });
            }
            let changes: Vec<Change> = resp
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    Some(match event.event_type() {
                        EventType::Put => Change::Put(Entry::from_kv(kv)?),
                        EventType::Delete => Change::Delete {
                            key: kv.key_str().ok()?.to_string(),
                        },
                    })
                })
                .collect();
            if !changes.is_empty() && tx.send(WatchEvent::Changes(changes)).await.is_err() {
                return Ok(Ended::Stop);
            }
        }
    }

    /// Waits until `gate` exists; false when nobody listens any more.
    async fn wait_for_gate(
        &mut self,
        gate: &str,
        tx: &mpsc::Sender<WatchEvent>,
    ) -> Result<bool, EtcdError> {
        let mut announced = false;
        loop {
            let resp = self
                .client
                .kv_client()
                .get(gate, Some(GetOptions::new().with_keys_only()))
                .await
                .map_err(EtcdError::request(&self.etcd))?;
            let header = resp.header().map(|h| (h.cluster_id(), h.revision()));
            if let Some((cluster_id, _)) = header {
                self.check_cluster_id(cluster_id)?;
            }
            if !resp.kvs().is_empty() {
                return Ok(true);
            }
            if !announced {
                announced = true;
                tracing::info!(etcd = %self.etcd, key = gate, "the source is not synced yet: waiting for its canary before listing");
                if tx
                    .send(WatchEvent::Gated {
                        key: gate.to_string(),
                    })
                    .await
                    .is_err()
                {
                    return Ok(false);
                }
            }
            let from = header.map_or(0, |(_, revision)| revision) + 1;
            let mut client = self.client.watch_client();
            let mut stream = client
                .watch(gate, Some(WatchOptions::new().with_start_revision(from)))
                .await
                .map_err(EtcdError::request(&self.etcd))?;
            // Until a put of the gate, or the watch breaks (then read it again).
            while let Some(resp) = stream
                .message()
                .await
                .map_err(EtcdError::request(&self.etcd))?
            {
                if let Some(header) = resp.header() {
                    self.check_cluster_id(header.cluster_id())?;
                }
                if resp.canceled() || resp.compact_revision() > 0 {
                    break;
                }
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Put)
                {
                    return Ok(true);
                }
            }
        }
    }

    /// The store's current revision, from a keys-only read of the prefix.
    async fn current_revision(&mut self) -> Result<i64, EtcdError> {
        let resp = self
            .client
            .kv_client()
            .get(
                self.prefix.as_bytes(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(EtcdError::request(&self.etcd))?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Pins the etcd cluster ID; another one means another etcd answers now, so
    /// everything must be listed again from scratch (and, gated, only once it is synced).
    fn check_cluster_id(&mut self, id: u64) -> Result<(), EtcdError> {
        match self.pinned {
            // Every etcd response carries a header; an ID of 0 is no answer at all.
            _ if id == 0 => Ok(()),
            None => {
                self.pinned = Some(id);
                Ok(())
            }
            Some(pinned) if pinned == id => Ok(()),
            Some(pinned) => {
                self.pinned = Some(id);
                Err(EtcdError::ClusterIdChanged {
                    etcd: self.etcd.clone(),
                    from: pinned,
                    to: id,
                })
            }
        }
    }
}
