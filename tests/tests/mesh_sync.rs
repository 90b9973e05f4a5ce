//! `meshfilter mesh`'s sync engine against real etcd servers: three remote clusters and a
//! local one, the import hook running the real cfp-scope module.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshfilter_cilium::ClusterName;
use meshfilter_etcd::{Backoff, EtcdConfig};
use meshfilter_filter_runtime::{
    EngineConfig, FilterMetrics, FilterRuntime, Locality, ModuleSource, RuntimeConfig,
};
use meshfilter_sync::{
    RemoteCluster, RemoteOptions, RemoteStatusHandle, SyncMetrics, TargetWriter, WriterConfig,
};
use meshfilter_tests::cilium_data::{SourceCluster, list, put_all};
use meshfilter_tests::etcd::EtcdServer;
use meshfilter_tests::{ConfigMapDir, module_bytes, writer_into};
use tokio_util::sync::CancellationToken;

/// Scopes of the six endpoints every remote publishes on node 0, pod index = position.
const SCOPES: [Option<&str>; 6] = [
    None,
    Some("regional"),
    Some("zone"),
    Some("cluster"),
    Some("global"),
    Some("eu-west-1"),
];

async fn populate(c: &SourceCluster, etcd: &EtcdServer) {
    let client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let mut kvs = vec![c.config_kv(), c.node_kv(0), c.node_kv(1)];
    for id in 0..SCOPES.len() as u32 {
        kvs.push(c.identity_kv(id, &format!("app-{id}"), "shop"));
    }
    for (i, scope) in SCOPES.iter().enumerate() {
        kvs.push(c.endpoint_kv(0, i as u32, i as u32, *scope));
    }
    // Bad input: malformed JSON, and a value whose IP is not its key.
    kvs.push((
        format!("cilium/state/ip/v1/default/10.{}.9.9", c.id),
        "{not json".into(),
    ));
    let (_, other) = c.endpoint_kv(0, 0, 0, None);
    kvs.push((
        format!("cilium/state/ip/v1/default/10.{}.9.10", c.id),
        other,
    ));
    kvs.extend(c.synced_kvs());
    put_all(&client, kvs).await;
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The cache of one remote must hold exactly these pods, byte-identical to the source.
async fn expect_cache(
    local: &etcd_client::Client,
    remote: &etcd_client::Client,
    c: &SourceCluster,
    pods: &[u32],
) -> Result<(), String> {
    let cache = list(local, &format!("cilium/cache/ip/v1/{}/", c.name)).await;
    let source: BTreeMap<String, String> = list(remote, "cilium/state/ip/v1/default/")
        .await
        .into_iter()
        .collect();
    let want: Vec<String> = pods.iter().map(|i| c.pod_ip(0, *i)).collect();
    let got: Vec<String> = cache
        .iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap().to_string())
        .collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    if got != want_sorted {
        return Err(format!(
            "{}: cache holds {got:?}, want {want_sorted:?}",
            c.name
        ));
    }
    for (k, v) in &cache {
        let ip = k.rsplit('/').next().unwrap();
        let src = source
            .get(&format!("cilium/state/ip/v1/default/{ip}"))
            .ok_or("source gone")?;
        if src != v {
            return Err(format!("{k}: cache value {v} differs from source {src}"));
        }
    }
    Ok(())
}

