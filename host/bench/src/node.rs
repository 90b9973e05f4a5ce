//! `meshfilter bench node`: the miss path's figures on this machine, with the real
//! classifier in the kernel (driven by `BPF_PROG_TEST_RUN`, so no interfaces are
//! needed), the real node agent, real etcd and, for the remote case, a real
//! `meshfilter mesh` process.
//!
//! Phases: per-packet cost of the program on hit and on miss; miss-to-installed latency
//! when the entry is in the local cache; userspace saturation under a flood of distinct
//! addresses; miss-to-installed latency when the entry must come from the owning remote
//! cluster's etcd through the mesh's resolve API.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Client;
use meshfilter_cilium::keys::cluster_config_key;
use meshfilter_cilium::{ClusterName, Resource};
use meshfilter_filter_runtime::{
    BuiltinSet, EngineConfig, FilterMetrics, FilterRuntime, Locality, ModuleSource, RuntimeConfig,
};
use meshfilter_local_etcd::EtcdServer;
use meshfilter_node::index::endpoint_info;
use meshfilter_node::probe::ipv4_frame;
use meshfilter_node::{
    AgentConfig, Datapath, DatapathConfig, MeshView, MissVerdict, NodeAgent, NodeMetrics,
    Resolvers, StaticCidr,
};
use tokio_util::sync::CancellationToken;

use crate::error::BenchError;
use crate::fixtures::{self, write_batched};
use crate::process::Process;

const POD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Cluster C: endpoints already in the local cache.
const CACHED_BASE: Ipv4Addr = Ipv4Addr::new(198, 20, 0, 0);
/// Cluster C's addresses nobody has (the flood).
const FLOOD_BASE: Ipv4Addr = Ipv4Addr::new(198, 21, 0, 0);
/// Cluster B: regional endpoints in another region, only in cluster B's etcd.
const REMOTE_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);

/// What `meshfilter bench node` runs.
#[derive(Debug, Clone)]
pub struct NodeBenchOptions {
    /// The meshfilter binary to run as `meshfilter mesh` for the remote phase.
    pub binary: PathBuf,
    /// Misses per latency phase.
    pub addresses: u32,
    /// Misses in the remote phase (at most `addresses`).
    pub remote_addresses: u32,
    /// Time between two misses of a latency phase.
    pub interval: Duration,
    /// Distinct addresses in the flood.
    pub flood: u32,
    /// The node's filters (its miss hook decides every miss).
    pub filters: BuiltinSet,
}

/// Runs the benchmark, printing each figure as it is measured.
pub fn run(options: &NodeBenchOptions) -> Result<(), BenchError> {
    crate::runtime()?.block_on(run_async(options))
}

fn nth(base: Ipv4Addr, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + 1 + i)
}

fn endpoint_json(ip: Ipv4Addr, id: u32, scope: &str) -> String {
    fixtures::endpoint(
        ip.into(),
        Ipv4Addr::new(203, 0, 113, 2).into(),
        id,
        "bench",
        &format!("pod-{ip}"),
        Some(scope),
    )
}

