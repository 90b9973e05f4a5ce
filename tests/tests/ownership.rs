//! Who owns the cache's keys: every key sits on a live lease of the writer that last took
//! the cache over, whatever an earlier writer left, so nothing vanishes when old leases run
//! out; a key keeps its lease across updates; empty leases are revoked; a writer that lost
//! the leader lock cannot write.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use meshfilter_etcd::EtcdConfig;
use meshfilter_filter_runtime::Locality;
use meshfilter_sync::{
    LeaderLock, SyncError, SyncMetrics, TargetKeys, TargetWriter, WriteOp, WriterConfig,
};
use meshfilter_tests::cilium_data::{
    SourceCluster, list, list_leases, put_all, revoke_leases_except,
};
use meshfilter_tests::etcd::EtcdServer;
use meshfilter_tests::{cfp_scope_runtime, eventually, spawn_remote};
use tokio_util::sync::CancellationToken;

fn writer(
    client: &etcd_client::Client,
    config: WriterConfig,
    cancel: &CancellationToken,
) -> std::sync::Arc<TargetWriter> {
    TargetWriter::new(
        client.clone(),
        "local",
        config,
        None,
        SyncMetrics::default(),
        cancel.clone(),
    )
}

/// What kill -9 and a restart do to a mirror: the first writer stops renewing (its leases
/// live on until their TTL), a second one takes over. Before any old lease runs out, every
/// key must be on the second writer's leases; revoking the old ones must delete nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_mirror_takes_every_key_onto_its_own_leases() {
    let local_etcd = EtcdServer::start("local");
    let remote_etcd = EtcdServer::start("remote");
    let c = SourceCluster::new("remote", 6, "eu-west-1", "eu-west-1a");
    let remote = etcd_client::Client::connect([remote_etcd.endpoint()], None)
        .await
        .unwrap();
    let mut kvs = vec![c.config_kv(), c.node_kv(0), c.identity_kv(0, "web", "shop")];
    kvs.extend((0..40).map(|i| c.endpoint_kv(0, i, 0, None)));
    kvs.extend(c.synced_kvs());
    put_all(&remote, kvs).await;
    let local = etcd_client::Client::connect([local_etcd.endpoint()], None)
        .await
        .unwrap();
    let runtime = cfp_scope_runtime(Locality::cluster("local"));

    let first = CancellationToken::new();
    let w1 = writer(&local, WriterConfig::default(), &first);
    let (h1, t1) = spawn_remote(
        "remote",
        EtcdConfig::plain([remote_etcd.endpoint()]),
        w1.clone(),
        runtime.clone(),
        &first,
    );
    eventually("first mirror synced", async || {
        h1.snapshot().synced.then_some(()).ok_or("not yet".into())
    })
    .await;
    let before: BTreeMap<String, String> = list(&local, "cilium/").await.into_iter().collect();
    assert!(before.len() > 40, "{before:?}");
    // The first writer dies: nothing renews or revokes its leases any more.
    first.cancel();
    let _ = t1.await;

    let second = CancellationToken::new();
    let w2 = writer(&local, WriterConfig::default(), &second);
    let (h2, _t2) = spawn_remote(
        "remote",
        EtcdConfig::plain([remote_etcd.endpoint()]),
        w2.clone(),
        runtime,
        &second,
    );
    eventually("every key on the second writer's leases", async || {
        if !h2.snapshot().synced {
            return Err("not synced".into());
        }
        let own = w2.live_leases();
        let foreign: Vec<(String, i64)> = list_leases(&local, "cilium/")
            .await
            .into_iter()
            .filter(|(_, lease)| !own.contains(lease))
            .collect();
        if foreign.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} keys on other leases: {foreign:?}",
                foreign.len()
            ))
        }
    })
    .await;
    // The old leases run out (here: revoked, which is what etcd does at their TTL).
    let own: Vec<i64> = w2.live_leases().into_iter().collect();
    assert!(revoke_leases_except(&local, &own).await >= 1);
    let after: BTreeMap<String, String> = list(&local, "cilium/").await.into_iter().collect();
    let keys = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&after),
        keys(&before),
        "nothing vanished with the old leases"
    );
    for (key, value) in &before {
        if !key.starts_with("cilium/synced/") {
            assert_eq!(after.get(key), Some(value), "{key}");
        }
    }
    second.cancel();
}