fn runtime(dir: &ConfigMapDir) -> Arc<FilterRuntime> {
    FilterRuntime::new(
        RuntimeConfig {
            engine: EngineConfig::default(),
            source: ModuleSource::Directory(dir.path().to_path_buf()),
            pins: BTreeMap::new(),
            local: Locality {
                cluster: "prod-eu-1".into(),
                zone: Some("eu-west-1a".into()),
                region: Some("eu-west-1".into()),
            },
        },
        FilterMetrics::default(),
    )
    .expect("filters load")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cache_holds_exactly_what_the_filters_allow() {
    let local_etcd = EtcdServer::start("local");
    let remotes = [
        SourceCluster::new("prod-eu-2", 2, "eu-west-1", "eu-west-1b"),
        SourceCluster::new("prod-us-1", 3, "us-east-1", "us-east-1a"),
        SourceCluster::new("prod-ap-1", 4, "ap-south-1", "ap-south-1a"),
    ];
    let mut servers: Vec<EtcdServer> = remotes.iter().map(|r| EtcdServer::start(&r.name)).collect();
    for (c, s) in remotes.iter().zip(&servers) {
        populate(c, s).await;
    }
    let mut filters = ConfigMapDir::new();
    let cfp = module_bytes("cfp-scope");
    let pairs = module_bytes("region-pairs");
    let cfp_only = "export:\n  chain: [{module: cfp-scope.wasm}]\nimport:\n  chain: [{module: cfp-scope.wasm}]\n";
    filters.update(&[
        ("filters.yaml", cfp_only.as_bytes()),
        ("cfp-scope.wasm", &cfp),
        ("region-pairs.wasm", &pairs),
    ]);
    let rt = runtime(&filters);

    let cancel = CancellationToken::new();
    let (local, writer) = writer_into(&local_etcd, "local", &cancel).await;
    let mut handles: Vec<RemoteStatusHandle> = Vec::new();
    let mut tasks = Vec::new();
    for (c, s) in remotes.iter().zip(&servers) {
        let remote = RemoteCluster::new(
            ClusterName::new(c.name.clone()).unwrap(),
            EtcdConfig::plain([s.endpoint()]),
            writer.clone(),
            rt.clone(),
            RemoteOptions {
                backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
                ..RemoteOptions::default()
            },
            SyncMetrics::default(),
        );
        let handle = remote.status_handle();
        handles.push(handle.clone());
        tasks.push(tokio::spawn(remote.run(cancel.clone())));
    }
    let clients: Vec<etcd_client::Client> = {
        let mut v = Vec::new();
        for s in &servers {
            v.push(
                etcd_client::Client::connect([s.endpoint()], None)
                    .await
                    .unwrap(),
            );
        }
        v
    };

    eventually("every remote synced", Duration::from_secs(30), || async {
        match handles.iter().map(|h| h.snapshot()).find(|s| !s.synced) {
            None => Ok(()),
            Some(s) => Err(format!("{} not synced: {s:?}", s.cluster)),
        }
    })
    .await;

    // Exactly what cfp-scope admits for prod-eu-1 in eu-west-1a, byte-identical.
    let expected: [&[u32]; 3] = [&[0, 1, 4, 5], &[0, 4, 5], &[0, 4, 5]];
    for ((c, client), pods) in remotes.iter().zip(&clients).zip(expected) {
        expect_cache(&local, client, c, pods).await.unwrap();
        // Nodes and identities are mirrored unfiltered; config and canaries are there.
        assert_eq!(
            list(&local, &format!("cilium/cache/nodes/v1/{}/", c.name))
                .await
                .len(),
            2
        );
        assert_eq!(
            list(
                &local,
                &format!("cilium/cache/identities/v1/{}/id/", c.name)
            )
            .await
            .len(),
            SCOPES.len()
        );
        let config = list(&local, &format!("cilium/cluster-config/{}", c.name)).await;
        let config: serde_json::Value = serde_json::from_str(&config[0].1).unwrap();
        assert_eq!(config["id"], c.id);
        assert_eq!(config["capabilities"]["cached"], true);
        assert_eq!(config["capabilities"]["syncedCanaries"], true);
        for res in ["ip", "identities", "nodes", "services"] {
            let canary = list(
                &local,
                &format!("cilium/synced/{}/cilium/cache/{res}/v1", c.name),
            )
            .await;
            assert_eq!(canary.len(), 1, "canary for {res} of {}", c.name);
        }
    }
    let stats = handles[1].snapshot().endpoints;
    assert_eq!(
        stats.invalid, 2,
        "malformed and mismatched entries are counted: {stats:?}"
    );
    assert_eq!(stats.kept, 3);
    assert!(
        stats
            .skipped
            .keys()
            .any(|r| r.contains("regional endpoint from region us-east-1")),
        "{stats:?}"
    );

    // Churn at the source converges: add, change scope, delete.
    let us = &remotes[1];
    put_all(
        &clients[1],
        [
            us.endpoint_kv(0, 6, 0, Some("global")),
            us.endpoint_kv(0, 0, 0, Some("regional")),
        ],
    )
    .await;
    clients[1]
        .kv_client()
        .delete(
            format!("cilium/state/ip/v1/default/{}", us.pod_ip(0, 4)),
            None,
        )
        .await
        .unwrap();
    eventually("churn converges", Duration::from_secs(10), || {
        expect_cache(&local, &clients[1], us, &[5, 6])
    })
    .await;

    // A filter reload converges both ways: DR partners import each other's regional endpoints.
    let with_pairs = "import:\n  chain:\n    - module: region-pairs.wasm\n      config: {pairs: [[eu-west-1, us-east-1]]}\n    - module: cfp-scope.wasm\n";
    filters.update(&[
        ("filters.yaml", with_pairs.as_bytes()),
        ("cfp-scope.wasm", &cfp),
        ("region-pairs.wasm", &pairs),
    ]);
    rt.reload().expect("reload");
    eventually("reload adds", Duration::from_secs(10), || {
        expect_cache(&local, &clients[1], us, &[0, 1, 5, 6])
    })
    .await;
    eventually("ap unchanged", Duration::from_secs(5), || {
        expect_cache(&local, &clients[2], &remotes[2], &[0, 4, 5])
    })
    .await;
    filters.update(&[
        ("filters.yaml", cfp_only.as_bytes()),
        ("cfp-scope.wasm", &cfp),
        ("region-pairs.wasm", &pairs),
    ]);
    rt.reload().expect("reload");
    eventually("reload removes", Duration::from_secs(10), || {
        expect_cache(&local, &clients[1], us, &[5, 6])
    })
    .await;

    // The remote etcd is replaced by a fresh one (new cluster ID) holding less: full re-list,
    // stale keys removed.
    let ap = &remotes[2];
    servers[2].replace_with_fresh();
    let fresh = etcd_client::Client::connect([servers[2].endpoint()], None)
        .await
        .unwrap();
    put_all(
        &fresh,
        [
            ap.config_kv(),
            ap.node_kv(0),
            ap.identity_kv(0, "app-0", "shop"),
            ap.endpoint_kv(0, 0, 0, None),
        ]
        .into_iter()
        .chain(ap.synced_kvs()),
    )
    .await;
    eventually(
        "stale entries of the replaced etcd are collected",
        Duration::from_secs(20),
        || expect_cache(&local, &fresh, ap, &[0]),
    )
    .await;
    assert!(
        handles[2].snapshot().resources["endpoints"].retries > 0,
        "the reflector noticed the replacement"
    );

    cancel.cancel();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("shuts down")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_a_lost_lease_are_written_again() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let local_etcd = EtcdServer::start("local");
    let remote_etcd = EtcdServer::start("remote");
    let c = SourceCluster::new("remote", 6, "eu-west-1", "eu-west-1a");
    let remote = etcd_client::Client::connect([remote_etcd.endpoint()], None)
        .await
        .unwrap();
    put_all(&remote, c.one_pod(None)).await;
    let mut filters = ConfigMapDir::new();
    let cfp = module_bytes("cfp-scope");
    filters.update(&[
        (
            "filters.yaml",
            b"import:\n  chain: [{module: cfp-scope.wasm}]\n",
        ),
        ("cfp-scope.wasm", &cfp),
    ]);
    let rt = runtime(&filters);
    let cancel = CancellationToken::new();
    let local = etcd_client::Client::connect([local_etcd.endpoint()], None)
        .await
        .unwrap();
    let config = WriterConfig {
        lease_ttl: Duration::from_secs(3),
        ..WriterConfig::default()
    };
    let writer = TargetWriter::new(
        local.clone(),
        "local",
        config,
        None,
        SyncMetrics::default(),
        cancel.clone(),
    );
    let mirror = RemoteCluster::new(
        ClusterName::new("remote").unwrap(),
        EtcdConfig::plain([remote_etcd.endpoint()]),
        writer,
        rt,
        RemoteOptions {
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
            ..RemoteOptions::default()
        },
        SyncMetrics::default(),
    );
    let task = tokio::spawn(mirror.run(cancel.clone()));
    let key = format!("cilium/cache/ip/v1/remote/{}", c.pod_ip(0, 0));
    eventually("mirrored", Duration::from_secs(20), || async {
        if list(&local, &key).await.is_empty() {
            Err("not yet".into())
        } else {
            Ok(())
        }
    })
    .await;
    // Revoke every lease behind the writer's back: its keys vanish with them.
    let mut leases = local.lease_client();
    for lease in leases.leases().await.unwrap().leases() {
        leases.revoke(lease.id()).await.unwrap();
    }
    assert!(
        list(&local, &key).await.is_empty(),
        "revoking the lease deleted the key"
    );
    eventually(
        "written again under a new lease",
        Duration::from_secs(20),
        || async {
            if list(&local, &key).await.is_empty() {
                Err("still gone".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
    assert_eq!(
        list(&local, "cilium/synced/remote/cilium/cache/ip/v1")
            .await
            .len(),
        1,
        "the canary is back too"
    );
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}
