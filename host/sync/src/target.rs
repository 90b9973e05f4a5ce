//! The keys one producer owns under a prefix of the target etcd, as last written, and the
//! writes that converge them to what the producer wants there.
//!
//! Both sources of entries use it: the etcd [`Reflector`](crate::Reflector) and the
//! Kubernetes source of `meshfilter export`. Whatever the source, an entry it no longer
//! wants is deleted, never left behind, and what an earlier run wrote is adopted at start so
//! the first complete sync sweeps what is stale (Cilium's relist garbage collection).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use etcd_client::GetOptions;

use crate::error::SyncError;
use crate::writer::{TargetWriter, WriteOp};

/// The keys under one target prefix and their values as last written.
pub struct TargetKeys {
    writer: Arc<TargetWriter>,
    prefix: String,
    written: HashMap<String, Bytes>,
}

impl std::fmt::Debug for TargetKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetKeys")
            .field("prefix", &self.prefix)
            .field("written", &self.written.len())
            .finish_non_exhaustive()
    }
}

impl TargetKeys {
    /// The keys under `prefix`, written through `writer`. Nothing is known to be written
    /// until [`adopt`](Self::adopt) reads the target.
    pub fn new(writer: Arc<TargetWriter>, prefix: impl Into<String>) -> TargetKeys {
        TargetKeys {
            writer,
            prefix: prefix.into(),
            written: HashMap::new(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The writer.
    pub fn writer(&self) -> &Arc<TargetWriter> {
        &self.writer
    }

    /// Keys written.
    pub fn len(&self) -> usize {
        self.written.len()
    }

    /// Whether no key is written.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// The value written at `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.written.get(key)
    }

    /// Forgets what it believes is written and reads what the target holds under the
    /// prefix instead: at start (keys an earlier run left, which the next
    /// [`converge_all`](Self::converge_all) deletes unless they are still wanted), after a
    /// write that may have failed half-way, and after a lost lease.
    pub async fn adopt(&mut self) -> Result<(), SyncError> {
        let mut kv = self.writer.client().kv_client();
        let resp = kv
            .get(
                self.prefix.as_bytes(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(SyncError::etcd(self.writer.name()))?;
        self.written.clear();
        for kv in resp.kvs() {
            if let Ok(key) = kv.key_str() {
                self.written
                    .insert(key.to_string(), Bytes::copy_from_slice(kv.value()));
            }
        }
        Ok(())
    }

    /// Makes the prefix hold exactly `desired`: puts what differs and deletes every other
    /// key written.
    pub async fn converge_all(
        &mut self,
        desired: &HashMap<String, Bytes>,
    ) -> Result<(), SyncError> {
        let mut ops = Vec::new();
        for (key, value) in desired {
            if self.written.get(key) != Some(value) {
                ops.push(WriteOp::Put {
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        for key in self.written.keys() {
            if !desired.contains_key(key) {
                ops.push(WriteOp::Delete { key: key.clone() });
            }
        }
        self.write(ops).await
    }

    /// Converges the given keys only: each to its wanted value, or deleted when `None`.
    pub async fn converge(
        &mut self,
        wanted: impl IntoIterator<Item = (String, Option<Bytes>)>,
    ) -> Result<(), SyncError> {
        let ops = wanted
            .into_iter()
            .filter_map(|(key, desired)| match (desired, self.written.get(&key)) {
                (Some(v), Some(w)) if v == *w => None,
                (Some(value), _) => Some(WriteOp::Put { key, value }),
                (None, Some(_)) => Some(WriteOp::Delete { key }),
                (None, None) => None,
            })
            .collect();
        self.write(ops).await
    }

    async fn write(&mut self, ops: Vec<WriteOp>) -> Result<(), SyncError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.writer.apply(&ops).await?;
        for op in ops {
            match op {
                WriteOp::Put { key, value } => {
                    self.written.insert(key, value);
                }
                WriteOp::Delete { key } => {
                    self.written.remove(&key);
                }
            }
        }
        Ok(())
    }
}