async fn run_async(args: &NodeBenchOptions) -> Result<(), BenchError> {
    if !Datapath::available() {
        return Err(BenchError::Incomplete(
            "this build has no eBPF program; run scripts/setup.sh and rebuild".into(),
        ));
    }
    let local = EtcdServer::try_start("node-bench-local")
        .map_err(BenchError::fixture("etcd node-bench-local"))?;
    let client = Client::connect([local.endpoint()], None)
        .await
        .map_err(BenchError::etcd_client("local"))?;
    println!(
        "meshfilter node benchmark: {} misses per latency phase, {} ms apart; flood of {} addresses",
        args.addresses,
        args.interval.as_secs_f64() * 1000.0,
        args.flood
    );
    let cluster_c = ClusterName::new("cluster-c").map_err(BenchError::cilium)?;
    write_batched(
        &client,
        (0..args.addresses).map(|i| {
            let ip = nth(CACHED_BASE, i);
            (
                Resource::Endpoints.cache_key(&cluster_c, &ip.to_string()),
                endpoint_json(ip, 196_608 + 256 + i % 1000, "global"),
            )
        }),
    )
    .await
    .map_err(BenchError::etcd_client("local"))?;

    per_packet_cost()?;

    // Local cache: the agent resolves from the local etcd only.
    let static_cidrs = vec![StaticCidr {
        cidr: "198.20.0.0/14".parse().map_err(BenchError::cilium)?,
        cluster: "cluster-c".into(),
    }];
    let resolvers = Resolvers::new(Some(client.clone()), None, Duration::from_secs(2));
    let bench = Bench::start(static_cidrs, resolvers, client.clone(), &args.filters)?;
    let addrs: Vec<Ipv4Addr> = (0..args.addresses).map(|i| nth(CACHED_BASE, i)).collect();
    let lat = bench.latency(&addrs, args.interval).await?;
    println!(
        "miss -> installed, entry in the local cache:   p50 {:>6} us  p99 {:>6} us  max {:>6} us  ({} samples)",
        lat.p50, lat.p99, lat.max, lat.samples
    );
    bench.flood(args.flood).await?;
    bench.stop().await;

    // Remote: cluster B's regional endpoints, filtered out of the cache, resolved on
    // demand through a real `meshfilter mesh`.
    let remote = EtcdServer::try_start("node-bench-cluster-b")
        .map_err(BenchError::fixture("etcd node-bench-cluster-b"))?;
    let rclient = Client::connect([remote.endpoint()], None)
        .await
        .map_err(BenchError::etcd_client("cluster-b"))?;
    let cluster_b = ClusterName::new("cluster-b").map_err(BenchError::cilium)?;
    let mut kvs = vec![
        (
            cluster_config_key(&cluster_b),
            fixtures::cluster_config(2, false),
        ),
        (
            Resource::Nodes.source_key(&cluster_b, "b1"),
            fixtures::node(
                &cluster_b,
                2,
                "b1",
                Ipv4Addr::new(203, 0, 113, 2).into(),
                &[("topology.kubernetes.io/region", "us-east-1")],
                Some("198.18.0.0/16".parse().map_err(BenchError::cilium)?),
            ),
        ),
        (
            Resource::Identities.source_key(&cluster_b, "131329"),
            "k8s:app=bench;k8s:io.kubernetes.pod.namespace=bench;".to_string(),
        ),
    ];
    let remote_count = args.addresses.min(args.remote_addresses);
    kvs.extend((0..remote_count).map(|i| {
        let ip = nth(REMOTE_BASE, i);
        (
            Resource::Endpoints.source_key(&cluster_b, &ip.to_string()),
            endpoint_json(ip, 131_329, "regional"),
        )
    }));
    write_batched(&rclient, kvs)
        .await
        .map_err(BenchError::etcd_client("cluster-b"))?;
    // Written last, as clustermesh-apiserver does once its lists are in.
    write_batched(&rclient, fixtures::canaries(&cluster_b, false))
        .await
        .map_err(BenchError::etcd_client("cluster-b"))?;
    let dir = tempfile::tempdir()
        .map_err(|e| BenchError::fixture("a temporary directory")(e.to_string()))?;
    let mesh = start_mesh(&args.binary, dir.path(), &local, &remote)?;
    let resolvers = Resolvers::new(
        Some(client.clone()),
        Some(format!("http://{}", mesh.admin)),
        Duration::from_secs(2),
    );
    let bench = Bench::start(Vec::new(), resolvers, client.clone(), &args.filters)?;
    bench.wait_for_cidrs().await?;
    let addrs: Vec<Ipv4Addr> = (0..remote_count).map(|i| nth(REMOTE_BASE, i)).collect();
    // Stay under the mesh's default resolve limits: 100 requests/s per client (this
    // agent is one client) and 200 remote lookups/s. Faster, the mesh answers 429 and
    // the run fails with the misses it could not install.
    let interval = args.interval.max(Duration::from_millis(12));
    let lat = bench.latency(&addrs, interval).await?;
    println!(
        "miss -> installed, from the owning remote etcd: p50 {:>6} us  p99 {:>6} us  max {:>6} us  ({} samples, {} ms apart)",
        lat.p50,
        lat.p99,
        lat.max,
        lat.samples,
        interval.as_millis()
    );
    bench.stop().await;
    drop(mesh);
    Ok(())
}

