//! A resource its source does not export: what an earlier session left at the target is
//! drained and the canary is written anyway, as kvstoremesh does for a disabled reflector
//! (agents wait for every canary before they call a remote ready). The canary is written
//! again whenever a lease is lost, like any key.

use std::sync::Arc;

use meshfilter_etcd::Backoff;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use meshfilter_api::ReflectorStatus;

use crate::reflector::{MAX_ERROR_CHARS, bounded};
use crate::target::TargetKeys;
use crate::writer::TargetWriter;

/// One disabled resource.
pub(crate) struct Disabled {
    pub(crate) target: TargetKeys,
    pub(crate) canary: String,
    pub(crate) writer: Arc<TargetWriter>,
    pub(crate) backoff: Backoff,
    pub(crate) status: Arc<Mutex<ReflectorStatus>>,
    pub(crate) synced: watch::Sender<bool>,
}

impl Disabled {
    /// Drains, writes the canary, then keeps it until `cancel`.
    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        let mut lost = self.writer.lease_lost();
        lost.mark_unchanged();
        let mut canary_lease = 0;
        loop {
            let drained = async {
                self.target.adopt().await?;
                self.target.converge_all(&Default::default()).await?;
                self.writer.write_canary(&self.canary, canary_lease).await
            };
            match drained.await {
                Ok(lease) => {
                    canary_lease = lease;
                    self.backoff.reset();
                    if !*self.synced.borrow() {
                        tracing::info!(
                            prefix = self.target.prefix(),
                            "not exported by the source: drained, canary written"
                        );
                        self.status.lock().synced = true;
                        self.synced.send_replace(true);
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        changed = lost.changed() => if changed.is_err() { return },
                    }
                }
                Err(e) => {
                    {
                        let mut s = self.status.lock();
                        s.retries += 1;
                        s.last_error = Some(bounded(e.to_string(), MAX_ERROR_CHARS));
                    }
                    if !self.backoff.wait(&cancel).await {
                        return;
                    }
                }
            }
        }
    }
}
