//! The mesh leader's heartbeat (`cilium/.heartbeat`) is a key of the cache like any other:
//! when its lease is lost it is written again at once, not at the next minute's write.
//! Found by the chaos soak (`meshfilter bench chaos --seed 4242`: a revoked lease took the
//! heartbeat with it for up to a minute).

use std::time::Duration;

use etcd_client::Client;
use meshfilter_cilium::ClusterName;
use meshfilter_etcd::EtcdConfig;
use meshfilter_filter_runtime::Locality;
use meshfilter_sync::{Mesh, MeshOptions, SyncMetrics, WriterConfig};
use meshfilter_tests::etcd::EtcdServer;
use meshfilter_tests::{cfp_scope_runtime, eventually};
use tokio_util::sync::CancellationToken;

/// The lease the heartbeat sits on.
async fn heartbeat_lease(client: &Client) -> Result<i64, String> {
    let resp = client
        .kv_client()
        .get("cilium/.heartbeat", None)
        .await
        .map_err(|e| e.to_string())?;
    resp.kvs()
        .first()
        .map(|kv| kv.lease())
        .ok_or_else(|| "no heartbeat".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_heartbeat_lease_does_not_take_the_heartbeat_away() {
    let local = EtcdServer::start("local");
    let clusters = tempfile::tempdir().unwrap();
    let mut options = MeshOptions::new(
        ClusterName::new("local").unwrap(),
        EtcdConfig::plain([local.endpoint()]),
        clusters.path().to_path_buf(),
    );
    // The writer finds a lost lease within a third of its TTL.
    options.writer = WriterConfig {
        lease_ttl: Duration::from_secs(3),
        ..WriterConfig::default()
    };
    let mesh = Mesh::new(
        options,
        cfp_scope_runtime(Locality::cluster("local")),
        SyncMetrics::default(),
    );
    let cancel = CancellationToken::new();
    let task = tokio::spawn(mesh.run(cancel.clone()));
    let client = Client::connect([local.endpoint()], None).await.unwrap();
    eventually("the leader writes the heartbeat", async || {
        heartbeat_lease(&client).await.map(|_| ())
    })
    .await;

    let lease = heartbeat_lease(&client).await.unwrap();
    client.lease_client().revoke(lease).await.unwrap();
    // Back on a live lease well before the next minute's write (`eventually` gives up
    // after 20 s).
    eventually(
        "the heartbeat is written again",
        async || match heartbeat_lease(&client).await {
            Ok(now) if now != lease => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the mesh stops on cancel")
        .unwrap()
        .unwrap();
}