/// A key updated many times stays on its lease, and so does the lease's key count; empty
/// leases are revoked; capacity freed by deletes is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_kept_reused_and_revoked_when_empty() {
    let etcd = EtcdServer::start("leases");
    let client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let w = writer(
        &client,
        WriterConfig {
            lease_ttl: Duration::from_secs(3),
            max_keys_per_lease: 10,
            ..WriterConfig::default()
        },
        &cancel,
    );
    let mut keys = TargetKeys::new(w.clone(), "t/");
    keys.adopt().await.unwrap();
    let desired = |n: usize, version: usize| -> HashMap<String, Bytes> {
        (0..n)
            .map(|i| (format!("t/{i:02}"), Bytes::from(format!("v{version}"))))
            .collect()
    };
    keys.converge_all(&desired(25, 0)).await.unwrap();
    let leases_of =
        |kvs: Vec<(String, i64)>| -> BTreeMap<String, i64> { kvs.into_iter().collect() };
    let first = leases_of(list_leases(&client, "t/").await);
    let distinct: std::collections::BTreeSet<i64> = first.values().copied().collect();
    assert_eq!(distinct.len(), 3, "25 keys, at most 10 per lease");

    // Updates keep every key on its lease.
    for version in 1..20 {
        keys.converge_all(&desired(25, version)).await.unwrap();
    }
    assert_eq!(leases_of(list_leases(&client, "t/").await), first);
    assert_eq!(w.live_leases().len(), 3, "updates granted no lease");

    // Delete 20 keys: the leases left empty are revoked (checked with etcd first).
    keys.converge_all(&desired(5, 20)).await.unwrap();
    eventually("empty leases revoked", async || {
        let alive: Vec<i64> = client
            .lease_client()
            .leases()
            .await
            .map_err(|e| e.to_string())?
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        let used: std::collections::BTreeSet<i64> = leases_of(list_leases(&client, "t/").await)
            .values()
            .copied()
            .collect();
        if alive.iter().all(|l| used.contains(l)) && alive.len() == used.len() {
            Ok(())
        } else {
            Err(format!("alive {alive:?}, used {used:?}"))
        }
    })
    .await;
    // Room freed by deletes is used before a new lease is granted.
    let before = w.live_leases();
    keys.converge_all(&desired(9, 21)).await.unwrap();
    assert!(
        w.live_leases().is_subset(&before),
        "4 more keys fit where 20 were deleted: {:?} then {:?}",
        before,
        w.live_leases()
    );
    cancel.cancel();
}

/// A replica that lost the leader lock (its lease ran out while it was paused) cannot
/// write: the write is refused by the fence, nothing lands, and `fenced()` fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_lost_the_lock_cannot_write() {
    let etcd = EtcdServer::start("fence");
    let client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let lock = LeaderLock::acquire(&client, "test-lock", Duration::from_secs(5), &cancel)
        .await
        .unwrap()
        .expect("the lock is free");
    let w = TargetWriter::new(
        client.clone(),
        "local",
        WriterConfig::default(),
        Some(lock.fence()),
        SyncMetrics::default(),
        cancel.clone(),
    );
    w.apply(&[WriteOp::put("k/before", "1")]).await.unwrap();
    assert_eq!(list(&client, "k/").await.len(), 1);

    // The lock's lease runs out (revoked here); another replica may hold the lock now.
    let fence = lock.fence();
    client.lease_client().revoke(fence.lease).await.unwrap();
    let refused = w.apply(&[WriteOp::put("k/after", "2")]).await;
    assert!(
        matches!(refused, Err(SyncError::Fenced { .. })),
        "{refused:?}"
    );
    assert!(w.fenced().is_cancelled());
    assert_eq!(
        list(&client, "k/").await,
        [("k/before".to_string(), "1".to_string())],
        "nothing written after the lock was lost"
    );
    let created = w.create("k/created", Bytes::from("3")).await;
    assert!(
        matches!(created, Err(SyncError::Fenced { .. })),
        "{created:?}"
    );
    cancel.cancel();
}
