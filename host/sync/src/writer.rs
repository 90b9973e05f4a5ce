//! Writing to a target etcd: bounded transactions, keys under leases this process owns,
//! fenced by the leader lock.
//!
//! The lease rules mirror Cilium's `SyncStore` and its etcd backend, then go further:
//! - every key is written under a lease this process keeps alive (15 min TTL by default,
//!   renewed every third of it), never more than 1000 keys on one lease, because etcd's
//!   put latency grows with the keys attached to a lease (etcd-io/etcd#15993);
//! - a key keeps its lease: rewriting a key that already sits on one of our live leases
//!   reuses that lease, so updates neither fill leases nor scatter keys;
//! - a key that sits on any other lease (one of an earlier process, of kvstoremesh, of a
//!   lost lease) is rewritten even when its value is the same, Cilium's
//!   `UpdateIfDifferent`: after a restart, a failover or a takeover every key ends up on a
//!   lease of the live writer, so nothing vanishes when the old leases run out;
//! - capacity freed by deletes is reused, and a lease etcd confirms holds no key any more
//!   is revoked, including leases an earlier writer left under our keys;
//! - a lost lease (expired, revoked) is announced on [`TargetWriter::lease_lost`] so the
//!   reflectors write what was on it again.
//!
//! With a [`Fence`] every transaction carries a compare on the leader lock's key, so a
//! replica that lost the lock while paused cannot write when it wakes up: the transaction
//! fails, [`TargetWriter::fenced`] fires, and the role stops writing.
//!
//! etcd refuses a transaction of more than 128 operations or 1.5 MiB, so batches are split
//! below both.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, LeaseTimeToLiveOptions,
    PutOptions, Txn, TxnOp, TxnOpResponse,
};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::SyncError;
use crate::metrics::{SyncMetrics, TxnLabel};

/// One change to the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Write `value` at `key` under a lease of this writer.
    Put {
        /// Target key.
        key: String,
        /// Value, copied verbatim.
        value: Bytes,
        /// The lease the key sits on now, as last seen (0: unknown or none); the key keeps
        /// it when it is one of this writer's live leases.
        lease: i64,
    },
    /// Delete `key`.
    Delete {
        /// Target key.
        key: String,
        /// The lease the key sits on now, as last seen (0: unknown or none).
        lease: i64,
    },
}

impl WriteOp {
    /// A put of `key` whose current lease is unknown.
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> WriteOp {
        WriteOp::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    fn size(&self) -> usize {
        match self {
            WriteOp::Put { key, value, .. } => key.len() + value.len() + 16,
            WriteOp::Delete { key, .. } => key.len() + 16,
        }
    }
}

/// Limits of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Lease time to live (Cilium's `kvstore-lease-ttl`, 15 min).
    pub lease_ttl: Duration,
    /// Keys put under one lease before another is used.
    pub max_keys_per_lease: usize,
    /// Operations per transaction (etcd's `--max-txn-ops` defaults to 128).
    pub max_ops_per_txn: usize,
    /// Bytes per transaction (etcd's `--max-request-bytes` defaults to 1.5 MiB).
    pub max_bytes_per_txn: usize,
}

impl Default for WriterConfig {
    fn default() -> WriterConfig {
        WriterConfig {
            lease_ttl: Duration::from_secs(15 * 60),
            max_keys_per_lease: 1000,
            max_ops_per_txn: 128,
            max_bytes_per_txn: 1 << 20,
        }
    }
}

/// The leader lock every write is conditional on: `key` must still be attached to
/// `lease` (the lock's own lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lock's key in the target etcd.
    pub key: String,
    /// The lease that key was created under.
    pub lease: i64,
}

/// One lease of ours, as the book keeps it.
#[derive(Debug)]
struct OwnLease {
    /// Keys on it, as far as this writer counted (corrected from etcd periodically).
    keys: usize,
    /// Transactions in flight that put keys on it.
    inflight: usize,
    /// Being checked for revocation: no new keys go to it.
    retiring: bool,
    /// Last time etcd confirmed it alive.
    renewed: Instant,
}

#[derive(Debug, Default)]
struct Book {
    own: HashMap<i64, OwnLease>,
    /// The lease new keys go to first.
    open: Option<i64>,
    /// Leases of earlier writers seen under our keys, with how often they were checked.
    foreign: HashMap<i64, u32>,
}

