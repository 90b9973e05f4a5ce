//! The on-demand resolve API against real etcd: a filtered-out endpoint is installed on
//! request and removed when its pin expires unused; concurrent requests share one fetch;
//! a flood of unknown addresses is bounded by the negative cache and the rate limit.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use meshfilter_api::ResolveError;
use meshfilter_cilium::ClusterName;
use meshfilter_etcd::EtcdConfig;
use meshfilter_filter_runtime::Locality;
use meshfilter_sync::{Resolver, ResolverConfig, SyncMetrics};
use meshfilter_tests::cilium_data::{SourceCluster, list, put_all};
use meshfilter_tests::etcd::EtcdServer;
use meshfilter_tests::{cfp_scope_runtime, spawn_remote, writer_into};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_on_demand_dedups_and_bounds_floods() {
    let local_etcd = EtcdServer::start("local");
    let remote_etcd = EtcdServer::start("remote");
    let c = SourceCluster::new("remote", 8, "us-east-1", "us-east-1a");
    let remote = etcd_client::Client::connect([remote_etcd.endpoint()], None)
        .await
        .unwrap();
    put_all(&remote, c.one_pod(Some("regional"))).await;
    let rt = cfp_scope_runtime(Locality {
        cluster: "local".into(),
        zone: None,
        region: Some("eu-west-1".into()),
    });
    let cancel = CancellationToken::new();
    let (local, writer) = writer_into(&local_etcd, "local", &cancel).await;
    let (handle, task) = spawn_remote(
        "remote",
        EtcdConfig::plain([remote_etcd.endpoint()]),
        writer.clone(),
        rt,
        &cancel,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !handle.snapshot().synced {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let key = format!("cilium/cache/ip/v1/remote/{}", c.pod_ip(0, 0));
    assert!(
        list(&local, &key).await.is_empty(),
        "regional endpoint of another region is filtered out"
    );

    let h = handle.clone();
    let resolver = Resolver::new(
        Arc::new(move || vec![(ClusterName::new("remote").unwrap(), h.clone())]),
        writer.clone(),
        ResolverConfig {
            pin_ttl: Duration::from_millis(800),
            negative_ttl: Duration::from_secs(30),
            per_second: 50,
            per_client_per_second: 1_000_000,
            ..ResolverConfig::default()
        },
        SyncMetrics::default(),
    );
    // Ten concurrent requests for the same address: one fetch.
    let ip: IpAddr = c.pod_ip(0, 0).parse().unwrap();
    let answers = futures_join(&resolver, ip, 10).await;
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().is_ok_and(|r| r.cluster == "remote")),
        "{answers:?}"
    );
    assert_eq!(
        resolver.stats().remote_reads.load(Ordering::Relaxed),
        1,
        "one fetch for ten requests"
    );
    assert!(
        !list(&local, &key).await.is_empty(),
        "installed in the local cache"
    );

    // Unused, the pin expires and the filtered entry leaves the cache again.
    tokio::time::sleep(Duration::from_millis(900)).await;
    resolver.expire();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !list(&local, &key).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the pin expired but the entry stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A flood of 2,000 unknown addresses, each asked twice: remote reads stay bounded.
    let before = resolver.stats().remote_reads.load(Ordering::Relaxed);
    let flood_started = Instant::now();
    let mut not_found = 0;
    let mut limited = 0;
    for round in 0..2 {
        for i in 0..2000u32 {
            let ip: IpAddr = format!("10.200.{}.{}", i / 250, i % 250).parse().unwrap();
            match resolver.resolve(ip, None).await {
                Err(ResolveError::NotFound { .. }) => not_found += 1,
                Err(ResolveError::RateLimited) => limited += 1,
                Err(ResolveError::NegativeCached { .. }) => assert_eq!(round, 1),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let reads = resolver.stats().remote_reads.load(Ordering::Relaxed) - before;
    assert_eq!(
        reads as usize, not_found,
        "every remote read was a distinct first miss"
    );
    // A full bucket (50) plus 50 per second of flood, whatever the machine's speed.
    let bound = 50 + (50.0 * flood_started.elapsed().as_secs_f64()).ceil() as u64 + 1;
    assert!(
        reads <= bound,
        "the rate limit bounds remote reads: {reads} > {bound}"
    );
    assert!(limited > 0 && resolver.stats().negative_hits.load(Ordering::Relaxed) > 0);
    eprintln!(
        "flood of 4,000 lookups: {reads} remote reads, {limited} rate-limited, {not_found} not found"
    );

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

async fn futures_join(
    resolver: &Arc<Resolver>,
    ip: IpAddr,
    n: usize,
) -> Vec<Result<meshfilter_api::Resolved, ResolveError>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let r = resolver.clone();
        tasks.push(tokio::spawn(async move { r.resolve(ip, None).await }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Resolving an address the mirror already holds changes nothing: the key keeps its value
/// and the mirror's lease (a resolve must never move a key onto a pin-length lease that
/// would delete it when the pin ends). An entry the mirror would refuse is not written.
/// One client over its rate cannot starve another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_never_takes_a_key_from_the_mirror_and_writes_only_valid_entries() {
    use meshfilter_tests::cilium_data::list_leases;

    let local_etcd = EtcdServer::start("local");
    let remote_etcd = EtcdServer::start("remote");
    let c = SourceCluster::new("remote", 8, "eu-west-1", "eu-west-1a");
    let remote = etcd_client::Client::connect([remote_etcd.endpoint()], None)
        .await
        .unwrap();
    let mut kvs = c.one_pod(Some("global"));
    // An entry whose identity belongs to cluster 9, not 8: agents would drop it.
    let mut foreign = c.endpoint_kv(0, 1, 0, Some("regional"));
    foreign.1 = foreign
        .1
        .replace(&c.identity(0).to_string(), &((9 << 16) + 256).to_string());
    kvs.push(foreign);
    put_all(&remote, kvs).await;
    let rt = cfp_scope_runtime(Locality {
        cluster: "local".into(),
        zone: None,
        region: Some("us-east-1".into()),
    });
    let cancel = CancellationToken::new();
    let (local, writer) = writer_into(&local_etcd, "local", &cancel).await;
    let (handle, _task) = spawn_remote(
        "remote",
        EtcdConfig::plain([remote_etcd.endpoint()]),
        writer.clone(),
        rt,
        &cancel,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !handle.snapshot().synced {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kept = format!("cilium/cache/ip/v1/remote/{}", c.pod_ip(0, 0));
    let before = list_leases(&local, &kept).await;
    assert_eq!(before.len(), 1, "the global endpoint is mirrored");

    let h = handle.clone();
    let resolver = Resolver::new(
        Arc::new(move || vec![(ClusterName::new("remote").unwrap(), h.clone())]),
        writer.clone(),
        ResolverConfig {
            pin_ttl: Duration::from_secs(300),
            per_client_per_second: 3,
            ..ResolverConfig::default()
        },
        SyncMetrics::default(),
    );
    let ip: IpAddr = c.pod_ip(0, 0).parse().unwrap();
    let client_a: IpAddr = "192.0.2.1".parse().unwrap();
    resolver.resolve(ip, Some(client_a)).await.unwrap();
    assert_eq!(
        list_leases(&local, &kept).await,
        before,
        "the mirrored key keeps its lease"
    );
    assert!(writer.live_leases().contains(&before[0].1));

    // The entry with another cluster's identity is refused, and nothing is written.
    let bad: IpAddr = c.pod_ip(0, 1).parse().unwrap();
    let refused = resolver.resolve(bad, Some(client_a)).await;
    assert!(
        matches!(refused, Err(ResolveError::Invalid { .. })),
        "{refused:?}"
    );
    assert!(
        list(&local, &format!("cilium/cache/ip/v1/remote/{bad}"))
            .await
            .is_empty()
    );

    // Client A is over its 3 requests per second; client B is not.
    let over = resolver.resolve(ip, Some(client_a)).await;
    let over_again = resolver.resolve(ip, Some(client_a)).await;
    assert!(
        [&over, &over_again]
            .iter()
            .any(|r| matches!(r, Err(ResolveError::RateLimited))),
        "{over:?} {over_again:?}"
    );
    let client_b: IpAddr = "192.0.2.2".parse().unwrap();
    assert!(resolver.resolve(ip, Some(client_b)).await.is_ok());
    assert!(resolver.stats().client_rate_limited.load(Ordering::Relaxed) >= 1);
    cancel.cancel();
}
