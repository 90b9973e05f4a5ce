//! The view following a real local etcd into the real standalone maps: endpoints,
//! nodes and cluster configs in, ipcache and mesh CIDR entries out; and, when another
//! etcd answers (a replaced kvstoremesh etcd, new cluster ID), a fresh list that removes
//! what is gone. Needs root (loads the classifier).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use meshfilter_common::ipcache::WORLD_IPV4_ID;
use meshfilter_etcd::Client;
use meshfilter_local_etcd::EtcdServer;
use meshfilter_node::{Datapath, DatapathConfig, MeshView};
use tokio_util::sync::CancellationToken;

use meshfilter_tests::cache::{delete_endpoint, put_cluster_b, put_endpoint};
use meshfilter_tests::wait_until;

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The identity the standalone ipcache answers for `a` (longest match).
fn identity(dp: &Datapath, a: &str) -> Option<u32> {
    dp.lookup_ipcache(addr(a)).map(|v| v.sec_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_local_cache_and_drops_what_vanished() {
    let mut etcd = EtcdServer::start("node-view");
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    put_cluster_b(
        &mut client,
        &[
            (addr("198.51.100.7"), 131_073),
            (addr("198.51.100.8"), 131_074),
        ],
    )
    .await;

    let dp = Arc::new(Datapath::load(&DatapathConfig::default()).expect("load the classifier"));
    let view = MeshView::new(dp.clone(), Vec::new(), true);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(view.clone().run(client.clone(), cancel.clone()));
    let within = Duration::from_secs(20);
    wait_until(
        within,
        "listed",
        || view.status().synced && identity(&dp, "198.51.100.8") == Some(131_074),
        || format!("{:?}", view.status()),
    )
    .await;
    let status = view.status();
    assert_eq!(status.clusters.get("cluster-b"), Some(&2));
    assert_eq!(
        (status.nodes, status.mesh_cidrs, status.endpoints),
        (1, 1, 2)
    );
    // Two /32s, the pod CIDR's world entry, the two world routes.
    assert_eq!(status.ipcache_entries, 5);
    assert_eq!(
        view.owner_of(addr("198.51.100.99")).map(|(_, c)| c),
        Some("cluster-b".into())
    );
    assert_eq!(view.cluster_name(2).as_deref(), Some("cluster-b"));

    // Changes follow: a deleted endpoint falls back to the pod CIDR's world entry.
    delete_endpoint(&mut client, "cluster-b", addr("198.51.100.7")).await;
    put_endpoint(
        &mut client,
        "cluster-b",
        addr("198.51.100.9"),
        131_075,
        "203.0.113.2",
    )
    .await;
    wait_until(
        within,
        "changes applied",
        || {
            identity(&dp, "198.51.100.7") == Some(WORLD_IPV4_ID)
                && identity(&dp, "198.51.100.9") == Some(131_075)
        },
        || format!("{:?}", dp.ipcache_entries()),
    )
    .await;

    // Another etcd answers on the same address, holding only .9: the view lists it anew
    // and .8, gone meanwhile, leaves the map.
    let lists_before = view.status().lists;
    etcd.replace_with_fresh();
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    put_cluster_b(&mut client, &[(addr("198.51.100.9"), 131_075)]).await;
    wait_until(
        within,
        "relisted",
        || {
            let s = view.status();
            s.lists >= lists_before + 3
                && s.endpoints == 1
                && identity(&dp, "198.51.100.8") == Some(WORLD_IPV4_ID)
                && identity(&dp, "198.51.100.9") == Some(131_075)
        },
        || format!("{:?} {:?}", view.status(), dp.ipcache_entries()),
    )
    .await;
    let status = view.status();
    assert!(
        status.watch_errors >= 1,
        "the broken watch was seen: {status:?}"
    );
    assert_eq!(status.ipcache_entries, 4);
    assert_eq!(status.pending, 0);
    assert!(status.write_errors.is_empty(), "{status:?}");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the view stops on cancel")
        .unwrap();
}