impl Book {
    /// A lease with room for one more key, preferring the open one.
    fn slot(&mut self, max: usize) -> Option<i64> {
        let fits = |l: &OwnLease| !l.retiring && l.keys < max;
        if let Some(id) = self.open
            && self.own.get(&id).is_some_and(fits)
        {
            return Some(id);
        }
        let id = self
            .own
            .iter()
            .filter(|(_, l)| fits(l))
            .min_by_key(|(_, l)| l.keys)
            .map(|(id, _)| *id)?;
        self.open = Some(id);
        Some(id)
    }

    fn lose(&mut self, id: i64) -> bool {
        if self.open == Some(id) {
            self.open = None;
        }
        self.own.remove(&id).is_some()
    }
}

/// Where each operation of a batch went, to settle the book after the transaction.
struct Assignment {
    /// Lease of each put (0 for deletes).
    leases: Vec<i64>,
    /// Puts that took a new slot (to give back if the transaction fails).
    new_slots: Vec<i64>,
}

/// Lease information for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LeaseInfo {
    /// Lease ID.
    pub id: i64,
    /// Keys on it, as counted.
    pub keys: usize,
}

/// Writes batches to one target etcd. Shared by every reflector writing there.
pub struct TargetWriter {
    client: Client,
    name: String,
    config: WriterConfig,
    fence: Option<Fence>,
    book: Mutex<Book>,
    /// One lease grant at a time.
    granting: tokio::sync::Mutex<()>,
    lost: watch::Sender<u64>,
    fenced: CancellationToken,
    metrics: SyncMetrics,
}

impl std::fmt::Debug for TargetWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetWriter")
            .field("name", &self.name)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

/// How long one transaction may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

impl TargetWriter {
    /// A writer to `client`, named `name` in logs, metrics and errors, writing only while
    /// `fence` holds (when given). Its lease keeper stops with `cancel`; leases are then
    /// left to expire, never revoked, so a successor finds every key still in place.
    pub fn new(
        client: Client,
        name: &str,
        config: WriterConfig,
        fence: Option<Fence>,
        metrics: SyncMetrics,
        cancel: CancellationToken,
    ) -> Arc<TargetWriter> {
        let (lost, _) = watch::channel(0);
        let writer = Arc::new(TargetWriter {
            client,
            name: name.to_string(),
            config,
            fence,
            book: Mutex::default(),
            granting: tokio::sync::Mutex::new(()),
            lost,
            fenced: CancellationToken::new(),
            metrics,
        });
        tokio::spawn(Keeper::new(&writer).run(cancel));
        writer
    }

    /// Bumped whenever a lease was lost and the keys under it are gone: every reflector
    /// writing through this writer must write its keys again.
    pub fn lease_lost(&self) -> watch::Receiver<u64> {
        self.lost.subscribe()
    }

    /// Fires when a write was refused because the fence no longer holds: this process
    /// is not the leader any more and must stop writing.
    pub fn fenced(&self) -> CancellationToken {
        self.fenced.clone()
    }

    /// A client for reads of the target.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The name it was given, for logs and errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lease TTL keys are written with.
    pub fn lease_ttl(&self) -> Duration {
        self.config.lease_ttl
    }

