//! `meshfilter export` from Kubernetes: the real kube watchers talk HTTP to a local server
//! that answers with recorded list and watch responses of CiliumEndpoint, Pod, Namespace and
//! CiliumNode objects (host/k8s-source/testdata), the real cfp-scope module decides, and a
//! real etcd is the export sink.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use etcd_client::GetOptions;
use meshfilter_cilium::ClusterName;
use meshfilter_etcd::Backoff;
use meshfilter_filter_runtime::Locality;
use meshfilter_k8s_source::{
    ApiAccess, KubernetesExport, KubernetesStatus, KubernetesStatusHandle, LocalCluster,
};
use meshfilter_sync::{SyncMetrics, TargetWriter, WriterConfig};
use meshfilter_tests::cilium_data::{list, put_all};
use meshfilter_tests::etcd::EtcdServer;
use meshfilter_tests::{cfp_scope_runtime, eventually};
use serde_json::{Value, json};
use std::sync::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const CEPS: &str = "/apis/cilium.io/v2/ciliumendpoints";
const NODES: &str = "/apis/cilium.io/v2/ciliumnodes";
const PODS: &str = "/api/v1/pods";
const NAMESPACES: &str = "/api/v1/namespaces";

const ENDPOINTS: &str = "cilium/state/ip/v1/default/";
const IDENTITIES: &str = "cilium/state/identities/v1/id/";

