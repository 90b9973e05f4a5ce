//! Mutual TLS to etcd, as Cilium's clustermesh secrets configure it: the remote and the
//! local etcd both require client certificates.

use std::time::{Duration, Instant};

use meshfilter_etcd::EtcdConfig;
use meshfilter_filter_runtime::Locality;
use meshfilter_sync::{SyncMetrics, TargetWriter, WriterConfig};
use meshfilter_tests::cilium_data::{SourceCluster, list, put_all};
use meshfilter_tests::etcd::EtcdServer;
use meshfilter_tests::{cfp_scope_runtime, spawn_remote};
use tokio_util::sync::CancellationToken;

fn config_of(server: &EtcdServer, with_client_cert: bool) -> EtcdConfig {
    let tls = server.tls().expect("a TLS server");
    EtcdConfig {
        endpoints: vec![server.endpoint()],
        trusted_ca_file: Some(tls.ca.clone()),
        cert_file: with_client_cert.then(|| tls.client_cert.clone()),
        key_file: with_client_cert.then(|| tls.client_key.clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_over_mutual_tls_and_refuses_without_a_client_certificate() {
    let local_etcd = EtcdServer::start_tls("local");
    let remote_etcd = EtcdServer::start_tls("remote");
    let c = SourceCluster::new("remote", 9, "eu-west-1", "eu-west-1a");
    let remote = config_of(&remote_etcd, true)
        .connect("remote")
        .await
        .expect("mTLS connect");
    put_all(&remote, c.one_pod(None)).await;

    let rt = cfp_scope_runtime(Locality::cluster("local"));
    let cancel = CancellationToken::new();
    let local = config_of(&local_etcd, true)
        .connect("local")
        .await
        .expect("mTLS connect");
    let writer = TargetWriter::new(
        local.clone(),
        "local",
        WriterConfig::default(),
        None,
        SyncMetrics::default(),
        cancel.clone(),
    );
    let (good_handle, good) = spawn_remote(
        "remote",
        config_of(&remote_etcd, true),
        writer.clone(),
        rt.clone(),
        &cancel,
    );
    // The same remote under another name, without a client certificate.
    let (bad_handle, bad) = spawn_remote(
        "remote-nocert",
        config_of(&remote_etcd, false),
        writer,
        rt,
        &cancel,
    );
    let tasks = [good, bad];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !good_handle.snapshot().synced {
        assert!(
            Instant::now() < deadline,
            "no sync over mTLS: {:?}",
            good_handle.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(list(&local, "cilium/cache/ip/v1/remote/").await.len(), 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    while bad_handle.snapshot().connect_failures < 2 {
        assert!(
            Instant::now() < deadline,
            "a client without a certificate must be refused: {:?}",
            bad_handle.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bad_status = bad_handle.snapshot();
    assert!(
        !bad_status.connected && bad_status.last_error.is_some(),
        "{bad_status:?}"
    );
    cancel.cancel();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap();
    }
}