/// Kernel-measured cost of one program run (mean over many repeats).
fn per_packet_cost() -> Result<(), BenchError> {
    let dp = Datapath::load(&DatapathConfig {
        dedup: Duration::from_secs(3600),
        events_per_second: 0,
        verdict: MissVerdict::Drop,
        ..Default::default()
    })?;
    let mut ring = dp
        .take_events()
        .ok_or_else(|| BenchError::Incomplete("the datapath's event ring was taken".into()))?;
    let cidr: ipnet::IpNet = "198.20.0.0/14".parse().map_err(BenchError::cilium)?;
    dp.upsert_mesh_cidr(cidr, 3)?;
    dp.upsert_ipcache(cidr, endpoint_info(9, Some(POD.into()), 0))?;
    dp.upsert_ipcache(
        "198.20.0.1/32".parse().map_err(BenchError::cilium)?,
        endpoint_info(196_864, Some(POD.into()), 0),
    )?;
    let repeat = 1_000_000;
    let (_, hit) = dp.test_run(&ipv4_frame(POD, nth(CACHED_BASE, 0)), repeat)?;
    let (_, outside) = dp.test_run(&ipv4_frame(POD, Ipv4Addr::new(192, 0, 2, 99)), repeat)?;
    let (_, suppressed) = dp.test_run(&ipv4_frame(POD, nth(CACHED_BASE, 5)), repeat)?;
    // An emitted miss happens once per address: mean over distinct addresses, draining
    // the ring as we go so it never fills.
    let mut total = Duration::ZERO;
    let distinct = 20_000u32;
    for i in 0..distinct {
        let (_, d) = dp.test_run(&ipv4_frame(POD, nth(CACHED_BASE, 100 + i)), 1)?;
        total += d;
        while ring.next().is_some() {}
    }
    let emitted = total / distinct;
    println!(
        "per packet (BPF_PROG_TEST_RUN, kernel mean): hit {hit:?}, outside the mesh {outside:?}, miss suppressed by dedup {suppressed:?}, miss signalled {emitted:?}"
    );
    Ok(())
}

struct Latency {
    p50: u64,
    p99: u64,
    max: u64,
    samples: u64,
}

/// A datapath (not attached) with its agent running.
struct Bench {
    datapath: Arc<Datapath>,
    agent: Arc<NodeAgent>,
    view: Arc<MeshView>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    view_task: tokio::task::JoinHandle<()>,
}

impl Bench {
    fn start(
        static_cidrs: Vec<StaticCidr>,
        resolvers: Resolvers,
        local: Client,
        filters: &BuiltinSet,
    ) -> Result<Bench, BenchError> {
        let datapath = Arc::new(Datapath::load(&DatapathConfig {
            dedup: Duration::from_secs(5),
            events_per_second: 0,
            verdict: MissVerdict::Drop,
            ..Default::default()
        })?);
        let runtime = tokio::task::block_in_place(|| {
            FilterRuntime::new(
                RuntimeConfig {
                    engine: EngineConfig::default(),
                    source: ModuleSource::Builtin(filters.clone()),
                    pins: Default::default(),
                    local: Locality {
                        cluster: "cluster-a".into(),
                        zone: None,
                        region: Some("eu-west-1".into()),
                    },
                },
                FilterMetrics::default(),
            )
        })?;
        let view = MeshView::new(datapath.clone(), static_cidrs, false);
        let agent = NodeAgent::new(
            datapath.clone(),
            view.clone(),
            Some(runtime),
            resolvers,
            AgentConfig {
                node_name: "bench".into(),
                ..AgentConfig::default()
            },
            NodeMetrics::default(),
        );
        let cancel = CancellationToken::new();
        let task = tokio::spawn(agent.clone().run(cancel.clone()));
        let view_task = tokio::spawn(view.clone().run(local, cancel.clone()));
        Ok(Bench {
            datapath,
            agent,
            view,
            cancel,
            task,
            view_task,
        })
    }

