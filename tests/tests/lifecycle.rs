//! Cilium's lifecycle guarantees, on real etcd: a remote etcd that comes back empty and
//! refills is not listed before its canary (nothing is deleted meanwhile); the cached
//! cluster config is enforced (edits reverted, deletes and lost leases repaired,
//! periodically rewritten); what a remote sends beyond the bounds is refused and counted.

use std::collections::BTreeMap;
use std::time::Duration;

use meshfilter_cilium::ClusterName;
use meshfilter_cilium::Resource;
use meshfilter_etcd::EtcdConfig;
use meshfilter_filter_runtime::Locality;
use meshfilter_sync::{ReflectorLimits, RemoteCluster, RemoteOptions, SyncMetrics};
use meshfilter_tests::cilium_data::{SourceCluster, list, list_leases, put_all};
use meshfilter_tests::etcd::EtcdServer;
use meshfilter_tests::{cfp_scope_runtime, eventually, fast_remote, spawn_remote, writer_into};
use tokio_util::sync::CancellationToken;

fn pods(local: &[(String, String)], c: &SourceCluster) -> Vec<String> {
    let prefix = format!("cilium/cache/ip/v1/{}/", c.name);
    local
        .iter()
        .filter_map(|(k, _)| k.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

/// A clustermesh-apiserver pod with an ephemeral etcd is replaced: the new etcd (new etcd
/// cluster ID) starts empty and refills. Until its canaries exist, the cache keeps every
/// entry it had; once they do, the cache follows the new content exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refilling_remote_is_not_mistaken_for_an_empty_one() {
    let local_etcd = EtcdServer::start("local");
    let mut remote_etcd = EtcdServer::start("remote");
    let c = SourceCluster::new("remote", 4, "eu-west-1", "eu-west-1a");
    let remote = etcd_client::Client::connect([remote_etcd.endpoint()], None)
        .await
        .unwrap();
    let mut kvs = vec![c.config_kv(), c.node_kv(0), c.identity_kv(0, "web", "shop")];
    kvs.extend((0..10).map(|i| c.endpoint_kv(0, i, 0, None)));
    kvs.extend(c.synced_kvs());
    put_all(&remote, kvs).await;
    let cancel = CancellationToken::new();
    let (local, writer) = writer_into(&local_etcd, "local", &cancel).await;
    let rt = cfp_scope_runtime(Locality::cluster("local"));
    let (handle, _task) = spawn_remote(
        "remote",
        EtcdConfig::plain([remote_etcd.endpoint()]),
        writer,
        rt,
        &cancel,
    );
    eventually("synced", async || {
        handle
            .snapshot()
            .synced
            .then_some(())
            .ok_or("not yet".into())
    })
    .await;
    let full = pods(&list(&local, "cilium/cache/").await, &c);
    assert_eq!(full.len(), 10);

    // Replaced: empty, then half refilled, no canary yet.
    remote_etcd.replace_with_fresh();
    let remote = etcd_client::Client::connect([remote_etcd.endpoint()], None)
        .await
        .unwrap();
    let mut kvs = vec![c.config_kv(), c.node_kv(0), c.identity_kv(0, "web", "shop")];
    kvs.extend((0..3).map(|i| c.endpoint_kv(0, i, 0, None)));
    put_all(&remote, kvs).await;
    eventually(
        "the reflector waits for the new etcd's canary",
        async || {
            let waiting = handle
                .snapshot()
                .resources
                .get("endpoints")
                .and_then(|r| r.waiting_for.clone());
            waiting.map(|_| ()).ok_or("not waiting".into())
        },
    )
    .await;
    assert_eq!(
        pods(&list(&local, "cilium/cache/").await, &c),
        full,
        "nothing deleted while the remote refills"
    );

    // Refilled with a different content, then the canaries: the cache follows.
    put_all(&remote, (5..12).map(|i| c.endpoint_kv(0, i, 0, None))).await;
    put_all(&remote, c.synced_kvs()).await;
    let want: Vec<String> = (0..3)
        .chain(5..12)
        .map(|i| c.pod_ip(0, i))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    eventually("the cache follows the refilled remote", async || {
        let got = pods(&list(&local, "cilium/cache/").await, &c);
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    cancel.cancel();
}

/// The cached cluster config: written at start, reverted when edited, recreated when
/// deleted, rewritten when its lease is lost, and rewritten periodically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cached_cluster_config_is_enforced() {
    let local_etcd = EtcdServer::start("local");
    let remote_etcd = EtcdServer::start("remote");
    let c = SourceCluster::new("remote", 4, "eu-west-1", "eu-west-1a");
    let remote = etcd_client::Client::connect([remote_etcd.endpoint()], None)
        .await
        .unwrap();
    put_all(&remote, c.one_pod(None)).await;
    let cancel = CancellationToken::new();
    let (local, writer) = writer_into(&local_etcd, "local", &cancel).await;
    let metrics = SyncMetrics::default();
    let remote_cluster = RemoteCluster::new(
        ClusterName::new("remote").unwrap(),
        EtcdConfig::plain([remote_etcd.endpoint()]),
        writer.clone(),
        cfp_scope_runtime(Locality::cluster("local")),
        RemoteOptions {
            config_enforce_period: Duration::from_secs(1),
            ..fast_remote()
        },
        metrics,
    );
    let handle = remote_cluster.status_handle();
    let _task = tokio::spawn(remote_cluster.run(cancel.clone()));
    let key = "cilium/cluster-config/remote";
    // Written as kvstoremesh writes it: the remote's config with syncedCanaries and cached.
    let want = r#"{"id":4,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":255}}"#;
    let value = async || list(&local, key).await.first().map(|(_, v)| v.clone());
    eventually("written", async || {
        (value().await.as_deref() == Some(want))
            .then_some(())
            .ok_or("not yet".into())
    })
    .await;

    let mut kv = local.kv_client();
    kv.put(key, r#"{"id":99}"#, None).await.unwrap();
    eventually("an edit is reverted", async || {
        (value().await.as_deref() == Some(want))
            .then_some(())
            .ok_or(format!("{:?}", value().await))
    })
    .await;
    kv.delete(key, None).await.unwrap();
    eventually("a delete is repaired", async || {
        (value().await.as_deref() == Some(want))
            .then_some(())
            .ok_or(format!("{:?}", value().await))
    })
    .await;
    let lease = list_leases(&local, key).await[0].1;
    assert!(writer.live_leases().contains(&lease), "on our lease");
    local.lease_client().revoke(lease).await.unwrap();
    eventually("rewritten after its lease was lost", async || {
        (value().await.as_deref() == Some(want))
            .then_some(())
            .ok_or(format!("{:?}", value().await))
    })
    .await;
    let enforced = handle.snapshot().config_enforced;
    eventually("enforced periodically", async || {
        (handle.snapshot().config_enforced >= enforced + 2)
            .then_some(())
            .ok_or(format!("{}", handle.snapshot().config_enforced))
    })
    .await;
    cancel.cancel();
}

/// A remote that sends more than the bounds allow (too many endpoints, an oversized
/// value) gets the excess refused: never written, counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_exceeds_the_bounds_is_refused_and_counted() {
    let local_etcd = EtcdServer::start("local");
    let remote_etcd = EtcdServer::start("remote");
    let c = SourceCluster::new("remote", 4, "eu-west-1", "eu-west-1a");
    let remote = etcd_client::Client::connect([remote_etcd.endpoint()], None)
        .await
        .unwrap();
    let mut kvs = vec![c.config_kv(), c.node_kv(0), c.identity_kv(0, "web", "shop")];
    kvs.extend((0..8).map(|i| c.endpoint_kv(0, i, 0, None)));
    // An identity whose labels are 10 KB: over the 4 KiB bound set below.
    kvs.push((
        format!("cilium/state/identities/v1/id/{}", c.identity(1)),
        format!("k8s:app={};", "x".repeat(10_000)),
    ));
    kvs.extend(c.synced_kvs());
    put_all(&remote, kvs).await;
    let cancel = CancellationToken::new();
    let (local, writer) = writer_into(&local_etcd, "local", &cancel).await;
    let limits = BTreeMap::from([
        (
            Resource::Endpoints,
            ReflectorLimits {
                max_entries: 5,
                max_value_bytes: 4096,
            },
        ),
        (
            Resource::Identities,
            ReflectorLimits {
                max_entries: 100,
                max_value_bytes: 4096,
            },
        ),
    ]);
    let remote_cluster = RemoteCluster::new(
        ClusterName::new("remote").unwrap(),
        EtcdConfig::plain([remote_etcd.endpoint()]),
        writer,
        cfp_scope_runtime(Locality::cluster("local")),
        RemoteOptions {
            limits,
            ..fast_remote()
        },
        SyncMetrics::default(),
    );
    let handle = remote_cluster.status_handle();
    let _task = tokio::spawn(remote_cluster.run(cancel.clone()));
    eventually("synced", async || {
        handle
            .snapshot()
            .synced
            .then_some(())
            .ok_or("not yet".into())
    })
    .await;
    let status = handle.snapshot();
    assert_eq!(pods(&list(&local, "cilium/cache/").await, &c).len(), 5);
    assert_eq!(
        status.resources["endpoints"].refused.get("over-cap"),
        Some(&3)
    );
    assert_eq!(
        status.resources["identities"].refused.get("too-large"),
        Some(&1)
    );
    assert_eq!(
        list(&local, "cilium/cache/identities/v1/remote/")
            .await
            .len(),
        1,
        "the oversized identity is not mirrored"
    );
    cancel.cancel();
}
