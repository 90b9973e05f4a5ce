//! `meshfilter bench mesh`: bootstrap of one `meshfilter mesh` process against many
//! remote clusters, on real etcd.
//!
//! Like Cilium's `cmapisrv-mock`, one etcd serves every remote cluster in the cached
//! layout (`cilium/cache/.../<cluster>/...` plus a config with `cached: true`), so 100
//! clusters do not need 100 etcd processes. The run measures, in order: the raw rate of
//! 128-operation transactions into the local etcd (the ceiling any mirror has), then the
//! time from starting `meshfilter mesh` (as a separate process) until every remote
//! reports synced, and that process's peak RSS.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use meshfilter_cilium::keys::cluster_config_key;
use meshfilter_cilium::{ClusterName, Resource};
use meshfilter_local_etcd::EtcdServer;

use crate::error::BenchError;
use crate::fixtures::{self, write_batched};
use crate::process::Process;

/// What `meshfilter bench mesh` runs.
#[derive(Debug, Clone)]
pub struct MeshBenchOptions {
    /// The meshfilter binary to run as `meshfilter mesh`.
    pub binary: PathBuf,
    /// Remote clusters.
    pub remotes: usize,
    /// Endpoints per remote cluster.
    pub endpoints: usize,
    /// Fraction of each cluster's endpoints it exports (0..=1).
    pub opted_in: f64,
    /// Identities per remote cluster.
    pub identities: usize,
    /// Nodes per remote cluster.
    pub nodes: usize,
    /// How long the mesh may take to sync every remote.
    pub timeout: Duration,
}

/// Runs the benchmark, printing each figure as it is measured.
pub fn run(options: &MeshBenchOptions) -> Result<(), BenchError> {
    crate::runtime()?.block_on(run_async(options))
}

