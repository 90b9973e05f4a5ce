//! Prometheus metrics of the node agent. Outcomes and latency are recorded as they
//! happen; the program's per-CPU counters and the reader's counters are read at scrape
//! time (they live in the kernel and in atomics, not here).

use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::agent::NodeAgent;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabel {
    counter: &'static str,
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
    }

    pub(crate) fn count_outcome(&self, outcome: &'static str) {
        self.outcomes.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub(crate) fn observe_latency(&self, micros: u64) {
        self.latency.observe(micros as f64 / 1e6);
    }

    /// Copies the live counters into the gauges; call before encoding.
    pub fn refresh(&self, agent: &NodeAgent) {
        for (counter, value) in agent.datapath().stats().counters {
            self.datapath
                .get_or_create(&CounterLabel { counter })
                .set(value as i64);
        }
        let reader = agent.reader_stats();
        for (counter, value) in [
            ("received", &reader.received),
            ("queue_overflow", &reader.overflow),
            ("malformed", &reader.malformed),
        ] {
            self.events
                .get_or_create(&CounterLabel { counter })
                .set(value.load(Ordering::Relaxed) as i64);
        }
        self.in_flight.set(agent.in_flight() as i64);
        self.negative.set(agent.negative_cached() as i64);
    }
}
