//! Metrics of the Kubernetes source, recorded by the watchers as events arrive
//! (`meshfilter_export_kubernetes_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A watched Kubernetes resource.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResourceLabel {
    pub(crate) resource: &'static str,
}

/// The watchers' counters.
#[derive(Debug, Clone, Default)]
pub struct SourceMetrics {
    pub(crate) objects: Family<ResourceLabel, Gauge>,
    pub(crate) lists: Family<ResourceLabel, Counter>,
    pub(crate) errors: Family<ResourceLabel, Counter>,
    pub(crate) malformed: Family<ResourceLabel, Counter>,
    pub(crate) write_retries: Counter,
}

impl SourceMetrics {
    /// Registers every family in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("meshfilter_export_kubernetes");
        r.register(
            "objects",
            "Objects in a watcher's store",
            self.objects.clone(),
        );
        r.register(
            "lists",
            "Complete lists of a watched resource (more than one: listed again, e.g. after 410 Gone)",
            self.lists.clone(),
        );
        r.register(
            "watch_errors",
            "Watch failures (each retried by the watcher)",
            self.errors.clone(),
        );
        r.register(
            "objects_malformed",
            "Objects whose body could not be read, skipped",
            self.malformed.clone(),
        );
        r.register(
            "write_retries",
            "Failed writes to the export etcd (each retried)",
            self.write_retries.clone(),
        );
    }
}
