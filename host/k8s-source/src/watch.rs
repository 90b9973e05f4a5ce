//! The watchers: one kube watcher per resource, each feeding a reflector store the exporter
//! reads, and telling the exporter what changed.
//!
//! kube's watcher lists (in pages), then watches from the list's resource version; when the
//! API answers a watch with 410 Gone it lists again, and the store swaps in the new list
//! only once it is complete. Every applied or deleted object marks what it affects in a
//! [`ChangeFeed`]; a completed list marks everything, which is how objects deleted while
//! no watch was running are noticed (the exporter re-decides all, and what nothing wants
//! any more is deleted). Errors are counted and retried with client-go's backoff.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Resource;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::{ResourceLabel, SourceMetrics};
use crate::resources::{CiliumEndpointObject, CiliumNodeObject, ObjectKey};

/// What changed since the exporter last looked.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    /// Everything must be decided again (a list completed).
    pub all: bool,
    /// Endpoints to decide again: a CiliumEndpoint or its Pod changed.
    pub endpoints: HashSet<ObjectKey>,
    /// Namespaces whose endpoints must be decided again.
    pub namespaces: HashSet<String>,
    /// CiliumNodes that changed.
    pub nodes: HashSet<String>,
}

/// Changes from the watchers to the exporter. Bursts coalesce: however many events arrive
/// while the exporter is busy, it wakes once and takes them all.
#[derive(Debug, Default)]
pub(crate) struct ChangeFeed {
    dirty: Mutex<Dirty>,
    notify: Notify,
}

impl ChangeFeed {
    /// Marks a change and wakes the exporter.
    pub fn mark(&self, change: impl FnOnce(&mut Dirty)) {
        change(&mut self.dirty.lock());
        self.notify.notify_one();
    }

    /// Takes what changed.
    pub fn take(&self) -> Dirty {
        std::mem::take(&mut *self.dirty.lock())
    }

    /// Resolves once something was marked since the last wake-up.
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

/// Live counters of one watched resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchStatus {
    /// The first complete list is in the store.
    pub listed: bool,
    /// Objects in the store.
    pub objects: usize,
    /// Complete lists (1 plus every re-list, such as after a 410 Gone).
    pub lists: u64,
    /// List and watch failures (each retried), including events that could not be read.
    pub errors: u64,
    /// Objects whose body could not be read; each was skipped.
    pub malformed: u64,
    /// Last failure.
    pub last_error: Option<String>,
}

/// A watched kind: what a change of one of its objects affects.
pub(crate) trait Watched:
    Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static
{
    /// The resource name in logs and status.
    const NAME: &'static str;
    /// Marks what a change of this object affects.
    fn mark(&self, dirty: &mut Dirty);
    /// Why the body could not be read, if it could not.
    fn malformed(&self) -> Option<&str> {
        None
    }
}

impl Watched for CiliumEndpointObject {
    const NAME: &'static str = "ciliumendpoints";
    fn mark(&self, dirty: &mut Dirty) {
        dirty.endpoints.insert(self.key());
    }
    fn malformed(&self) -> Option<&str> {
        self.object().err()
    }
}

impl Watched for CiliumNodeObject {
    const NAME: &'static str = "ciliumnodes";
    fn mark(&self, dirty: &mut Dirty) {
        dirty.nodes.insert(self.key().name);
    }
    fn malformed(&self) -> Option<&str> {
        self.object().err()
    }
}

/// A Pod's endpoint is the CiliumEndpoint of the same namespace and name.
impl Watched for PartialObjectMeta<Pod> {
    const NAME: &'static str = "pods";
    fn mark(&self, dirty: &mut Dirty) {
        dirty.endpoints.insert(ObjectKey::of(&self.metadata));
    }
}

impl Watched for PartialObjectMeta<Namespace> {
    const NAME: &'static str = "namespaces";
    fn mark(&self, dirty: &mut Dirty) {
        dirty
            .namespaces
            .insert(self.metadata.name.clone().unwrap_or_default());
    }
}

/// Runs the watcher `stream` of `K` into `store` until `cancel`, marking changes in `feed`
/// and counting in `status`.
pub(crate) async fn run_watch<K, S>(
    stream: S,
    mut store: Writer<K>,
    status: Arc<Mutex<WatchStatus>>,
    feed: Arc<ChangeFeed>,
    metrics: SourceMetrics,
    cancel: CancellationToken,
) where
    K: Watched,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let reader = store.as_reader();
    let label = ResourceLabel { resource: K::NAME };
    let mut stream = std::pin::pin!(stream);
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            next = stream.next() => next,
        };
        let Some(result) = next else { break };
        let event = match result {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(resource = K::NAME, error = %e, "watch failed; retrying");
                metrics.errors.get_or_create(&label).inc();
                let mut s = status.lock();
                s.errors += 1;
                s.last_error = Some(e.to_string());
                continue;
            }
        };
        store.apply_watcher_event(&event);
        match &event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                if let Some(why) = object.malformed() {
                    tracing::warn!(resource = K::NAME, object = %ObjectKey::of(object.meta()), error = why,
                        "skipping malformed object");
                    metrics.malformed.get_or_create(&label).inc();
                    status.lock().malformed += 1;
                }
            }
            watcher::Event::Delete(_) | watcher::Event::Init => {}
            watcher::Event::InitDone => {
                tracing::info!(resource = K::NAME, objects = reader.len(), "listed");
                metrics.lists.get_or_create(&label).inc();
                let mut s = status.lock();
                s.listed = true;
                s.lists += 1;
            }
        }
        match &event {
            watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
                feed.mark(|dirty| object.mark(dirty))
            }
            watcher::Event::InitDone => feed.mark(|dirty| dirty.all = true),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
        metrics
            .objects
            .get_or_create(&label)
            .set(reader.len() as i64);
        status.lock().objects = reader.len();
    }
    tracing::debug!(resource = K::NAME, "watch stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bursts_coalesce_into_one_wake_up() {
        let feed = ChangeFeed::default();
        feed.mark(|d| {
            d.namespaces.insert("shop".into());
        });
        feed.mark(|d| d.all = true);
        tokio::time::timeout(std::time::Duration::from_secs(1), feed.changed())
            .await
            .expect("a mark wakes the exporter");
        let dirty = feed.take();
        assert!(dirty.all);
        assert_eq!(dirty.namespaces.len(), 1);
        assert!(feed.take().namespaces.is_empty());
    }
}
