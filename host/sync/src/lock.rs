//! The leader lock that keeps two replicas from writing the same cache.
//!
//! kvstoremesh takes an etcd mutex on `cilium/kvstoremesh-lock` in the local etcd before
//! it writes anything, under a short lease (25 s, renewed every third of that), so a
//! crashed leader's lock frees itself quickly and a standby replica takes over.

use std::time::Duration;

use etcd_client::{Client, LockOptions};
use tokio_util::sync::CancellationToken;

use crate::error::SyncError;

/// A held lock. Dropping it does not release it; call [`LeaderLock::release`].
pub struct LeaderLock {
    client: Client,
    lease: i64,
    key: Vec<u8>,
    lost: CancellationToken,
}

impl std::fmt::Debug for LeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLock")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl LeaderLock {
    /// Waits until the lock `name` is ours (or `cancel`), under a lease of `ttl`.
    pub async fn acquire(
        client: &Client,
        name: &str,
        ttl: Duration,
        cancel: &CancellationToken,
    ) -> Result<Option<LeaderLock>, SyncError> {
        let mut lease_client = client.lease_client();
        let lease = lease_client
            .grant(ttl.as_secs().max(2) as i64, None)
            .await
            .map_err(SyncError::etcd("local"))?
            .id();
        let lost = CancellationToken::new();
        let keepalive_stop = cancel.child_token();
        {
            let (lost, stop) = (lost.clone(), keepalive_stop.clone());
            let mut lease_client = client.lease_client();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(ttl / 3) => {}
                    }
                    let renewed = async {
                        let (mut keeper, mut stream) = lease_client.keep_alive(lease).await?;
                        keeper.keep_alive().await?;
                        Ok::<_, etcd_client::Error>(stream.message().await?.map(|r| r.ttl()))
                    };
                    let outcome = tokio::time::timeout(ttl / 3, renewed).await;
                    let gone =
                        matches!(&outcome, Ok(Err(e)) if e.to_string().contains("lease not found"));
                    match outcome {
                        Ok(Ok(Some(t))) if t > 0 => {}
                        _ if gone => {
                            tracing::error!(
                                lease,
                                "leader lock lease is gone: another replica may take over"
                            );
                            lost.cancel();
                            return;
                        }
                        Ok(Ok(_)) => {
                            tracing::error!(
                                lease,
                                "leader lock lease expired: another replica may take over"
                            );
                            lost.cancel();
                            return;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(lease, error = %e, "leader lock renewal failed")
                        }
                        Err(_) => tracing::warn!(lease, "leader lock renewal timed out"),
                    }
                }
            });
        }
        let mut lock_client = client.lock_client();
        tracing::info!(lock = name, "waiting for the leader lock");
        let locked = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = lease_client.revoke(lease).await;
                return Ok(None);
            }
            r = lock_client.lock(name, Some(LockOptions::new().with_lease(lease))) => r.map_err(SyncError::etcd("local"))?,
        };
        tracing::info!(lock = name, "holding the leader lock");
        Ok(Some(LeaderLock {
            client: client.clone(),
            lease,
            key: locked.key().to_vec(),
            lost,
        }))
    }

    /// The condition every write of the holder carries: the lock key still on the lock's
    /// lease. A holder that lost the lock (paused past its TTL) cannot write.
    pub fn fence(&self) -> crate::writer::Fence {
        crate::writer::Fence {
            key: String::from_utf8_lossy(&self.key).into_owned(),
            lease: self.lease,
        }
    }

    /// Cancelled if the lock's lease is lost: the holder must stop writing.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Releases the lock and its lease, so a standby takes over at once.
    pub async fn release(self) {
        let mut lock_client = self.client.lock_client();
        let _ = lock_client.unlock(self.key).await;
        let _ = self.client.lease_client().revoke(self.lease).await;
    }
}
