//! Faults against real etcd: compactions during an active watch, a partition cut through a
//! TCP proxy and healed, a compaction while disconnected, kill -9 and restart of the remote
//! etcd, and a local etcd restart.
//! Nothing is lost, nothing stale stays, and the mirror keeps running throughout.

use std::time::{Duration, Instant};

use meshfilter_etcd::EtcdConfig;
use meshfilter_filter_runtime::Locality;
use meshfilter_tests::cilium_data::{SourceCluster, list, put_all};
use meshfilter_tests::etcd::EtcdServer;
use meshfilter_tests::proxy::TcpProxy;
use meshfilter_tests::{cfp_scope_runtime, spawn_remote, writer_into};
use tokio_util::sync::CancellationToken;

async fn cached_pods(local: &etcd_client::Client, c: &SourceCluster) -> Vec<String> {
    list(local, &format!("cilium/cache/ip/v1/{}/", c.name))
        .await
        .into_iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap().to_string())
        .collect()
}

async fn wait_pods(local: &etcd_client::Client, c: &SourceCluster, pods: &[u32], what: &str) {
    let mut want: Vec<String> = pods.iter().map(|i| c.pod_ip(0, *i)).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = cached_pods(local, c).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: cache holds {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Compacts the remote's history up to its current revision.
async fn compact_to_head(remote: &etcd_client::Client) {
    let head = remote.kv_client().get("cilium", None).await.unwrap();
    let rev = head.header().unwrap().revision();
    remote.kv_client().compact(rev, None).await.unwrap();
}

/// Deletes pod `i` of node 0 at the source.
async fn delete_pod(remote: &etcd_client::Client, c: &SourceCluster, i: u32) {
    let key = format!("cilium/state/ip/v1/default/{}", c.pod_ip(0, i));
    remote.kv_client().delete(key, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_compaction_and_restarts_converge() {
    let mut local_etcd = EtcdServer::start("local");
    let mut remote_etcd = EtcdServer::start("remote");
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", remote_etcd.client_port()));
    let c = SourceCluster::new("remote", 5, "eu-west-1", "eu-west-1a");
    let remote = etcd_client::Client::connect([remote_etcd.endpoint()], None)
        .await
        .unwrap();
    let mut kvs = vec![c.config_kv(), c.node_kv(0), c.identity_kv(0, "web", "shop")];
    kvs.extend((0..4).map(|i| c.endpoint_kv(0, i, 0, None)));
    kvs.extend(c.synced_kvs());
    put_all(&remote, kvs).await;

    let rt = cfp_scope_runtime(Locality {
        cluster: "local".into(),
        zone: Some("eu-west-1a".into()),
        region: Some("eu-west-1".into()),
    });
    let cancel = CancellationToken::new();
    let (local, writer) = writer_into(&local_etcd, "local", &cancel).await;
    let (handle, task) = spawn_remote(
        "remote",
        EtcdConfig::plain([proxy.endpoint()]),
        writer,
        rt,
        &cancel,
    );
    wait_pods(&local, &c, &[0, 1, 2, 3], "initial sync").await;

    // Compaction during an active watch: churn on one pod while compacting up to the
    // head after every change, no partition. The watch keeps going or is cancelled as
    // compacted and re-lists; either way the cache ends where the source ends.
    for round in 0..20 {
        let scope = if round % 2 == 0 {
            Some("cluster")
        } else {
            None
        };
        put_all(&remote, [c.endpoint_kv(0, 7, 0, scope)]).await;
        compact_to_head(&remote).await;
    }
    wait_pods(&local, &c, &[0, 1, 2, 3, 7], "churn with compactions").await;
    delete_pod(&remote, &c, 7).await;
    wait_pods(&local, &c, &[0, 1, 2, 3], "a delete after the compactions").await;

    // Partition; changes and a compaction happen on the far side; heal.
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    put_all(
        &remote,
        [
            c.endpoint_kv(0, 4, 0, None),
            c.endpoint_kv(0, 1, 0, Some("regional")),
        ],
    )
    .await;
    delete_pod(&remote, &c, 0).await;
    compact_to_head(&remote).await;
    assert_eq!(
        cached_pods(&local, &c).await.len(),
        4,
        "nothing is removed while partitioned"
    );
    proxy.heal();
    wait_pods(&local, &c, &[1, 2, 3, 4], "after the partition healed").await;

    // kill -9 of the remote etcd and a restart on the same data.
    remote_etcd.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    remote_etcd.restart();
    let remote = etcd_client::Client::connect([remote_etcd.endpoint()], None)
        .await
        .unwrap();
    put_all(&remote, [c.endpoint_kv(0, 5, 0, None)]).await;
    delete_pod(&remote, &c, 2).await;
    wait_pods(&local, &c, &[1, 3, 4, 5], "after the remote etcd restarted").await;

    // The local etcd restarts; changes made meanwhile arrive once it is back.
    local_etcd.kill();
    put_all(&remote, [c.endpoint_kv(0, 6, 0, None)]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    local_etcd.restart();
    let local = etcd_client::Client::connect([local_etcd.endpoint()], None)
        .await
        .unwrap();
    wait_pods(
        &local,
        &c,
        &[1, 3, 4, 5, 6],
        "after the local etcd restarted",
    )
    .await;

    let status = handle.snapshot();
    assert!(status.resources["endpoints"].retries > 0, "{status:?}");
    assert!(!task.is_finished(), "the mirror never exits on its own");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops on cancel")
        .unwrap();
}