/// A recording from host/k8s-source/testdata.
fn recording(name: &str) -> String {
    let path = format!(
        "{}/../host/k8s-source/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The events of a recorded watch stream, one JSON line each.
fn watch_events(name: &str) -> Vec<String> {
    recording(name).lines().map(str::to_string).collect()
}

/// One open watch: where its events go, and whether it asked for metadata only.
struct OpenWatch {
    events: mpsc::UnboundedSender<Bytes>,
    metadata_only: bool,
}

/// What the server answers for one resource path.
#[derive(Default)]
struct Served {
    list: Value,
    watches: Vec<OpenWatch>,
    lists: usize,
    /// The `Accept` of every request: metadata-only (`PartialObjectMetadata`) or not.
    metadata_only: Vec<bool>,
}

type Resources = Arc<Mutex<BTreeMap<&'static str, Served>>>;

/// A Kubernetes API server that answers from recordings. A list request gets the recorded
/// list; a watch request stays open and gets the events the test pushes. Requests that ask
/// for metadata only get what a kube-apiserver sends then: `PartialObjectMetadata`. Requests
/// without the kubeconfig's bearer token are refused.
struct RecordedApi {
    url: String,
    resources: Resources,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordedApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordedApi {
    async fn start() -> RecordedApi {
        let resources: Resources = Arc::default();
        {
            let mut served = resources.lock().unwrap();
            for (path, file) in [
                (CEPS, "ciliumendpoints.list.json"),
                (NODES, "ciliumnodes.list.json"),
                (PODS, "pods.list.json"),
                (NAMESPACES, "namespaces.list.json"),
            ] {
                served.entry(path).or_default().list =
                    serde_json::from_str(&recording(file)).unwrap();
            }
        }
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(resources.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        RecordedApi {
            url,
            resources,
            task,
        }
    }

    /// A kubeconfig in `dir` whose context `recorded` points at this server; its current
    /// context points at a port nothing listens on.
    fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: elsewhere\n\
             clusters:\n\
             - {{name: recorded, cluster: {{server: \"{}\"}}}}\n\
             - {{name: elsewhere, cluster: {{server: \"http://127.0.0.1:1\"}}}}\n\
             users:\n- {{name: exporter, user: {{token: test-token}}}}\n\
             contexts:\n\
             - {{name: recorded, context: {{cluster: recorded, user: exporter}}}}\n\
             - {{name: elsewhere, context: {{cluster: elsewhere, user: exporter}}}}\n",
            self.url
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn with<T>(&self, path: &str, f: impl FnOnce(&mut Served) -> T) -> T {
        f(self.resources.lock().unwrap().get_mut(path).unwrap())
    }

    /// Serves the recording `file` as the list of `path` from now on.
    fn set_list(&self, path: &str, file: &str) {
        let list = serde_json::from_str(&recording(file)).unwrap();
        self.with(path, |s| s.list = list);
    }

    /// Waits until a watch of `path` is open.
    async fn wait_watching(&self, path: &str) {
        eventually(&format!("a watch of {path}"), async || {
            let open = self.with(path, |s| s.watches.iter().any(|w| !w.events.is_closed()));
            if open {
                Ok(())
            } else {
                Err("none open".into())
            }
        })
        .await;
    }

    /// Streams `event` (a recorded line) to every open watch of `path`.
    async fn push(&self, path: &str, event: &str) {
        self.wait_watching(path).await;
        let event: Value = serde_json::from_str(event).unwrap();
        self.with(path, |s| {
            for watch in &s.watches {
                let event = if watch.metadata_only {
                    partial_event(&event)
                } else {
                    event.clone()
                };
                let _ = watch.events.send(Bytes::from(format!("{event}\n")));
            }
        });
    }

    /// Ends every open watch of `path`, as the API server does after an ERROR event.
    fn close_watches(&self, path: &str) {
        self.with(path, |s| s.watches.clear());
    }

    fn lists(&self, path: &str) -> usize {
        self.with(path, |s| s.lists)
    }

    fn metadata_only(&self, path: &str) -> Vec<bool> {
        self.with(path, |s| s.metadata_only.clone())
    }
}

/// The handler of every request.
async fn answer(State(resources): State<Resources>, uri: Uri, headers: HeaderMap) -> Response {
    let metadata_only = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let watch = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|p| p == "watch=true");
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|a| a.to_str().ok())
        != Some("Bearer test-token")
    {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": "Unauthorized", "code": 401, "message": "Unauthorized"});
        return (StatusCode::UNAUTHORIZED, axum::Json(status)).into_response();
    }
    let mut resources = resources.lock().unwrap();
    let Some(served) = resources.get_mut(uri.path()) else {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": "NotFound", "code": 404,
            "message": format!("the server could not find the requested resource ({})", uri.path())});
        return (StatusCode::NOT_FOUND, axum::Json(status)).into_response();
    };
    served.metadata_only.push(metadata_only);
    if watch {
        let (events, stream) = mpsc::unbounded_channel::<Bytes>();
        served.watches.push(OpenWatch {
            events,
            metadata_only,
        });
        let body = futures::stream::unfold(stream, |mut stream| async move {
            let line = stream.recv().await?;
            Some((Ok::<_, Infallible>(line), stream))
        });
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(body))
            .unwrap();
    }
    served.lists += 1;
    let list = if metadata_only {
        json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
            "metadata": served.list["metadata"],
            "items": served.list["items"].as_array().unwrap().iter().map(partial).collect::<Vec<_>>()})
    } else {
        served.list.clone()
    };
    axum::Json(list).into_response()
}

/// An object as a metadata-only request gets it.
fn partial(object: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
}

fn partial_event(event: &Value) -> Value {
    if event["type"] == "ERROR" {
        return event.clone();
    }
    json!({"type": event["type"], "object": partial(&event["object"])})
}

/// A running export of the recorded cluster `prod-eu-1` (cluster ID 7) into `etcd`.
struct Export {
    api: RecordedApi,
    _dir: tempfile::TempDir,
    etcd: etcd_client::Client,
    status: KubernetesStatusHandle,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Export {
    /// Starts exporting with the writer's default leases.
    async fn start(etcd: &EtcdServer) -> Export {
        Export::start_with(etcd, WriterConfig::default()).await
    }

    /// Starts exporting through a writer configured by `writer_config`.
    async fn start_with(etcd: &EtcdServer, writer_config: WriterConfig) -> Export {
        let api = RecordedApi::start().await;
        // The client is built the way `meshfilter export` builds it from its config.
        let dir = tempfile::tempdir().unwrap();
        let access = ApiAccess::Kubeconfig {
            path: Some(api.kubeconfig(dir.path())),
            context: Some("recorded".into()),
        };
        let kube_client = access.client().await.unwrap();
        let cancel = CancellationToken::new();
        let client = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .unwrap();
        let writer = TargetWriter::new(
            client.clone(),
            "export",
            writer_config,
            None,
            SyncMetrics::default(),
            cancel.clone(),
        );
        let runtime = cfp_scope_runtime(Locality {
            cluster: "prod-eu-1".into(),
            zone: Some("eu-west-1a".into()),
            region: Some("eu-west-1".into()),
        });
        let export = KubernetesExport::new(
            LocalCluster {
                name: ClusterName::new("prod-eu-1").unwrap(),
                id: 7,
                max_connected_clusters: 255,
            },
            kube_client,
            writer,
            runtime,
            Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
            meshfilter_k8s_source::SourceMetrics::default(),
            SyncMetrics::default(),
        );
        let status = export.status_handle();
        let task = tokio::spawn(export.run(cancel.clone()));
        let export = Export {
            api,
            _dir: dir,
            etcd: client,
            status,
            cancel,
            task,
        };
        eventually("initial sync", async || {
            if export.status.synced() {
                Ok(())
            } else {
                Err(format!("{:?}", export.status.status()))
            }
        })
        .await;
        export
    }

    /// Waits until the exported endpoint entries are exactly `ips` (any order).
    async fn wait_for_endpoints(&self, what: &str, ips: &[&str]) {
        let mut want: Vec<String> = ips.iter().map(|ip| format!("{ENDPOINTS}{ip}")).collect();
        want.sort();
        eventually(what, async || {
            let got: Vec<String> = list(&self.etcd, ENDPOINTS)
                .await
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
        .await;
    }

    /// The exported entry of `ip`, parsed.
    async fn endpoint(&self, ip: &str) -> Option<Value> {
        let value = self.value(&format!("{ENDPOINTS}{ip}")).await?;
        Some(serde_json::from_str(&value).unwrap())
    }

    /// The exported labels of identity `id`.
    async fn identity(&self, id: u32) -> Option<String> {
        self.value(&format!("{IDENTITIES}{id}")).await
    }

    async fn value(&self, key: &str) -> Option<String> {
        let kvs = list(&self.etcd, key).await;
        kvs.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn status(&self) -> KubernetesStatus {
        self.status.status()
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the export shuts down")
            .unwrap();
    }
}

/// The recorded exports: the cluster config, identities and endpoint entries.
fn expected_export() -> BTreeMap<String, String> {
    serde_json::from_str(&recording("export.expected.json")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_exactly_the_opted_in_endpoints_with_cilium_values() {
    let etcd = EtcdServer::start("export");
    // What an earlier run left: an endpoint, an identity and a node that are gone now.
    let earlier = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    put_all(
        &earlier,
        [
            (format!("{ENDPOINTS}10.244.9.9"), "{}".to_string()),
            (format!("{IDENTITIES}458999"), "k8s:app=gone;".to_string()),
            (
                "cilium/state/nodes/v1/prod-eu-1/retired-node".to_string(),
                "{}".to_string(),
            ),
        ],
    )
    .await;

    let export = Export::start(&etcd).await;
    let expected = expected_export();
    let mut got = BTreeMap::new();
    for prefix in [ENDPOINTS, IDENTITIES, "cilium/cluster-config/"] {
        got.extend(list(&export.etcd, prefix).await);
    }
    // Byte for byte: the exact values Cilium writes, with the scope last.
    assert_eq!(got, expected);

    // Nodes: every CiliumNode, with its topology labels and this cluster's ID.
    let nodes = list(&export.etcd, "cilium/state/nodes/v1/prod-eu-1/").await;
    let names: Vec<&str> = nodes
        .iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names, ["prod-eu-1-worker-a", "prod-eu-1-worker-b"]);
    let node: Value = serde_json::from_str(&nodes[1].1).unwrap();
    assert_eq!(node["ClusterID"], 7);
    assert_eq!(node["Labels"]["topology.kubernetes.io/zone"], "eu-west-1b");
    assert_eq!(node["IPv4AllocCIDR"]["IP"], "10.244.2.0");
    assert_eq!(node["Source"], "custom-resource");

    // The canaries came after everything of the first sync.
    let mut kv = export.etcd.kv_client();
    let data = kv
        .get("cilium/state/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let last_write = data.kvs().iter().map(|kv| kv.mod_revision()).max().unwrap();
    let canaries = kv
        .get(
            "cilium/synced/prod-eu-1/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let canary_keys: Vec<&str> = canaries
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap())
        .collect();
    assert_eq!(
        canary_keys,
        [
            "cilium/synced/prod-eu-1/cilium/state/identities/v1",
            "cilium/synced/prod-eu-1/cilium/state/ip/v1",
            "cilium/synced/prod-eu-1/cilium/state/nodes/v1",
            "cilium/synced/prod-eu-1/cilium/state/services/v1",
        ]
    );
    for canary in canaries.kvs() {
        assert!(
            canary.create_revision() > last_write,
            "canary written before the data"
        );
        assert!(canary.lease() != 0, "canary without a lease");
    }
    assert!(
        data.kvs().iter().all(|kv| kv.lease() != 0),
        "key without a lease"
    );

    // Pods and Namespaces were read as metadata only; the Cilium objects in full.
    for path in [PODS, NAMESPACES] {
        let requests = export.api.metadata_only(path);
        assert!(
            !requests.is_empty() && requests.iter().all(|m| *m),
            "{path}: {requests:?}"
        );
    }
    for path in [CEPS, NODES] {
        assert!(export.api.metadata_only(path).iter().all(|m| !*m), "{path}");
    }

    let status = export.status();
    assert_eq!(status.endpoints.exported["regional"], 2);
    assert_eq!(status.endpoints.exported["global"], 2);
    assert_eq!(status.endpoints.exported["zone"], 2);
    assert_eq!(
        status.endpoints.skipped["no Pod for this CiliumEndpoint"], 1,
        "{status:?}"
    );
    assert_eq!(
        status.endpoints.skipped["opted out by label clustermesh.cilium.io/sync=false"],
        1
    );
    assert_eq!(status.written["endpoints"], 6);
    // Every endpoint with a Pod publishes its identity, exported or not (7 of 8: the
    // orphan endpoint has no Pod).
    assert_eq!(status.written["identities"], 7);
    assert_eq!(status.resources["ciliumendpoints"].objects, 9);
    assert_eq!(status.resources["pods"].objects, 8);
    // legacy/escape-0 is labelled sync=true, but its namespace opted out: the label never
    // overrides the namespace, and a namespace that opted out publishes no identity.
    assert_eq!(export.endpoint("10.244.1.95").await, None);
    assert_eq!(export.identity(458779).await, None);
    export.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_re_decide_and_delete() {
    let etcd = EtcdServer::start("export");
    let export = Export::start(&etcd).await;
    let pods = watch_events("pods.watch.jsonl");
    let ceps = watch_events("ciliumendpoints.watch.jsonl");
    let namespaces = watch_events("namespaces.watch.jsonl");

    // ledger-0 drops its opt-in label: its entry is deleted, its identity stays (a pod
    // kept in is still a client whose packets carry that identity).
    export.api.push(PODS, &pods[0]).await;
    export
        .wait_for_endpoints(
            "opt-out deletes",
            &[
                "10.244.1.81",
                "10.244.2.74",
                "10.244.2.75",
                "fd00:10:244:1::a1",
                "fd00:10:244:2::e024",
            ],
        )
        .await;
    assert!(export.identity(458771).await.is_some());

    // The namespace narrows its default scope: web follows, checkout keeps its own.
    export.api.push(NAMESPACES, &namespaces[0]).await;
    eventually("namespace default scope", async || {
        let web = export.endpoint("10.244.1.81").await;
        match web {
            Some(v) if v["SyncScope"] == "regional" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let checkout = export.endpoint("10.244.2.75").await.unwrap();
    assert_eq!(checkout["SyncScope"], "global");

    // The api pod is deleted: both its addresses and its identity go.
    export.api.push(PODS, &pods[1]).await;
    export.api.push(PODS, &pods[2]).await; // a bookmark changes nothing
    export
        .wait_for_endpoints(
            "pod deleted",
            &["10.244.1.81", "10.244.2.75", "fd00:10:244:1::a1"],
        )
        .await;
    assert_eq!(export.endpoint("10.244.2.74").await, None);
    assert_eq!(export.identity(458770).await, None);

    // checkout's endpoint turns malformed: counted, logged, not exported.
    export.api.push(CEPS, &ceps[0]).await;
    export
        .wait_for_endpoints("malformed endpoint", &["10.244.1.81", "fd00:10:244:1::a1"])
        .await;
    // An event kube cannot read at all: counted as an error, the watch goes on.
    export.api.push(CEPS, &ceps[1]).await;
    eventually("unreadable event counted", async || {
        let s = export.status();
        if s.resources["ciliumendpoints"].errors == 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;

    // The source is still running: a new pod and its endpoint are exported.
    export.api.push(PODS, &pods[3]).await;
    export.api.push(CEPS, &ceps[2]).await;
    export
        .wait_for_endpoints(
            "new endpoint",
            &["10.244.1.81", "10.244.1.90", "fd00:10:244:1::a1"],
        )
        .await;
    let refunds = export.endpoint("10.244.1.90").await.unwrap();
    assert_eq!(refunds["SyncScope"], "eu-west-1,eu-central-1");
    assert_eq!(
        export.identity(458778).await,
        Some(
            "k8s:app=refunds;k8s:clustermesh.cilium.io/sync=true;\
             k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=payments;\
             k8s:io.cilium.k8s.policy.cluster=prod-eu-1;k8s:io.cilium.k8s.policy.serviceaccount=default;\
             k8s:io.kubernetes.pod.namespace=payments;"
                .into()
        )
    );

    let status = export.status();
    assert_eq!(status.endpoints.invalid, 1, "{status:?}");
    assert_eq!(status.resources["ciliumendpoints"].malformed, 1);
    assert_eq!(
        status.resources["ciliumendpoints"].lists, 1,
        "no relist needed"
    );
    assert!(
        status.resources["ciliumendpoints"].last_error.is_some(),
        "{status:?}"
    );
    export.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_watch_relists_and_sweeps_what_vanished() {
    let etcd = EtcdServer::start("export");
    let export = Export::start(&etcd).await;
    assert_eq!(export.api.lists(CEPS), 1);
    let ceps = watch_events("ciliumendpoints.watch.jsonl");

    // While no watch ran, web's endpoint was deleted and ledger-0 moved: the API answers
    // the watch with 410 Gone, and only a new list tells.
    export.api.set_list(CEPS, "ciliumendpoints.relist.json");
    export.api.push(CEPS, &ceps[3]).await;
    export.api.close_watches(CEPS);
    export
        .wait_for_endpoints(
            "relist",
            &[
                "10.244.1.82",
                "10.244.2.74",
                "10.244.2.75",
                "fd00:10:244:2::e024",
            ],
        )
        .await;
    assert_eq!(export.api.lists(CEPS), 2);
    assert_eq!(export.identity(458773).await, None);
    let ledger = export.endpoint("10.244.1.82").await.unwrap();
    assert_eq!(ledger["K8sPodName"], "ledger-0");
    let status = export.status();
    assert_eq!(status.resources["ciliumendpoints"].lists, 2);
    assert_eq!(status.resources["ciliumendpoints"].errors, 1, "the 410");
    assert_eq!(status.written["endpoints"], 4);

    // The watch resumes after the relist.
    export.api.wait_watching(CEPS).await;
    export.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_a_lost_lease_are_written_again() {
    let etcd = EtcdServer::start("export");
    let writer_config = WriterConfig {
        lease_ttl: Duration::from_secs(3),
        ..WriterConfig::default()
    };
    let export = Export::start_with(&etcd, writer_config).await;
    let before: BTreeMap<String, String> =
        list(&export.etcd, "cilium/").await.into_iter().collect();
    assert_eq!(before.len(), 6 + 7 + 2 + 1 + 4, "{before:?}");

    // Revoke every lease behind the writer's back: every key vanishes with them.
    let mut leases = export.etcd.lease_client();
    for lease in leases.leases().await.unwrap().leases() {
        leases.revoke(lease.id()).await.unwrap();
    }
    assert!(list(&export.etcd, "cilium/").await.is_empty());

    // Entries, identities, nodes, the cluster config and the canaries come back.
    eventually("written again under a new lease", async || {
        let after: BTreeMap<String, String> =
            list(&export.etcd, "cilium/").await.into_iter().collect();
        let keys = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
        if keys(&after) == keys(&before) {
            Ok(())
        } else {
            Err(format!("{:?}", keys(&after)))
        }
    })
    .await;
    let after: BTreeMap<String, String> = list(&export.etcd, "cilium/").await.into_iter().collect();
    for (key, value) in &before {
        if !key.starts_with("cilium/synced/") {
            assert_eq!(&after[key], value, "{key}");
        }
    }
    export.stop().await;
}
