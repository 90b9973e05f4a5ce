//! Writing to the target etcd: transactions of bounded size, keys under leases.
//!
//! Cilium's SyncStore attaches its session lease to every key it writes (15 min TTL,
//! renewed every TTL/3) and never puts more than 1000 keys on one lease, because etcd's
//! put latency grows with the keys attached to a lease. A lost lease deletes its keys, so
//! the writer tells its reflectors, which write everything again. etcd refuses a
//! transaction of more than 128 operations or 1.5 MiB, so batches are split below both.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use crate::error::SyncError;

/// One change to the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Write `value` at `key` under a lease.
    Put {
        /// Target key.
        key: String,
        /// Value, copied verbatim.
        value: Bytes,
    },
    /// Delete `key`.
    Delete {
        /// Target key.
        key: String,
    },
}

impl WriteOp {
    fn size(&self) -> usize {
        match self {
            WriteOp::Put { key, value } => key.len() + value.len() + 16,
            WriteOp::Delete { key } => key.len() + 16,
        }
    }
}

/// Limits of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Lease time to live.
    pub lease_ttl: Duration,
    /// Keys put under one lease before another is granted.
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

struct Lease {
    id: i64,
    keys: usize,
}

/// Writes batches to one target etcd. Shared by all reflectors writing there.
pub struct TargetWriter {
    client: Client,
    name: String,
    config: WriterConfig,
    current: Arc<Mutex<Option<Lease>>>,
    lost: watch::Sender<u64>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for TargetWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetWriter")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TargetWriter {
    /// A writer to `client`, named `name` in logs; lease keepalive tasks stop with `cancel`.
    pub fn new(
        client: Client,
        name: &str,
        config: WriterConfig,
        cancel: CancellationToken,
    ) -> Arc<TargetWriter> {
        let (lost, _) = watch::channel(0);
        Arc::new(TargetWriter {
            client,
            name: name.to_string(),
            config,
            current: Arc::new(Mutex::new(None)),
            lost,
            cancel,
        })
    }

    /// Bumped whenever a lease was lost and the keys under it are gone: every reflector
    /// writing through this writer must write its keys again.
    pub fn lease_lost(&self) -> watch::Receiver<u64> {
        self.lost.subscribe()
    }

    /// A client for reads of the target (listing what a previous run left behind).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The name it was given, for logs and errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes the sync canary `key` (the current time, RFC 3339, under a lease): the
    /// signal that everything queued before it is written (Cilium's `SyncStore.Synced`).
    pub async fn write_canary(&self, key: &str) -> Result<(), SyncError> {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        self.apply(&[WriteOp::Put {
            key: key.to_string(),
            value: Bytes::from(now),
        }])
        .await
    }

    /// Applies `ops` in transactions of bounded size. Order is kept.
    pub async fn apply(&self, ops: &[WriteOp]) -> Result<(), SyncError> {
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
            self.apply_txn(&ops[start..end]).await?;
            start = end;
        }
        Ok(())
    }

    async fn apply_txn(&self, ops: &[WriteOp]) -> Result<(), SyncError> {
        let puts = ops
            .iter()
            .filter(|o| matches!(o, WriteOp::Put { .. }))
            .count();
        let lease = if puts > 0 {
            self.lease_for(puts).await?
        } else {
            0
        };
        let txn_ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value } => TxnOp::put(
                    key.as_bytes(),
                    value.to_vec(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                WriteOp::Delete { key } => TxnOp::delete(key.as_bytes(), None),
            })
            .collect();
        let mut kv = self.client.kv_client();
        let request = kv.txn(Txn::new().and_then(txn_ops));
        match tokio::time::timeout(Duration::from_secs(30), request).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                if e.to_string().contains("requested lease not found") {
                    // The lease expired under us: forget it; the caller retries.
                    *self.current.lock().await = None;
                    self.lost.send_modify(|n| *n += 1);
                }
                Err(SyncError::Etcd {
                    cluster: self.name.clone(),
                    source: e,
                })
            }
            Err(_) => Err(SyncError::Timeout {
                cluster: self.name.clone(),
                what: "transaction",
            }),
        }
    }

    /// The lease for `keys` more keys, granting a new one when the current one is full.
    async fn lease_for(&self, keys: usize) -> Result<i64, SyncError> {
        let mut current = self.current.lock().await;
        if let Some(lease) = current.as_mut()
            && lease.keys + keys <= self.config.max_keys_per_lease.max(keys)
        {
            lease.keys += keys;
            return Ok(lease.id);
        }
        let ttl = self.config.lease_ttl.as_secs().max(1) as i64;
        let mut lease_client = self.client.lease_client();
        let granted = lease_client
            .grant(ttl, None)
            .await
            .map_err(SyncError::etcd(&self.name))?;
        let id = granted.id();
        *current = Some(Lease { id, keys });
        self.spawn_keepalive(id);
        tracing::debug!(etcd = %self.name, lease = id, ttl, "granted lease");
        Ok(id)
    }

    /// Renews `id` every TTL/3 until cancelled or lost.
    fn spawn_keepalive(&self, id: i64) {
        let mut lease_client = self.client.lease_client();
        let period = self.config.lease_ttl / 3;
        let cancel = self.cancel.clone();
        let lost = self.lost.clone();
        let name = self.name.clone();
        let current = self.current.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                let renewed = async {
                    let (mut keeper, mut stream) = lease_client.keep_alive(id).await?;
                    keeper.keep_alive().await?;
                    Ok::<_, etcd_client::Error>(stream.message().await?.map(|r| r.ttl()))
                };
                let outcome = tokio::time::timeout(Duration::from_secs(10), renewed).await;
                // etcd answers a renewal of an expired or revoked lease with TTL 0, which the
                // client reports as "lease not found".
                let gone =
                    matches!(&outcome, Ok(Err(e)) if e.to_string().contains("lease not found"));
                match outcome {
                    Ok(Ok(Some(ttl))) if ttl > 0 => failures = 0,
                    _ if gone => {
                        tracing::warn!(etcd = %name, lease = id, "lease expired; keys under it are gone and will be written again");
                        {
                            let mut current = current.lock().await;
                            if current.as_ref().is_some_and(|l| l.id == id) {
                                *current = None;
                            }
                        }
                        lost.send_modify(|n| *n += 1);
                        return;
                    }
                    Ok(Ok(_)) => {
                        tracing::warn!(etcd = %name, lease = id, "lease expired; keys under it are gone and will be written again");
                        {
                            let mut current = current.lock().await;
                            if current.as_ref().is_some_and(|l| l.id == id) {
                                *current = None;
                            }
                        }
                        lost.send_modify(|n| *n += 1);
                        return;
                    }
                    Ok(Err(e)) => {
                        failures += 1;
                        tracing::warn!(etcd = %name, lease = id, error = %e, failures, "lease renewal failed");
                    }
                    Err(_) => {
                        failures += 1;
                        tracing::warn!(etcd = %name, lease = id, failures, "lease renewal timed out");
                    }
                }
            }
        });
    }
}
