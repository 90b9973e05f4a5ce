//! The keys one producer owns in the target etcd, as last written, and the writes that
//! converge them to what the producer wants there.
//!
//! Both sources of entries use it: the etcd [`Reflector`](crate::Reflector) and the
//! Kubernetes source of `meshfilter export`. Whatever the source, an entry it no longer
//! wants is deleted, never left behind; what an earlier run wrote is adopted at start, so
//! the first complete sync sweeps what is stale (Cilium's relist garbage collection); and
//! a key is written again whenever it does not sit on a live lease of this process, even
//! if its value is right, so no key depends on a lease that will run out.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use meshfilter_etcd::Pages;

use crate::error::SyncError;
use crate::writer::{TargetWriter, WriteOp};

/// What the target holds at one key, as far as this producer knows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    value: Bytes,
    lease: i64,
}

/// Which keys a [`TargetKeys`] owns.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// Every key under a prefix.
    Prefix(String),
    /// One key.
    Exact(String),
}

/// The keys under one target prefix (or one exact key) and their values as last written.
pub struct TargetKeys {
    writer: Arc<TargetWriter>,
    scope: Scope,
    written: HashMap<String, Written>,
}

impl std::fmt::Debug for TargetKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetKeys")
            .field("scope", &self.scope)
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
            scope: Scope::Prefix(prefix.into()),
            written: HashMap::new(),
        }
    }

    /// The single key `key` (a cluster config, a heartbeat), written through `writer`.
    pub fn exact(writer: Arc<TargetWriter>, key: impl Into<String>) -> TargetKeys {
        TargetKeys {
            writer,
            scope: Scope::Exact(key.into()),
            written: HashMap::new(),
        }
    }

    /// The prefix, or the exact key.
    pub fn prefix(&self) -> &str {
        match &self.scope {
            Scope::Prefix(p) | Scope::Exact(p) => p,
        }
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
        self.written.get(key).map(|w| &w.value)
    }

    /// Records that `key` holds `value` on `lease`, written by someone sharing this
    /// writer (the on-demand resolver), so converging it is not a second write.
    pub fn record(&mut self, key: String, value: Bytes, lease: i64) {
        self.written.insert(key, Written { value, lease });
    }

    /// Forgets what it believes is written and reads what the target holds instead: at
    /// start (keys an earlier run left, which the next [`converge_all`](Self::converge_all)
    /// deletes unless still wanted, and rewrites onto our leases if they are), after a
    /// write that may have failed half-way, and after a lost lease. Leases found under the
    /// keys that are not ours are handed to the writer, which revokes them once empty.
    pub async fn adopt(&mut self) -> Result<(), SyncError> {
        let client = self.writer.client();
        let pages = match &self.scope {
            Scope::Prefix(p) => Pages::new(&client, self.writer.name(), p),
            Scope::Exact(k) => Pages::exact(&client, self.writer.name(), k),
        };
        let (entries, _) = pages.collect().await?;
        self.written.clear();
        let live = self.writer.live_leases();
        let mut foreign = std::collections::HashSet::new();
        for e in entries {
            if e.lease != 0 && !live.contains(&e.lease) {
                foreign.insert(e.lease);
            }
            self.written.insert(
                e.key,
                Written {
                    value: e.value,
                    lease: e.lease,
                },
            );
        }
        self.writer.note_foreign(foreign);
        Ok(())
    }

    /// Makes the scope hold exactly `desired`: puts what differs or does not sit on one
    /// of our live leases, and deletes every other key written.
    pub async fn converge_all(
        &mut self,
        desired: &HashMap<String, Bytes>,
    ) -> Result<(), SyncError> {
        let live = self.writer.live_leases();
        let mut ops = Vec::new();
        for (key, value) in desired {
            match self.written.get(key) {
                Some(w) if w.value == *value && live.contains(&w.lease) => {}
                Some(w) => ops.push(WriteOp::Put {
                    key: key.clone(),
                    value: value.clone(),
                    lease: w.lease,
                }),
                None => ops.push(WriteOp::put(key.clone(), value.clone())),
            }
        }
        for (key, w) in &self.written {
            if !desired.contains_key(key) {
                ops.push(WriteOp::Delete {
                    key: key.clone(),
                    lease: w.lease,
                });
            }
        }
        self.write(ops).await
    }

    /// Converges the given keys only: each to its wanted value, or deleted when `None`.
    pub async fn converge(
        &mut self,
        wanted: impl IntoIterator<Item = (String, Option<Bytes>)>,
    ) -> Result<(), SyncError> {
        let live = self.writer.live_leases();
        let ops = wanted
            .into_iter()
            .filter_map(|(key, desired)| match (desired, self.written.get(&key)) {
                (Some(v), Some(w)) if v == w.value && live.contains(&w.lease) => None,
                (Some(value), w) => Some(WriteOp::Put {
                    key,
                    value,
                    lease: w.map_or(0, |w| w.lease),
                }),
                (None, Some(w)) => Some(WriteOp::Delete {
                    key,
                    lease: w.lease,
                }),
                (None, None) => None,
            })
            .collect();
        self.write(ops).await
    }

    async fn write(&mut self, ops: Vec<WriteOp>) -> Result<(), SyncError> {
        if ops.is_empty() {
            return Ok(());
        }
        let leases = self.writer.apply(&ops).await?;
        for (op, lease) in ops.into_iter().zip(leases) {
            match op {
                WriteOp::Put { key, value, .. } => {
                    self.written.insert(key, Written { value, lease });
                }
                WriteOp::Delete { key, .. } => {
                    self.written.remove(&key);
                }
            }
        }
        Ok(())
    }
}
