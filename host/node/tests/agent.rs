//! The agent end to end in one process: real classifier (driven by `BPF_PROG_TEST_RUN`),
//! real ring buffer, real local etcd. Covers what only the whole path shows: a full
//! standalone ipcache is a failed install, never "installed"; a slow miss hook does not
//! stall the async workers; the hook's cluster list is bounded. Needs root.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshfilter_etcd::Client;
use meshfilter_filter_runtime::{MissDecision, MissInput};
use meshfilter_local_etcd::EtcdServer;
use meshfilter_node::probe::ipv4_frame;
use meshfilter_node::{
    AgentConfig, Datapath, DatapathConfig, MeshView, MissHook, MissVerdict, NodeAgent, NodeMetrics,
    Resolvers, StaticCidr,
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use meshfilter_tests::cache::put_cluster_b;
use meshfilter_tests::wait_until;

const POD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn remote(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, i)
}

/// Runs the classifier on a packet to `dst` (off the async workers: a syscall).
async fn send(dp: &Arc<Datapath>, dst: Ipv4Addr) {
    let dp = dp.clone();
    tokio::task::spawn_blocking(move || dp.test_run(&ipv4_frame(POD, dst), 1))
        .await
        .unwrap()
        .unwrap();
}

fn outcome(agent: &NodeAgent, name: &str) -> u64 {
    agent.status().outcomes.get(name).copied().unwrap_or(0)
}

fn datapath(ipcache_entries: u32) -> Arc<Datapath> {
    Arc::new(
        Datapath::load(&DatapathConfig {
            dedup: Duration::ZERO,
            events_per_second: 0,
            verdict: MissVerdict::Drop,
            ipcache_entries,
            ..Default::default()
        })
        .expect("load the classifier"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ipcache_is_a_failed_install() {
    let etcd = EtcdServer::start("node-agent-full");
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    let endpoints: Vec<(IpAddr, u32)> = (1..=4)
        .map(|i| (remote(i).into(), 131_072 + u32::from(i)))
        .collect();
    put_cluster_b(&mut client, &endpoints).await;
    // Room for the two world routes, the pod CIDR's world entry and two endpoints.
    let dp = datapath(5);
    // On demand: cached endpoints are installed only when they miss.
    let view = MeshView::new(dp.clone(), Vec::new(), false);
    let cancel = CancellationToken::new();
    let view_task = tokio::spawn(view.clone().run(client.clone(), cancel.clone()));
    wait_until(
        Duration::from_secs(20),
        "listed",
        || view.status().synced && view.status().mesh_cidrs == 1,
        || format!("{:?}", view.status()),
    )
    .await;
    assert_eq!(dp.ipcache_entries().len(), 3);

    let metrics = NodeMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let agent = NodeAgent::new(
        dp.clone(),
        view.clone(),
        None,
        Resolvers::new(Some(client.clone()), None, Duration::from_secs(2)),
        AgentConfig::default(),
        metrics.clone(),
    );
    let agent_task = tokio::spawn(agent.clone().run(cancel.clone()));
    for i in 1..=4 {
        send(&dp, remote(i)).await;
    }
    wait_until(
        Duration::from_secs(10),
        "every miss handled",
        || outcome(&agent, "installed") + outcome(&agent, "map-full") == 4,
        || format!("{:?}", agent.status().outcomes),
    )
    .await;
    assert_eq!(outcome(&agent, "installed"), 2);
    assert_eq!(outcome(&agent, "map-full"), 2);
    let hosts: Vec<IpAddr> = (1..=4)
        .map(|i| IpAddr::V4(remote(i)))
        .filter(|a| {
            dp.ipcache_entries()
                .iter()
                .any(|(net, _)| *net == ipnet::IpNet::from(*a))
        })
        .collect();
    assert_eq!(
        hosts.len(),
        2,
        "only what is installed is in the map: {hosts:?}"
    );
    let status = agent.status();
    let full: Vec<_> = status
        .recent
        .iter()
        .filter(|r| r.outcome.as_str() == "map-full")
        .collect();
    assert_eq!(full.len(), 2);
    assert!(
        full.iter()
            .all(|r| !hosts.contains(&r.address) && r.identity.is_none())
    );
    assert!(full[0].reason.contains("full"), "{:?}", full[0]);
    assert!(
        status
            .view
            .write_errors
            .get("ipcache/map-full")
            .is_some_and(|n| *n >= 2)
    );

    agent.refresh_metrics();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"meshfilter_node_misses_total{outcome="map-full"} 2"#),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with(
            r#"meshfilter_node_map_write_errors_total{map="ipcache",reason="map-full"}"#
        )),
        "{text}"
    );
    cancel.cancel();
    agent_task.await.unwrap().unwrap();
    view_task.await.unwrap();
}

/// A miss hook that blocks its thread like a module running up to its deadline, and
/// names far more clusters than exist.
struct SlowHook {
    busy: Duration,
    calls: AtomicU64,
}

impl MissHook for SlowHook {
    fn generation(&self) -> u64 {
        1
    }

    fn decide(&self, _input: &Arc<MissInput>) -> (MissDecision, u64) {
        std::thread::sleep(self.busy);
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut clusters = vec!["cluster-b".to_owned(); 3];
        clusters.extend((0..1000).map(|i| format!("made-up-{i}")));
        (
            MissDecision::Resolve {
                clusters,
                reason: "slow".into(),
            },
            1,
        )
    }
}

/// One async worker only: if the hook ran on it, nothing else on the runtime would run
/// while the hook is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_slow_miss_hook_does_not_stall_the_agent() {
    let dp = datapath(64);
    let view = MeshView::new(
        dp.clone(),
        vec![StaticCidr {
            cidr: "198.51.100.0/24".parse().unwrap(),
            cluster: "cluster-b".into(),
        }],
        false,
    );
    let hook = Arc::new(SlowHook {
        busy: Duration::from_millis(600),
        calls: AtomicU64::new(0),
    });
    let agent = NodeAgent::new(
        dp.clone(),
        view,
        Some(hook.clone()),
        Resolvers::new(None, None, Duration::from_secs(1)),
        AgentConfig::default(),
        NodeMetrics::default(),
    );
    let cancel = CancellationToken::new();
    let agent_task = tokio::spawn(agent.clone().run(cancel.clone()));

    // A task that wakes every 5 ms and records the longest gap between its wake-ups.
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut longest = Duration::ZERO;
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
            longest
        }
    });
    send(&dp, remote(7)).await;
    wait_until(
        Duration::from_secs(10),
        "the miss decided and handled",
        || outcome(&agent, "not-found") == 1,
        || format!("{:?}", agent.status().outcomes),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let longest = ticker.await.unwrap();
    assert_eq!(hook.calls.load(Ordering::Relaxed), 1);
    assert!(
        longest < Duration::from_millis(250),
        "the async worker stalled for {longest:?} while the hook ran 600 ms"
    );
    // One cluster is known: of the 1003 names only the first is looked up.
    assert_eq!(agent.clusters_dropped(), 1002);
    assert_eq!(agent.status().miss_hook_clusters_dropped, 1002);
    cancel.cancel();
    agent_task.await.unwrap().unwrap();
}
