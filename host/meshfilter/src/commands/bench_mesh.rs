//! `meshfilter bench mesh`: bootstrap of one `meshfilter mesh` process against many
//! remote clusters, on real etcd.
//!
//! Like Cilium's `cmapisrv-mock`, one etcd serves every remote cluster in the cached
//! layout (`cilium/cache/.../<cluster>/...` plus a config with `cached: true`), so 100
//! clusters do not need 100 etcd processes. The run measures, in order: the raw rate of
//! 128-operation transactions into the local etcd (the ceiling any mirror has), then the
//! time from starting `meshfilter mesh` (as a separate process) until every remote
//! reports synced, and that process's peak RSS.

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use etcd_client::{Client, Txn, TxnOp};
use meshfilter_cilium::ClusterName;
use meshfilter_local_etcd::EtcdServer;

use crate::cli::BenchMeshArgs;

pub fn run(args: &BenchMeshArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn run_async(args: &BenchMeshArgs) -> anyhow::Result<()> {
    let source = EtcdServer::try_start("mock-remotes").map_err(anyhow::Error::msg)?;
    let local = EtcdServer::try_start("local").map_err(anyhow::Error::msg)?;
    let src = Client::connect([source.endpoint()], None).await?;
    let dst = Client::connect([local.endpoint()], None).await?;
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
    .await?;
    let raw_rate = raw_keys as f64 / started.elapsed().as_secs_f64();
    dst.kv_client()
        .delete(
            "bench/raw/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await?;
    println!("raw etcd write rate (128-op transactions, 4 writers): {raw_rate:.0} keys/s");

    // The mock remotes.
    let started = Instant::now();
    let mut total = 0usize;
    for c in 1..=args.remotes as u32 {
        let name = format!("remote-{c:03}");
        let mut kvs = vec![(
            format!("cilium/cluster-config/{name}"),
            super::fixtures::cluster_config(c, true),
        )];
        for n in 0..args.nodes as u32 {
            kvs.push((
                format!("cilium/cache/nodes/v1/{name}/n{n}"),
                node_value(&name, c, n),
            ));
        }
        for id in 0..args.identities as u32 {
            kvs.push((
                format!(
                    "cilium/cache/identities/v1/{name}/id/{}",
                    (c << 16) + 256 + id
                ),
                format!(
                    "k8s:app=svc-{id};k8s:io.kubernetes.pod.namespace=ns-{};",
                    id % 20
                ),
            ));
        }
        for e in 0..per_cluster as u32 {
            let ip = format!("10.{}.{}.{}", c, e / 250, e % 250 + 1);
            let v = endpoint_value(&ip, (c << 16) + 256 + e % args.identities as u32);
            kvs.push((format!("cilium/cache/ip/v1/{name}/{ip}"), v));
        }
        for kv in ["ip", "identities", "nodes", "services"] {
            kvs.push((
                format!("cilium/synced/{name}/cilium/cache/{kv}/v1"),
                "2026-11-25T00:00:00Z".into(),
            ));
        }
        total += kvs.len();
        write_batched(&src, kvs).await?;
    }
    println!(
        "populated the mock remotes: {total} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // meshfilter mesh as its own process.
    let dir = tempfile::tempdir()?;
    let clusters = dir.path().join("clustermesh");
    std::fs::create_dir(&clusters)?;
    for c in 1..=args.remotes {
        std::fs::write(
            clusters.join(format!("remote-{c:03}")),
            format!("endpoints:\n- {}\n", source.endpoint()),
        )?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.path().join("mesh.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster: {{name: local, zone: z1, region: r1}}\nlocalEtcd:\n  endpoints: [{}]\nclustersDir: {}\nlisten: 127.0.0.1:{port}\n",
            local.endpoint(),
            clusters.display()
        ),
    )?;
    let started = Instant::now();
    let mut mesh = Command::new(std::env::current_exe()?)
        .args(["mesh", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting meshfilter mesh")?;
    let pid = mesh.id();
    let url = format!("http://127.0.0.1:{port}/status");
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let synced_after = loop {
        if let Ok(resp) = ureq::get(&url).timeout(Duration::from_secs(5)).call() {
            let status: serde_json::Value = serde_json::from_str(&resp.into_string()?)?;
            let remotes = status["remotes"].as_array().cloned().unwrap_or_default();
            if remotes.len() == args.remotes && remotes.iter().all(|r| r["synced"] == true) {
                break started.elapsed();
            }
        }
        if Instant::now() > deadline {
            let _ = mesh.kill();
            bail!(
                "meshfilter mesh did not sync {} remotes within {} s",
                args.remotes,
                args.timeout_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let peak_rss = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        .unwrap_or_default();
    let cached = dst
        .kv_client()
        .get(
            "cilium/cache/ip/v1/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await?
        .count();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = mesh.wait();
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
    super::fixtures::endpoint(
        ip.parse().expect("a generated IP"),
        "172.16.0.1".parse().expect("an IP"),
        id,
        "ns",
        "pod",
        Some("global"),
    )
}

fn node_value(cluster: &str, id: u32, n: u32) -> String {
    let ip = format!("172.{}.{}.{}", 16 + id / 256, id % 256, n + 1);
    super::fixtures::node(
        &ClusterName::new(cluster).expect("a generated cluster name"),
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

/// Writes `kvs` in 128-operation transactions from four concurrent writers.
pub(super) async fn write_batched(
    client: &Client,
    kvs: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    let kvs: Vec<(String, String)> = kvs.into_iter().collect();
    let chunks: Vec<Vec<(String, String)>> = kvs.chunks(128).map(|c| c.to_vec()).collect();
    let mut lanes: Vec<Vec<Vec<(String, String)>>> = vec![Vec::new(); 4];
    for (i, c) in chunks.into_iter().enumerate() {
        lanes[i % 4].push(c);
    }
    let mut tasks = Vec::new();
    for lane in lanes {
        let mut kv = client.kv_client();
        tasks.push(tokio::spawn(async move {
            for chunk in lane {
                let ops: Vec<TxnOp> = chunk
                    .into_iter()
                    .map(|(k, v)| TxnOp::put(k, v, None))
                    .collect();
                kv.txn(Txn::new().and_then(ops)).await?;
            }
            Ok::<_, etcd_client::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