    /// Follows the local cache's node list (for the remote phase's pod CIDR).
    async fn wait_for_cidrs(&self) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.view.owner_of(nth(REMOTE_BASE, 0).into()).is_none() {
            if Instant::now() > deadline {
                return Err(BenchError::Timeout {
                    what: "the mesh to publish cluster-b's node into the local cache".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn latency(&self, addrs: &[Ipv4Addr], interval: Duration) -> Result<Latency, BenchError> {
        self.agent.clear_latencies();
        let before = installed(&self.agent);
        for addr in addrs {
            let frame = ipv4_frame(POD, *addr);
            let dp = self.datapath.clone();
            tokio::task::spawn_blocking(move || dp.test_run(&frame, 1))
                .await
                .map_err(|e| BenchError::Incomplete(format!("a test run: {e}")))??;
            tokio::time::sleep(interval).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while installed(&self.agent) < before + addrs.len() as u64 {
            if Instant::now() > deadline {
                return Err(BenchError::Incomplete(format!(
                    "only {} of {} misses were installed: {:?}",
                    installed(&self.agent) - before,
                    addrs.len(),
                    self.agent.status().outcomes
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = self.agent.status();
        let get = |k: &str| status.latency_us.get(k).copied().unwrap_or(0);
        Ok(Latency {
            p50: get("p50"),
            p99: get("p99"),
            max: get("max"),
            samples: get("samples"),
        })
    }

    /// Distinct unknown addresses as fast as one thread can run the program: how many
    /// events userspace reads and handles per second before its queue overflows.
    async fn flood(&self, count: u32) -> Result<(), BenchError> {
        let before = self.agent.status();
        let kernel_before = self.datapath.stats();
        let handled_before: u64 = before.outcomes.values().sum();
        let dp = self.datapath.clone();
        let started = Instant::now();
        let generated = tokio::task::spawn_blocking(move || -> Result<Duration, BenchError> {
            for i in 0..count {
                dp.test_run(&ipv4_frame(POD, nth(FLOOD_BASE, i)), 1)?;
            }
            Ok(started.elapsed())
        })
        .await
        .map_err(|e| BenchError::Incomplete(format!("the flood: {e}")))??;
        // Let the queue drain.
        let mut last = u64::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let handled: u64 = self.agent.status().outcomes.values().sum();
            if handled == last {
                break;
            }
            last = handled;
        }
        let drained = started.elapsed() - Duration::from_millis(200);
        let after = self.agent.status();
        let received = after.events["received"] - before.events["received"];
        let overflow = after.events["queueOverflow"] - before.events["queueOverflow"];
        let handled = after.outcomes.values().sum::<u64>() - handled_before;
        let kernel = self.datapath.stats();
        let delta = |i| kernel.get(i) - kernel_before.get(i);
        println!(
            "flood: kernel emitted {} events, {} lost to a full ring",
            delta(meshfilter_common::ipcache::stat::EMITTED),
            delta(meshfilter_common::ipcache::stat::RING_FULL)
        );
        println!(
            "flood: {count} distinct addresses signalled at {:.0}/s; userspace read {received} events ({:.0}/s), queue overflow {overflow}, handled {handled} ({:.0}/s, each an etcd lookup that finds nothing)",
            f64::from(count) / generated.as_secs_f64(),
            received as f64 / generated.as_secs_f64(),
            handled as f64 / drained.as_secs_f64()
        );
        Ok(())
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        let _ = self.view_task.await;
    }
}

fn installed(agent: &NodeAgent) -> u64 {
    agent
        .status()
        .outcomes
        .get("installed")
        .copied()
        .unwrap_or(0)
}

/// `meshfilter mesh` for cluster-a (eu-west-1) against cluster B, as a child process
/// (killed when dropped), ready to resolve.
fn start_mesh(
    binary: &std::path::Path,
    dir: &std::path::Path,
    local: &EtcdServer,
    remote: &EtcdServer,
) -> Result<Process, BenchError> {
    let clusters = dir.join("clustermesh");
    std::fs::create_dir(&clusters).map_err(BenchError::io(&clusters))?;
    let file = clusters.join("cluster-b");
    std::fs::write(&file, format!("endpoints:\n- {}\n", remote.endpoint()))
        .map_err(BenchError::io(&file))?;
    let admin = format!("127.0.0.1:{}", meshfilter_local_etcd::free_port());
    let config = dir.join("mesh.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster: {{name: cluster-a, region: eu-west-1}}\nlocalEtcd:\n  endpoints: [{}]\nclustersDir: {}\nlisten: {admin}\n",
            local.endpoint(),
            clusters.display()
        ),
    )
    .map_err(BenchError::io(&config))?;
    let mut mesh = Process::new(
        "mesh",
        binary,
        vec![
            "mesh".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        dir.join("mesh.log"),
        admin,
    );
    mesh.start()?;
    tokio::task::block_in_place(|| mesh.wait_ready(Duration::from_secs(30)))?;
    Ok(mesh)
}
