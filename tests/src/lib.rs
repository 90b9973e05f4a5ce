//! The one support crate of every integration test in the workspace (this crate's own
//! cross-crate tests, the binary's end-to-end tests, the node's): real etcd servers and
//! what Cilium writes into them ([`cilium_data`] on the source side, [`cache`] on the
//! consumer side, [`etcdctl`]), built filter modules, remote mirrors with short retries,
//! meshfilter processes ([`process`]), network namespaces with real packets ([`netns`]),
//! crates built outside the workspace ([`cargo`]), ports, and waiting on conditions,
//! never fixed sleeps. The TCP proxy and the ConfigMap-like module directory are
//! re-exported from `meshfilter-local-etcd`, which the chaos soak shares.

pub mod cache;
pub mod cargo;
pub mod cilium_data;
pub mod etcdctl;
pub mod netns;
pub mod process;
pub use meshfilter_local_etcd as etcd;
/// The directory updated like a mounted ConfigMap (shared with the chaos soak).
pub use meshfilter_local_etcd::ConfigMapDir;
pub use meshfilter_local_etcd::free_port;
/// The TCP proxy that partitions a client from an etcd (shared with the chaos soak).
pub use meshfilter_local_etcd::proxy;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Directory holding `<crate>.wasm` for every filter built for the tests.
pub fn modules_dir() -> PathBuf {
    PathBuf::from(env!("MESHFILTER_TEST_MODULES"))
}

/// Bytes of a built filter module, e.g. `module_bytes("cfp-scope")`.
pub fn module_bytes(name: &str) -> Vec<u8> {
    let path = modules_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The built cfp-scope module on every hook, without config, as `local` sees it.
pub fn cfp_scope_runtime(
    local: meshfilter_filter_runtime::Locality,
) -> std::sync::Arc<meshfilter_filter_runtime::FilterRuntime> {
    use meshfilter_filter_runtime::{
        BuiltinSet, FilterEngine, FilterManifest, FilterMetrics, FilterRuntime, ModuleSource,
    };
    let set = BuiltinSet {
        modules: vec![("cfp-scope.wasm".into(), module_bytes("cfp-scope").into())],
        manifest: FilterManifest::single("cfp-scope.wasm", serde_json::Value::Null),
    };
    let engine = FilterEngine::new(Default::default()).expect("engine");
    FilterRuntime::with_engine(
        engine,
        ModuleSource::Builtin(set),
        Default::default(),
        local,
        FilterMetrics::default(),
    )
    .expect("cfp-scope loads")
}

/// Starts mirroring remote cluster `name` from `etcd` through `writer`, retrying with a
/// short backoff (50 ms to 500 ms); returns its status handle and its task.
pub fn spawn_remote(
    name: &str,
    etcd: meshfilter_etcd::EtcdConfig,
    writer: std::sync::Arc<meshfilter_sync::TargetWriter>,
    runtime: std::sync::Arc<meshfilter_filter_runtime::FilterRuntime>,
    cancel: &tokio_util::sync::CancellationToken,
) -> (
    meshfilter_sync::RemoteStatusHandle,
    tokio::task::JoinHandle<()>,
) {
    let remote = meshfilter_sync::RemoteCluster::new(
        meshfilter_cilium::ClusterName::new(name.to_string()).expect("cluster name"),
        etcd,
        writer,
        runtime,
        fast_remote(),
        meshfilter_sync::SyncMetrics::default(),
    );
    let handle = remote.status_handle();
    let task = tokio::spawn(remote.run(cancel.clone()));
    (handle, task)
}

/// Remote options for tests: retries from 50 ms up to 500 ms.
pub fn fast_remote() -> meshfilter_sync::RemoteOptions {
    meshfilter_sync::RemoteOptions {
        backoff: fast_backoff(),
        ..Default::default()
    }
}

/// A backoff for tests: from 50 ms up to 500 ms.
pub fn fast_backoff() -> meshfilter_etcd::Backoff {
    meshfilter_etcd::Backoff::new(Duration::from_millis(50), Duration::from_millis(500))
}

/// A client of `etcd` and a writer into it named `name`, whose leases stop with `cancel`.
pub async fn writer_into(
    etcd: &etcd::EtcdServer,
    name: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> (
    etcd_client::Client,
    std::sync::Arc<meshfilter_sync::TargetWriter>,
) {
    let client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect to etcd");
    let writer = meshfilter_sync::TargetWriter::new(
        client.clone(),
        name,
        meshfilter_sync::WriterConfig::default(),
        None,
        meshfilter_sync::SyncMetrics::default(),
        cancel.clone(),
    );
    (client, writer)
}

/// Polls `condition` until it holds; panics with `what` (and the last state `describe`
/// gives) after `within`.
pub async fn wait_until(
    within: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
    describe: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: {}", describe());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the async `check` until it passes or 20 s pass; panics with `what` and the last
/// failure then.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Value of the sample `series` (name and labels, as exposed on `/metrics`) of the filter
/// runtime's metrics, 0 when absent.
pub fn filter_metric(metrics: &meshfilter_filter_runtime::FilterMetrics, series: &str) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}