    /// The leases this writer holds, for status and for [`Self::is_own`] checks in bulk.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        let mut leases: Vec<LeaseInfo> = self
            .book
            .lock()
            .own
            .iter()
            .map(|(id, l)| LeaseInfo {
                id: *id,
                keys: l.keys,
            })
            .collect();
        leases.sort_by_key(|l| l.id);
        leases
    }

    /// The leases as `/status` shows them.
    pub fn status(&self) -> meshfilter_api::WriterStatus {
        meshfilter_api::WriterStatus {
            lease_ttl_seconds: self.config.lease_ttl.as_secs(),
            leases: self
                .leases()
                .into_iter()
                .map(|l| meshfilter_api::LeaseStatus {
                    id: l.id,
                    keys: l.keys,
                })
                .collect(),
        }
    }

    /// The IDs of this writer's live leases: a key on any other lease must be written
    /// again.
    pub fn live_leases(&self) -> HashSet<i64> {
        self.book.lock().own.keys().copied().collect()
    }

    /// Notes leases found under keys this writer is taking over (an earlier process's):
    /// each is revoked once etcd says no key is left on it.
    pub fn note_foreign(&self, leases: impl IntoIterator<Item = i64>) {
        let mut book = self.book.lock();
        for id in leases {
            if id != 0 && !book.own.contains_key(&id) {
                book.foreign.entry(id).or_insert(0);
            }
        }
    }

    /// Writes the sync canary `key` (the current time, RFC 3339): the signal that
    /// everything queued before it is written (Cilium's `SyncStore.Synced`). `lease` is
    /// where the canary sits now; returns where it sits after.
    pub async fn write_canary(&self, key: &str, lease: i64) -> Result<i64, SyncError> {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let leases = self
            .apply(&[WriteOp::Put {
                key: key.to_string(),
                value: Bytes::from(now),
                lease,
            }])
            .await?;
        Ok(leases[0])
    }

    /// Applies `ops` in transactions of bounded size, in order. Returns the lease each
    /// put's key is on afterwards (0 for deletes).
    pub async fn apply(&self, ops: &[WriteOp]) -> Result<Vec<i64>, SyncError> {
        let mut leases = Vec::with_capacity(ops.len());
        let mut start = 0;
        while start < ops.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < ops.len() && end - start < self.config.max_ops_per_txn {
                bytes += ops[end].size();
                if end > start && bytes > self.config.max_bytes_per_txn {
                    break;
                }
                end += 1;
            }
            leases.extend(self.apply_txn(&ops[start..end]).await?);
            start = end;
        }
        Ok(leases)
    }

    /// Creates `key` with `value` unless it exists (whatever its value and lease): the
    /// on-demand resolver's write, which must never take a key away from the mirror.
    /// Returns the lease it was created on, `None` when the key existed.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<Option<i64>, SyncError> {
        let op = [WriteOp::put(key, value.clone())];
        let assignment = self.assign(&op).await?;
        let lease = assignment.leases[0];
        let create = Txn::new()
            .when([Compare::version(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value.to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let result = self
            .send(
                self.fenced_txn(vec![TxnOp::txn(create)]),
                &assignment.leases,
            )
            .await;
        let created = match &result {
            Ok(resp) => resp.op_responses().into_iter().any(|r| match r {
                TxnOpResponse::Txn(t) => t.succeeded(),
                _ => false,
            }),
            Err(_) => false,
        };
        self.settle(&op, &assignment, result.is_ok() && created);
        result?;
        if created {
            self.metrics
                .puts
                .get_or_create(&self.metrics.etcd(&self.name))
                .inc();
        }
        Ok(created.then_some(lease))
    }

    async fn apply_txn(&self, ops: &[WriteOp]) -> Result<Vec<i64>, SyncError> {
        let assignment = self.assign(ops).await?;
        let txn_ops: Vec<TxnOp> = ops
            .iter()
            .zip(&assignment.leases)
            .map(|(op, lease)| match op {
                WriteOp::Put { key, value, .. } => TxnOp::put(
                    key.as_bytes(),
                    value.to_vec(),
                    Some(PutOptions::new().with_lease(*lease)),
                ),
                WriteOp::Delete { key, .. } => TxnOp::delete(key.as_bytes(), None),
            })
            .collect();
        let result = self
            .send(self.fenced_txn(txn_ops), &assignment.leases)
            .await;
        self.settle(ops, &assignment, result.is_ok());
        result?;
        let label = self.metrics.etcd(&self.name);
        let puts = ops
            .iter()
            .filter(|o| matches!(o, WriteOp::Put { .. }))
            .count() as u64;
        self.metrics.puts.get_or_create(&label).inc_by(puts);
        self.metrics
            .deletes
            .get_or_create(&label)
            .inc_by(ops.len() as u64 - puts);
        Ok(assignment.leases)
    }

    fn fenced_txn(&self, ops: Vec<TxnOp>) -> Txn {
        let txn = Txn::new();
        let txn = match &self.fence {
            Some(fence) => txn.when([Compare::lease(
                fence.key.as_bytes(),
                CompareOp::Equal,
                fence.lease,
            )]),
            None => txn,
        };
        txn.and_then(ops)
    }

    /// Sends one transaction; `leases` are those its puts use (to tell a lost lease).
    async fn send(&self, txn: Txn, leases: &[i64]) -> Result<etcd_client::TxnResponse, SyncError> {
        let outcome = |outcome| TxnLabel {
            etcd: self.name.clone(),
            outcome,
        };
        let mut kv = self.client.kv_client();
        match tokio::time::timeout(TXN_TIMEOUT, kv.txn(txn)).await {
            Ok(Ok(resp)) if !resp.succeeded() => {
                self.metrics.txns.get_or_create(&outcome("fenced")).inc();
                self.metrics
                    .fenced
                    .get_or_create(&self.metrics.etcd(&self.name))
                    .inc();
                if !self.fenced.is_cancelled() {
                    tracing::error!(etcd = %self.name, fence = ?self.fence, "the leader lock is no longer ours: refusing to write");
                    self.fenced.cancel();
                }
                Err(SyncError::Fenced {
                    etcd: self.name.clone(),
                })
            }
            Ok(Ok(resp)) => {
                self.metrics.txns.get_or_create(&outcome("ok")).inc();
                Ok(resp)
            }
            Ok(Err(e)) => {
                self.metrics.txns.get_or_create(&outcome("failed")).inc();
                if e.to_string().contains("requested lease not found") {
                    self.find_lost(leases).await;
                }
                Err(SyncError::etcd(&self.name)(e))
            }
            Err(_) => {
                self.metrics.txns.get_or_create(&outcome("failed")).inc();
                Err(SyncError::timeout(&self.name, "transaction"))
            }
        }
    }

    /// Picks a lease for every put of `ops`: the key's own lease when it is one of ours,
    /// else a slot on a lease with room, granting a new lease when none has any.
    async fn assign(&self, ops: &[WriteOp]) -> Result<Assignment, SyncError> {
        let mut leases = vec![0i64; ops.len()];
        let mut new_slots = Vec::new();
        let max = self.config.max_keys_per_lease.max(1);
        let mut pending: Vec<usize> = Vec::new();
        {
            let mut book = self.book.lock();
            for (i, op) in ops.iter().enumerate() {
                let WriteOp::Put { lease, .. } = op else {
                    continue;
                };
                match book.own.get_mut(lease) {
                    Some(own) if !own.retiring => {
                        own.inflight += 1;
                        leases[i] = *lease;
                    }
                    _ => pending.push(i),
                }
            }
        }
        while !pending.is_empty() {
            {
                let mut book = self.book.lock();
                while let Some(&i) = pending.last() {
                    let Some(id) = book.slot(max) else { break };
                    let own = book.own.get_mut(&id).expect("slot is an own lease");
                    own.keys += 1;
                    own.inflight += 1;
                    leases[i] = id;
                    new_slots.push(id);
                    pending.pop();
                }
            }
            if pending.is_empty() {
                break;
            }
            if let Err(e) = self.grant().await {
                // Give back what was taken so far.
                let assignment = Assignment { leases, new_slots };
                self.settle(ops, &assignment, false);
                return Err(e);
            }
        }
        Ok(Assignment { leases, new_slots })
    }

    /// Grants a lease and opens it (unless another task just did).
    async fn grant(&self) -> Result<(), SyncError> {
        let _one = self.granting.lock().await;
        let max = self.config.max_keys_per_lease.max(1);
        if self.book.lock().slot(max).is_some() {
            return Ok(());
        }
        let ttl = i64::try_from(self.config.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let granted = self
            .client
            .lease_client()
            .grant(ttl, None)
            .await
            .map_err(SyncError::etcd(&self.name))?;
        let id = granted.id();
        let mut book = self.book.lock();
        book.own.insert(
            id,
            OwnLease {
                keys: 0,
                inflight: 0,
                retiring: false,
                renewed: Instant::now(),
            },
        );
        book.open = Some(id);
        let label = self.metrics.etcd(&self.name);
        self.metrics.lease_grants.get_or_create(&label).inc();
        self.metrics
            .leases
            .get_or_create(&label)
            .set(book.own.len() as i64);
        tracing::debug!(etcd = %self.name, lease = id, ttl, "granted lease");
        Ok(())
    }

    /// Settles the book after a transaction: in-flight marks go, and the key counts follow
    /// what happened (`applied`) or are given back (failure).
    fn settle(&self, ops: &[WriteOp], assignment: &Assignment, applied: bool) {
        let mut book = self.book.lock();
        for (op, lease) in ops.iter().zip(&assignment.leases) {
            if *lease != 0
                && let Some(own) = book.own.get_mut(lease)
            {
                own.inflight = own.inflight.saturating_sub(1);
            }
            if !applied {
                continue;
            }
            // The key left the lease it was on (deleted, or moved to another of ours).
            let left = match op {
                WriteOp::Delete { lease: old, .. } => *old,
                WriteOp::Put { lease: old, .. } if old != lease => *old,
                WriteOp::Put { .. } => 0,
            };
            if left != 0
                && let Some(own) = book.own.get_mut(&left)
            {
                own.keys = own.keys.saturating_sub(1);
            }
        }
        if !applied {
            for id in &assignment.new_slots {
                if let Some(own) = book.own.get_mut(id) {
                    own.keys = own.keys.saturating_sub(1);
                }
            }
        }
    }

    /// After a transaction named a lease etcd does not know: each of `leases` that is
    /// gone is dropped and announced.
    async fn find_lost(&self, leases: &[i64]) {
        let distinct: HashSet<i64> = leases.iter().copied().filter(|l| *l != 0).collect();
        for id in distinct {
            let alive = self
                .client
                .lease_client()
                .time_to_live(id, None)
                .await
                .is_ok_and(|r| r.ttl() > 0);
            if !alive {
                self.lose(id, "gone");
            }
        }
    }

    fn lose(&self, id: i64, why: &str) {
        let mut book = self.book.lock();
        if book.lose(id) {
            let label = self.metrics.etcd(&self.name);
            self.metrics.leases_lost.get_or_create(&label).inc();
            self.metrics
                .leases
                .get_or_create(&label)
                .set(book.own.len() as i64);
            drop(book);
            tracing::warn!(etcd = %self.name, lease = id, why, "lease lost; the keys under it are gone and will be written again");
            self.lost.send_modify(|n| *n += 1);
        }
    }
}

/// The background task that keeps our leases alive, revokes the empty ones and corrects
/// the key counts.
struct Keeper {
    writer: std::sync::Weak<TargetWriter>,
    keepers: HashMap<i64, (LeaseKeeper, LeaseKeepAliveStream)>,
    period: Duration,
    ttl: Duration,
    rounds: u64,
}

/// Every this many keeper rounds the key counts are read back from etcd.
const RECOUNT_ROUNDS: u64 = 10;

/// Checks of a foreign lease that still holds keys before it is left alone.
const FOREIGN_CHECKS: u32 = 30;

impl Keeper {
    fn new(writer: &Arc<TargetWriter>) -> Keeper {
        let ttl = writer.config.lease_ttl;
        Keeper {
            writer: Arc::downgrade(writer),
            keepers: HashMap::new(),
            period: (ttl / 3).max(Duration::from_millis(200)),
            ttl,
            rounds: 0,
        }
    }

    async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.period) => {}
            }
            let Some(writer) = self.writer.upgrade() else {
                return;
            };
            if writer.fenced.is_cancelled() {
                // Not the leader any more: whatever is ours is the successor's to take.
                return;
            }
            self.renew(&writer).await;
            self.sweep(&writer).await;
            self.rounds += 1;
            if self.rounds.is_multiple_of(RECOUNT_ROUNDS) {
                self.recount(&writer).await;
            }
        }
    }

    /// Renews every lease; a lease etcd says is gone, or one not renewed for a whole TTL
    /// (its keys may be gone), is lost.
    async fn renew(&mut self, writer: &TargetWriter) {
        let ids: Vec<i64> = writer.book.lock().own.keys().copied().collect();
        self.keepers.retain(|id, _| ids.contains(id));
        for id in ids {
            let renewed = tokio::time::timeout(Duration::from_secs(5), self.renew_one(writer, id))
                .await
                .unwrap_or(Err(None));
            match renewed {
                Ok(()) => {
                    if let Some(own) = writer.book.lock().own.get_mut(&id) {
                        own.renewed = Instant::now();
                    }
                }
                Err(Some(why)) => {
                    self.keepers.remove(&id);
                    writer.lose(id, why);
                }
                Err(None) => {
                    self.keepers.remove(&id);
                    let stale = writer
                        .book
                        .lock()
                        .own
                        .get(&id)
                        .is_some_and(|l| l.renewed.elapsed() >= self.ttl);
                    if stale {
                        writer.lose(id, "not renewed for a whole TTL");
                    } else {
                        tracing::warn!(etcd = %writer.name, lease = id, "lease renewal failed; retrying");
                    }
                }
            }
        }
    }

    /// `Err(Some(why))`: the lease is gone; `Err(None)`: renewal failed, unknown state.
    async fn renew_one(
        &mut self,
        writer: &TargetWriter,
        id: i64,
    ) -> Result<(), Option<&'static str>> {
        let (keeper, stream) = match self.keepers.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                writer
                    .client
                    .lease_client()
                    .keep_alive(id)
                    .await
                    .map_err(|_| None)?,
            ),
        };
        keeper.keep_alive().await.map_err(|_| None)?;
        match stream.message().await {
            Ok(Some(resp)) if resp.ttl() > 0 => Ok(()),
            // etcd answers the renewal of an expired or revoked lease with TTL 0.
            Ok(Some(_)) => Err(Some("expired")),
            Err(e) if e.to_string().contains("lease not found") => Err(Some("expired")),
            _ => Err(None),
        }
    }

    /// Revokes our leases etcd confirms are empty (never one with a write in flight), and
    /// foreign leases once empty. The next key goes to a lease with room, or a new one.
    async fn sweep(&mut self, writer: &TargetWriter) {
        let candidates: Vec<i64> = {
            let mut book = writer.book.lock();
            let ids: Vec<i64> = book
                .own
                .iter()
                .filter(|(_, l)| l.keys == 0 && l.inflight == 0)
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                if let Some(own) = book.own.get_mut(id) {
                    own.retiring = true;
                }
            }
            ids
        };
        for id in candidates {
            match self.keys_on(writer, id).await {
                Some(0) => {
                    if writer.client.lease_client().revoke(id).await.is_ok() {
                        let mut book = writer.book.lock();
                        book.lose(id);
                        let label = writer.metrics.etcd(&writer.name);
                        writer.metrics.lease_revokes.get_or_create(&label).inc();
                        writer
                            .metrics
                            .leases
                            .get_or_create(&label)
                            .set(book.own.len() as i64);
                        tracing::debug!(etcd = %writer.name, lease = id, "revoked an empty lease");
                        continue;
                    }
                    Self::unretire(writer, id, None);
                }
                keys => Self::unretire(writer, id, keys),
            }
        }
        let foreign: Vec<i64> = writer.book.lock().foreign.keys().copied().collect();
        for id in foreign {
            let forget = match self.keys_on(writer, id).await {
                // Gone already.
                None => true,
                Some(0) => {
                    let revoked = writer.client.lease_client().revoke(id).await.is_ok();
                    if revoked {
                        writer
                            .metrics
                            .lease_revokes
                            .get_or_create(&writer.metrics.etcd(&writer.name))
                            .inc();
                        tracing::info!(etcd = %writer.name, lease = id, "revoked a lease an earlier writer left, now empty");
                    }
                    revoked
                }
                Some(_) => {
                    let mut book = writer.book.lock();
                    let checks = book.foreign.entry(id).or_insert(0);
                    *checks += 1;
                    *checks >= FOREIGN_CHECKS
                }
            };
            if forget {
                writer.book.lock().foreign.remove(&id);
            }
        }
    }

    fn unretire(writer: &TargetWriter, id: i64, keys: Option<usize>) {
        if let Some(own) = writer.book.lock().own.get_mut(&id) {
            own.retiring = false;
            if let Some(keys) = keys {
                own.keys = keys;
            }
        }
    }

    /// Reads back how many keys each idle lease of ours holds.
    async fn recount(&mut self, writer: &TargetWriter) {
        let ids: Vec<i64> = writer.book.lock().own.keys().copied().collect();
        for id in ids {
            if let Some(keys) = self.keys_on(writer, id).await
                && let Some(own) = writer.book.lock().own.get_mut(&id)
                && own.inflight == 0
            {
                own.keys = keys;
            }
        }
    }

    /// Keys attached to lease `id`; `None` when the lease is gone or etcd did not answer.
    async fn keys_on(&self, writer: &TargetWriter, id: i64) -> Option<usize> {
        let resp = writer
            .client
            .lease_client()
            .time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .ok()?;
        (resp.ttl() > 0).then(|| resp.keys().len())
    }
}
