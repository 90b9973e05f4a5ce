//! The watcher against a real etcd: paged lists, changes, the sync-canary gate and a
//! replaced etcd (new cluster ID).

use std::time::Duration;

use etcd_client::Client;
use meshfilter_etcd::{Backoff, Change, WatchEvent, Watcher};
use meshfilter_local_etcd::EtcdServer;
use tokio::sync::mpsc::Receiver;
use tokio_util::sync::CancellationToken;

async fn next(rx: &mut Receiver<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an event within 20 s")
        .expect("the watcher runs")
}

/// Events up to and including `InitDone`: the listed keys, the cluster ID.
async fn collect_list(rx: &mut Receiver<WatchEvent>) -> (Vec<String>, usize, u64) {
    let mut keys = Vec::new();
    let mut pages = 0;
    loop {
        match next(rx).await {
            WatchEvent::Init => {
                keys.clear();
                pages = 0;
            }
            WatchEvent::InitPage(entries) => {
                pages += 1;
                keys.extend(entries.into_iter().map(|e| e.key));
            }
            WatchEvent::InitDone { cluster_id, .. } => return (keys, pages, cluster_id),
            WatchEvent::Gated { .. } | WatchEvent::Error(_) => {}
            WatchEvent::Changes(c) => panic!("changes before the list is done: {c:?}"),
        }
    }
}

fn fast() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_in_pages_then_follows_changes() {
    let etcd = EtcdServer::start("watcher-pages");
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    for i in 0..25 {
        client.put(format!("p/{i:02}"), "v", None).await.unwrap();
    }
    client.put("other", "not listed", None).await.unwrap();
    let cancel = CancellationToken::new();
    let (mut rx, _task) = Watcher::new("test", client.clone(), "p/")
        .page_keys(10)
        .with_backoff(fast())
        .spawn(4, cancel.clone());
    let (keys, pages, _) = collect_list(&mut rx).await;
    let want: Vec<String> = (0..25).map(|i| format!("p/{i:02}")).collect();
    assert_eq!(keys, want);
    assert_eq!(pages, 3, "25 keys in pages of 10");

    client.put("p/new", "x", None).await.unwrap();
    client.delete("p/00", None).await.unwrap();
    client.put("elsewhere", "x", None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next(&mut rx).await {
            WatchEvent::Changes(changes) => seen.extend(changes),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(matches!(&seen[0], Change::Put(e) if e.key == "p/new" && &e.value[..] == b"x"));
    assert_eq!(seen[1], Change::Delete { key: "p/00".into() });
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_only_once_the_gate_exists() {
    let etcd = EtcdServer::start("watcher-gate");
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    client.put("p/a", "1", None).await.unwrap();
    let cancel = CancellationToken::new();
    let (mut rx, _task) = Watcher::new("test", client.clone(), "p/")
        .gated_on(Some("synced/p".into()))
        .with_backoff(fast())
        .spawn(4, cancel.clone());
    assert!(matches!(next(&mut rx).await, WatchEvent::Gated { key } if key == "synced/p"));
    // Nothing is listed while the source refills.
    client.put("p/b", "2", None).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(early.is_err(), "no event before the gate: {early:?}");
    client.put("synced/p", "now", None).await.unwrap();
    let (keys, _, _) = collect_list(&mut rx).await;
    assert_eq!(keys, ["p/a", "p/b"]);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_etcd_is_listed_again_once_synced() {
    let mut etcd = EtcdServer::start("watcher-replaced");
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    client.put("p/old", "1", None).await.unwrap();
    client.put("synced/p", "t", None).await.unwrap();
    let cancel = CancellationToken::new();
    let (mut rx, _task) = Watcher::new("test", client.clone(), "p/")
        .gated_on(Some("synced/p".into()))
        .with_backoff(fast())
        .spawn(16, cancel.clone());
    let (keys, _, first_id) = collect_list(&mut rx).await;
    assert_eq!(keys, ["p/old"]);

    etcd.replace_with_fresh();
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    client.put("p/new", "2", None).await.unwrap();
    // The fresh etcd is refilling: no list until its canary exists.
    let mut errors = 0;
    let mut gated = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !gated {
        assert!(tokio::time::Instant::now() < deadline, "never gated");
        match next(&mut rx).await {
            WatchEvent::Error(_) => errors += 1,
            WatchEvent::Gated { .. } => gated = true,
            WatchEvent::Changes(_) => {}
            other => panic!("listed a refilling etcd: {other:?}"),
        }
    }
    assert!(errors >= 1, "the broken watch is reported");
    client.put("synced/p", "t", None).await.unwrap();
    let (keys, _, second_id) = collect_list(&mut rx).await;
    assert_eq!(keys, ["p/new"]);
    assert_ne!(first_id, second_id, "a fresh etcd has a new cluster ID");
    cancel.cancel();
}
