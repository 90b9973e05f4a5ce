//! Prometheus metrics of the node agent. Outcomes and latency are recorded as they
//! happen; the program's per-CPU counters, the reader's, the map writer's and the Cilium
//! pin follower's are read at scrape time (they live in the kernel and in the components'
//! own counters, not here).

use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::datapath::Datapath;
use crate::events::ReaderStats;
use crate::view::MeshView;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabel {
    counter: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapWriteLabel {
    map: &'static str,
    reason: &'static str,
}

/// The node agent's metrics.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    outcomes: Family<OutcomeLabel, Counter>,
    latency: Histogram,
    datapath: Family<CounterLabel, Gauge>,
    events: Family<CounterLabel, Gauge>,
    in_flight: Gauge,
    negative: Gauge,
    write_errors: Family<MapWriteLabel, Counter>,
    writes_pending: Gauge,
    ipcache_reopens: Counter,
    ipcache_pin_missing: Gauge,
    ipcache_pin_refused: Counter,
    clusters_dropped: Counter,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics {
            outcomes: Family::default(),
            // 10 µs .. ~5 s.
            latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                1e-5, 2.0, 20,
            )),
            datapath: Family::default(),
            events: Family::default(),
            in_flight: Gauge::default(),
            negative: Gauge::default(),
            write_errors: Family::default(),
            writes_pending: Gauge::default(),
            ipcache_reopens: Counter::default(),
            ipcache_pin_missing: Gauge::default(),
            ipcache_pin_refused: Counter::default(),
            clusters_dropped: Counter::default(),
        }
    }
}

impl NodeMetrics {
    /// Registers everything under `meshfilter_node_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("meshfilter_node");
        r.register(
            "misses",
            "Missed addresses handled, by outcome",
            self.outcomes.clone(),
        );
        r.register(
            "miss_to_installed_seconds",
            "From the packet that missed (kernel timestamp) to its entry installed",
            self.latency.clone(),
        );
        r.register(
            "datapath_packets",
            "Counters of the eBPF program, summed over CPUs (packets, hit, miss, emitted, suppressed, rate_limited, ring_full, ...)",
            self.datapath.clone(),
        );
        r.register(
            "events",
            "Miss events read from the ring buffer (received, queue_overflow, malformed)",
            self.events.clone(),
        );
        r.register(
            "in_flight",
            "Addresses being resolved",
            self.in_flight.clone(),
        );
        r.register(
            "negative_cached",
            "Addresses not looked up again until their negative entry expires",
            self.negative.clone(),
        );
        r.register(
            "map_write_errors",
            "Failed writes to the program's maps, by map (ipcache, mesh-cidrs) and reason (map-full, error)",
            self.write_errors.clone(),
        );
        r.register(
            "map_writes_pending",
            "Entries wanted in a map but not there (failed writes waiting for a retry)",
            self.writes_pending.clone(),
        );
        r.register(
            "ipcache_reopens",
            "Times the program was rebound to an ipcache map Cilium recreated",
            self.ipcache_reopens.clone(),
        );
        r.register(
            "ipcache_pin_missing",
            "1 while Cilium's ipcache pin is missing (the program reads the map it held)",
            self.ipcache_pin_missing.clone(),
        );
        r.register(
            "ipcache_pin_refused",
            "Times a map at Cilium's pin was refused (wrong layout) or could not be bound",
            self.ipcache_pin_refused.clone(),
        );
        r.register(
            "miss_hook_clusters_dropped",
            "Cluster names of miss-hook decisions ignored (beyond the known clusters, or repeated)",
            self.clusters_dropped.clone(),
        );
    }

    pub(crate) fn count_outcome(&self, outcome: &'static str) {
        self.outcomes.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub(crate) fn observe_latency(&self, micros: u64) {
        self.latency.observe(micros as f64 / 1e6);
    }

    /// Copies the live counters into the gauges and counters; the agent calls it (through
    /// [`crate::NodeAgent::refresh_metrics`]) before each scrape.
    pub(crate) fn refresh(&self, live: Live<'_>) {
        for (counter, value) in live.datapath.stats().counters {
            self.datapath
                .get_or_create(&CounterLabel { counter })
                .set(value as i64);
        }
        let reader = live.reader;
        for (counter, value) in [
            ("received", &reader.received),
            ("queue_overflow", &reader.overflow),
            ("malformed", &reader.malformed),
        ] {
            self.events
                .get_or_create(&CounterLabel { counter })
                .set(value.load(Ordering::Relaxed) as i64);
        }
        self.in_flight.set(live.in_flight as i64);
        self.negative.set(live.negative_cached as i64);
        let view = live.view;
        for (map, reason, total) in view.write_errors() {
            catch_up(
                &self.write_errors.get_or_create(&MapWriteLabel {
                    map: map.as_str(),
                    reason: reason.as_str(),
                }),
                total,
            );
        }
        self.writes_pending.set(view.status().pending as i64);
        if let Some(cilium) = live.datapath.cilium_map() {
            catch_up(&self.ipcache_reopens, cilium.reopens);
            catch_up(&self.ipcache_pin_refused, cilium.refused);
            self.ipcache_pin_missing.set(i64::from(cilium.pin_missing));
        }
        catch_up(&self.clusters_dropped, live.clusters_dropped);
    }
}

/// Where the counters read at scrape time live: the kernel (through the datapath), the
/// event reader, the view's map writer, and the agent's own totals.
pub(crate) struct Live<'a> {
    pub(crate) datapath: &'a Datapath,
    pub(crate) reader: &'a ReaderStats,
    pub(crate) view: &'a MeshView,
    pub(crate) in_flight: usize,
    pub(crate) negative_cached: usize,
    pub(crate) clusters_dropped: u64,
}

/// Brings a counter up to a total kept elsewhere (counters only ever go up; only
/// [`NodeMetrics::refresh`] moves these).
fn catch_up(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}