async fn run_async(args: &MeshBenchOptions) -> Result<(), BenchError> {
    let source =
        EtcdServer::try_start("mock-remotes").map_err(BenchError::fixture("etcd mock-remotes"))?;
    let local = EtcdServer::try_start("local").map_err(BenchError::fixture("etcd local"))?;
    let src = Client::connect([source.endpoint()], None)
        .await
        .map_err(BenchError::etcd_client("mock-remotes"))?;
    let dst = Client::connect([local.endpoint()], None)
        .await
        .map_err(BenchError::etcd_client("local"))?;
    let per_cluster = ((args.endpoints as f64) * args.opted_in).round() as usize;
    println!(
        "{} remote clusters x {} endpoints, {} of them exported each ({:.0}%); etcd data under {} \
         (MESHFILTER_ETCD_DATA_ROOT to change)",
        args.remotes,
        args.endpoints,
        per_cluster,
        args.opted_in * 100.0,
        meshfilter_local_etcd::data_root().display()
    );

    // Raw batched write rate into the local etcd, measured first, then cleared.
    let raw_keys = 50_000usize;
    let value = endpoint_value("10.0.0.1", 65_792);
    let started = Instant::now();
    write_batched(
        &dst,
        (0..raw_keys).map(|i| (format!("bench/raw/{i}"), value.clone())),
    )
    .await
    .map_err(BenchError::etcd_client("local"))?;
    let raw_rate = raw_keys as f64 / started.elapsed().as_secs_f64();
    dst.kv_client()
        .delete(
            "bench/raw/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .map_err(BenchError::etcd_client("local"))?;
    println!("raw etcd write rate (128-op transactions, 4 writers): {raw_rate:.0} keys/s");

    // The mock remotes.
    let started = Instant::now();
    let mut total = 0usize;
    for c in 1..=args.remotes as u32 {
        let name = ClusterName::new(format!("remote-{c:03}")).map_err(BenchError::cilium)?;
        let mut kvs = vec![(cluster_config_key(&name), fixtures::cluster_config(c, true))];
        for n in 0..args.nodes as u32 {
            let node = format!("n{n}");
            kvs.push((
                Resource::Nodes.cache_key(&name, &node),
                node_value(&name, c, n),
            ));
        }
        for id in 0..args.identities as u32 {
            kvs.push((
                Resource::Identities.cache_key(&name, &((c << 16) + 256 + id).to_string()),
                format!(
                    "k8s:app=svc-{id};k8s:io.kubernetes.pod.namespace=ns-{};",
                    id % 20
                ),
            ));
        }
        for e in 0..per_cluster as u32 {
            let ip = format!("10.{}.{}.{}", c, e / 250, e % 250 + 1);
            let v = endpoint_value(&ip, (c << 16) + 256 + e % args.identities as u32);
            kvs.push((Resource::Endpoints.cache_key(&name, &ip), v));
        }
        kvs.extend(fixtures::canaries(&name, true));
        total += kvs.len();
        write_batched(&src, kvs)
            .await
            .map_err(BenchError::etcd_client("mock-remotes"))?;
    }
    println!(
        "populated the mock remotes: {total} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // meshfilter mesh as its own process.
    let dir = tempfile::tempdir()
        .map_err(|e| BenchError::fixture("a temporary directory")(e.to_string()))?;
    let clusters = dir.path().join("clustermesh");
    std::fs::create_dir(&clusters).map_err(BenchError::io(&clusters))?;
    for c in 1..=args.remotes {
        let path = clusters.join(format!("remote-{c:03}"));
        std::fs::write(&path, format!("endpoints:\n- {}\n", source.endpoint()))
            .map_err(BenchError::io(&path))?;
    }
    let admin = format!("127.0.0.1:{}", meshfilter_local_etcd::free_port());
    let config = dir.path().join("mesh.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster: {{name: local, zone: z1, region: r1}}\nlocalEtcd:\n  endpoints: [{}]\nclustersDir: {}\nlisten: {admin}\n",
            local.endpoint(),
            clusters.display()
        ),
    )
    .map_err(BenchError::io(&config))?;
    let mut mesh = Process::new(
        "mesh",
        &args.binary,
        vec![
            "mesh".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        dir.path().join("mesh.log"),
        admin,
    );
    let started = Instant::now();
    mesh.start()?;
    let deadline = Instant::now() + args.timeout;
    let synced_after = loop {
        if let Some(status) = tokio::task::block_in_place(|| mesh.mesh_status())
            && status.remotes.len() == args.remotes
            && status.remotes.iter().all(|r| r.synced)
        {
            break started.elapsed();
        }
        if let Some(status) = mesh.exited() {
            return Err(BenchError::Incomplete(format!(
                "meshfilter mesh exited ({status}) before it synced; see {}",
                dir.path().join("mesh.log").display()
            )));
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout {
                what: format!(
                    "meshfilter mesh to sync {} remotes within {} s",
                    args.remotes,
                    args.timeout.as_secs()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let peak_rss = mesh
        .pid()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cached = dst
        .kv_client()
        .get(
            Resource::Endpoints.cache_root(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .map_err(BenchError::etcd_client("local"))?
        .count();
    mesh.terminate();
    let stop_deadline = Instant::now() + Duration::from_secs(10);
    while mesh.exited().is_none() && Instant::now() < stop_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "mesh bootstrap: {} remotes synced in {:.2} s; {cached} endpoint entries cached ({:.0} entries/s); peak RSS {peak_rss}",
        args.remotes,
        synced_after.as_secs_f64(),
        cached as f64 / synced_after.as_secs_f64()
    );
    Ok(())
}

/// An endpoint on the remote's first node, exported globally.
fn endpoint_value(ip: &str, id: u32) -> String {
    fixtures::endpoint(
        ip.parse().expect("a generated IP"),
        "172.16.0.1".parse().expect("an IP"),
        id,
        "ns",
        "pod",
        Some("global"),
    )
}

fn node_value(cluster: &ClusterName, id: u32, n: u32) -> String {
    let ip = format!("172.{}.{}.{}", 16 + id / 256, id % 256, n + 1);
    fixtures::node(
        cluster,
        id,
        &format!("n{n}"),
        ip.parse().expect("a generated IP"),
        &[
            ("topology.kubernetes.io/region", "r1"),
            ("topology.kubernetes.io/zone", "z1"),
        ],
        None,
    )
}
