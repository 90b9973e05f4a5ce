//! The miss path end to end with real packets: two pods in network namespaces, one per
//! emulated cluster, bridged through this (root) namespace, which plays cluster A's node.
//! The classifier sits on the ingress of pod A's host-side veth, where Cilium's
//! from-container program sits. Real etcd for cluster A's cache and cluster B's state,
//! `meshfilter mesh` and `meshfilter node` as operators run them. Needs root.
//!
//! Cluster B's pod 198.51.100.7 is regional in us-east-1 and cluster A is in eu-west-1,
//! so the import filter keeps it out of A's cache: its first SYN misses. Pod .8 is global
//! and synced: it connects at once.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshfilter_local_etcd::EtcdServer;
use meshfilter_node::{Attachment, Datapath, DatapathConfig, Direction, MeshView, MissVerdict};

use meshfilter_tests::etcdctl::{etcdctl, put_canaries};
use meshfilter_tests::free_port;
use meshfilter_tests::netns::{Pods, Server, connect_from, in_netns, sh};
use meshfilter_tests::process::{http_get, status_json};

fn stop(node: &mut Child) {
    meshfilter_tests::process::stop(node, "node");
}

const REGIONAL: &str = r#"{"IP":"198.51.100.7","HostIP":"203.0.113.2","ID":131073,"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"db-0","SyncScope":"regional"}"#;
const GLOBAL: &str = r#"{"IP":"198.51.100.8","HostIP":"203.0.113.2","ID":131074,"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"web-0","SyncScope":"global"}"#;
const POD_B_REGIONAL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const POD_B_GLOBAL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);

/// Cluster A's local etcd, cluster B's etcd with a node (pod CIDR 198.51.100.0/24,
/// us-east-1) and two endpoints, and `meshfilter mesh` for cluster A (eu-west-1).
struct Mesh {
    local: EtcdServer,
    _remote: EtcdServer,
    dir: tempfile::TempDir,
    addr: String,
    process: Child,
}

impl Mesh {
    fn start() -> Mesh {
        Mesh::start_with("")
    }

    /// [`Mesh::start`] with `extra` YAML in the mesh config.
    fn start_with(extra: &str) -> Mesh {
        let local = EtcdServer::start("cluster-a");
        let remote = EtcdServer::start("cluster-b");
        let r = remote.endpoint();
        etcdctl(
            &r,
            &[
                "put",
                "cilium/cluster-config/cluster-b",
                r#"{"id":2,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#,
            ],
        );
        etcdctl(
            &r,
            &[
                "put",
                "cilium/state/nodes/v1/cluster-b/b1",
                r#"{"Name":"b1","Cluster":"cluster-b","IPAddresses":[{"Type":"InternalIP","IP":"203.0.113.2"}],"IPv4AllocCIDR":{"IP":"198.51.100.0","Mask":"////AA=="},"ClusterID":2,"Labels":{"topology.kubernetes.io/region":"us-east-1"}}"#,
            ],
        );
        for id in ["131073", "131074"] {
            etcdctl(
                &r,
                &[
                    "put",
                    &format!("cilium/state/identities/v1/id/{id}"),
                    "k8s:app=shop;k8s:io.kubernetes.pod.namespace=shop;",
                ],
            );
        }
        etcdctl(
            &r,
            &["put", "cilium/state/ip/v1/default/198.51.100.7", REGIONAL],
        );
        etcdctl(
            &r,
            &["put", "cilium/state/ip/v1/default/198.51.100.8", GLOBAL],
        );
        put_canaries(&r, "cluster-b");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("clustermesh")).unwrap();
        std::fs::write(
            dir.path().join("clustermesh/cluster-b"),
            format!("endpoints:\n- {r}\n"),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("mesh.yaml");
        std::fs::write(
            &config,
            format!(
                "cluster: {{name: cluster-a, zone: eu-west-1a, region: eu-west-1}}\nlocalEtcd:\n  endpoints: [{}]\nclustersDir: {}\nlisten: {addr}\n{extra}",
                local.endpoint(),
                dir.path().join("clustermesh").display()
            ),
        )
        .unwrap();
        let process = Command::new(env!("CARGO_BIN_EXE_meshfilter"))
            .args(["mesh", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start meshfilter mesh");
        let mesh = Mesh {
            local,
            _remote: remote,
            dir,
            addr,
            process,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(&format!("http://{}/readyz", mesh.addr)) != "ready" {
            assert!(Instant::now() < deadline, "mesh did not sync");
            std::thread::sleep(Duration::from_millis(100));
        }
        let cached = etcdctl(
            &mesh.local.endpoint(),
            &["get", "--prefix", "--keys-only", "cilium/cache/ip/v1/"],
        );
        assert!(
            cached.contains("198.51.100.8") && !cached.contains("198.51.100.7"),
            "only the global pod is synced: {cached}"
        );
        mesh
    }

    /// A `meshfilter node` config for pod A's host-side interface.
    fn node_config(&self, name: &str, iface: &str, extra: &str) -> (PathBuf, String) {
        let listen = format!("127.0.0.1:{}", free_port());
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "nodeName: a1\ncluster: {{name: cluster-a, region: eu-west-1}}\nmode: standalone\ninterfaces:\n- {{interface: {iface}, direction: ingress}}\nmissVerdict: drop\nlocalEtcd:\n  endpoints: [{}]\nmeshApi: http://{}\nlisten: {listen}\n{extra}",
                self.local.endpoint(),
                self.addr
            ),
        )
        .unwrap();
        (path, listen)
    }
}

impl Mesh {
    /// [`Mesh::node_config`] in cilium mode (allow first) reading the map pinned at `pin`.
    fn cilium_node_config(&self, name: &str, iface: &str, pin: &Path) -> (PathBuf, String) {
        let (config, listen) =
            self.node_config(name, iface, &format!("ciliumIpcache: {}\n", pin.display()));
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("mode: standalone", "mode: cilium")
            .replace("missVerdict: drop", "missVerdict: pass");
        std::fs::write(&config, text).unwrap();
        (config, listen)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn spawn_node(config: &Path, listen: &str) -> Child {
    let log = std::fs::File::create(config.with_extension("log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_meshfilter"))
        .args(["node", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start meshfilter node");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&format!("http://{listen}/readyz")) != "ready" {
        assert!(
            Instant::now() < deadline,
            "node not ready: {}",
            std::fs::read_to_string(config.with_extension("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Programs named like ours attached to `iface` (TCX ingress).
fn attached(iface: &str) -> usize {
    let (_, programs) =
        aya::programs::SchedClassifier::query_tcx(iface, aya::programs::TcAttachType::Ingress)
            .expect("query TCX");
    programs
        .iter()
        .filter(|p| p.name_as_str() == Some("meshfilter_miss"))
        .count()
}

/// `bpftool map dump id N` (JSON): `(key bytes, value bytes)` per entry.
fn bpftool_dump(id: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let out = sh(&["bpftool", "-j", "map", "dump", "id", &id.to_string()]);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out).expect("bpftool JSON");
    let bytes = |v: &serde_json::Value| -> Vec<u8> {
        v.as_array()
            .expect("hex byte array")
            .iter()
            .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect()
    };
    entries
        .iter()
        .map(|e| (bytes(&e["key"]), bytes(&e["value"])))
        .collect()
}

#[test]
fn first_retransmit_connects_to_a_filtered_out_pod() {
    let mesh = Mesh::start();
    let pods = Pods::new("e");
    let _server = Server::start(&pods.ns_b);

    // Control: the standalone datapath as Cilium would have it (cache mirrored, strict
    // policy) but nobody answering misses. The synced pod connects at once; the filtered
    // one never does.
    {
        let datapath = Arc::new(
            Datapath::load(&DatapathConfig {
                verdict: MissVerdict::Drop,
                ..Default::default()
            })
            .expect("load"),
        );
        let view = MeshView::new(datapath.clone(), Vec::new(), true);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let local = mesh.local.endpoint();
        let view_task = rt.spawn({
            let view = view.clone();
            let cancel = cancel.clone();
            async move {
                let client = etcd_client::Client::connect([local], None).await.unwrap();
                view.run(client, cancel).await
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(view.status().synced && view.status().mesh_cidrs == 1) {
            assert!(
                Instant::now() < deadline,
                "view did not sync: {:?}",
                view.status()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The standalone ipcache, read from Rust, as a cilium-agent would have filled it:
        // the synced pod's /32, the remote pod CIDR as world tunnelled to its node, and
        // nothing for the filtered-out pod but that covering entry.
        let synced = datapath
            .lookup_ipcache(IpAddr::V4(POD_B_GLOBAL))
            .expect("synced /32");
        assert_eq!(synced.sec_identity, 131_074);
        assert_eq!(synced.tunnel_endpoint[..4], [203, 0, 113, 2]);
        let entries = datapath.ipcache_entries();
        let cidr = "198.51.100.0/24".parse::<ipnet::IpNet>().unwrap();
        assert!(
            entries
                .iter()
                .any(|(net, v)| *net == cidr && v.sec_identity == 9),
            "pod CIDR world entry: {entries:?}"
        );
        let covering = datapath.lookup_ipcache(IpAddr::V4(POD_B_REGIONAL));
        assert_eq!(covering.map(|v| v.sec_identity), Some(9));
        datapath
            .attach(&Attachment {
                interface: pods.host_a.clone(),
                direction: Direction::Ingress,
            })
            .expect("attach");
        let took = connect_from(&pods.ns_a, POD_B_GLOBAL, Duration::from_secs(3))
            .expect("synced pod connects");
        assert!(
            took < Duration::from_millis(500),
            "synced pod: no miss, took {took:?}"
        );
        let failed = connect_from(&pods.ns_a, POD_B_REGIONAL, Duration::from_millis(3500));
        assert!(
            failed.is_err(),
            "control run must fail without meshfilter node: {failed:?}"
        );
        let stats = datapath.stats();
        assert!(
            stats.get(meshfilter_common::ipcache::stat::MISS_DROPPED) >= 2,
            "SYNs dropped: {stats:?}"
        );
        cancel.cancel();
        let _ = rt.block_on(view_task);
        datapath.detach_all();
    }
    assert_eq!(attached(&pods.host_a), 0, "control datapath detached");

    // With meshfilter node: the first SYN misses and is dropped, the node resolves the
    // address through the mesh from cluster B's etcd, and the first retransmit (1 s)
    // connects.
    let (config, listen) = mesh.node_config("node", &pods.host_a, "");
    let mut node = spawn_node(&config, &listen);
    assert_eq!(attached(&pods.host_a), 1);
    let took = connect_from(&pods.ns_a, POD_B_REGIONAL, Duration::from_secs(5))
        .expect("connects with meshfilter node");
    eprintln!("connection to the filtered-out pod established after {took:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "established on the first retransmit, took {took:?}"
    );
    let st = status_json(&listen);
    let recent = st["recent"].as_array().unwrap();
    let installed = recent
        .iter()
        .find(|r| r["address"] == "198.51.100.7" && r["outcome"] == "installed")
        .unwrap_or_else(|| panic!("resolution recorded: {st:#}"));
    assert_eq!(installed["cluster"], "cluster-b");
    assert_eq!(installed["identity"], 131073);
    assert_eq!(installed["from"], "mesh");
    eprintln!(
        "miss to installed: {} us (from the owning remote etcd)",
        installed["latencyUs"]
    );
    assert!(st["datapath"]["miss_dropped"].as_u64().unwrap() >= 1);
    // The mesh wrote it into cluster A's cache too, so unmodified agents get it.
    let cached = etcdctl(
        &mesh.local.endpoint(),
        &["get", "cilium/cache/ip/v1/cluster-b/198.51.100.7"],
    );
    assert!(
        cached.contains(REGIONAL),
        "resolved entry in the cache: {cached}"
    );

    // An external reader sees the entry in Cilium's layout: prefixlen 64 (32 + /32),
    // family 1, the address at byte 8; identity and tunnel endpoint in the value.
    let map_id = st["ipcacheMapId"].as_u64().unwrap();
    let entries = bpftool_dump(map_id);
    let (_, value) = entries
        .iter()
        .find(|(k, _)| {
            k.len() == 24
                && k[0..4] == 64u32.to_ne_bytes()
                && k[7] == 1
                && k[8..12] == [198, 51, 100, 7]
        })
        .unwrap_or_else(|| panic!("no /32 for 198.51.100.7 in bpftool's dump of map {map_id}"));
    assert_eq!(u32::from_ne_bytes(value[0..4].try_into().unwrap()), 131073);
    assert_eq!(
        value[4..8],
        [203, 0, 113, 2],
        "tunnel endpoint: the pod's node"
    );
    assert!(
        entries.iter().any(|(k, v)| k[0..4] == 56u32.to_ne_bytes()
            && k[8..11] == [198, 51, 100]
            && u32::from_ne_bytes(v[0..4].try_into().unwrap()) == 9),
        "the pod CIDR's world entry is there as Cilium installs it"
    );

    // Graceful stop detaches; a restart attaches exactly once; kill -9 leaves nothing.
    stop(&mut node);
    assert_eq!(attached(&pods.host_a), 0, "detached on SIGTERM");
    let mut node = spawn_node(&config, &listen);
    assert_eq!(
        attached(&pods.host_a),
        1,
        "re-attached once after a restart"
    );
    node.kill().unwrap();
    node.wait().unwrap();
    assert_eq!(
        attached(&pods.host_a),
        0,
        "a killed agent leaves no program behind (TCX link)"
    );
}

#[test]
fn flood_of_unknown_addresses_is_bounded() {
    let mesh = Mesh::start();
    let pods = Pods::new("f");
    let (config, listen) = mesh.node_config(
        "flood",
        &pods.host_a,
        "meshCidrs:\n- {cidr: 198.18.0.0/15, cluster: cluster-b}\nevents: {perSecond: 200, burst: 50}\ndedup: 10s\n",
    );
    let mut node = spawn_node(&config, &listen);
    let reads_before = resolver_reads(&mesh.addr);

    // 10,000 distinct addresses nobody owns, as fast as one socket sends.
    let started = Instant::now();
    in_netns(&pods.ns_a, || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..10_000u32 {
            let dst = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i);
            let _ = socket.send_to(b"x", (IpAddr::V4(dst), 9));
        }
    })
    .join()
    .unwrap();
    let send_time = started.elapsed();
    // Until the agent has read everything the kernel let through: the count holds still.
    let received_now = || status_json(&listen)["events"]["received"].as_u64().unwrap();
    let mut last = received_now();
    assert!(
        meshfilter_tests::wait_for(Duration::from_secs(10), || {
            std::thread::sleep(Duration::from_millis(300));
            let now = received_now();
            std::mem::replace(&mut last, now) == now
        }),
        "the agent kept reading events for 10 s"
    );
    let elapsed = started.elapsed().as_secs_f64();
    let st = status_json(&listen);
    let received = st["events"]["received"].as_u64().unwrap();
    let misses = st["datapath"]["miss"].as_u64().unwrap();
    let limited = st["datapath"]["rate_limited"].as_u64().unwrap();
    let reads = resolver_reads(&mesh.addr) - reads_before;
    eprintln!(
        "flood: 10000 addresses sent in {send_time:?}; {misses} misses in the kernel, {received} events to userspace, {limited} rate-limited, {reads} remote reads by the mesh"
    );
    assert!(misses >= 9_000, "the kernel saw the flood: {misses}");
    let ceiling = 50.0 + 200.0 * elapsed + 10.0;
    assert!(
        (received as f64) <= ceiling,
        "at most the configured rate: {received} > {ceiling}"
    );
    assert!(received >= 50, "the burst got through: {received}");
    assert!(
        limited > 5_000,
        "the rest was limited in the kernel: {limited}"
    );
    assert!(
        reads <= received,
        "no request storm: {reads} remote reads for {received} events"
    );
    assert_eq!(http_get(&format!("http://{listen}/healthz")), "ok");

    // The same addresses again: negative-cached in the node, not asked again.
    let again_before = resolver_reads(&mesh.addr);
    let first: Vec<u32> = (0..50).collect();
    in_netns(&pods.ns_a, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in first {
            let dst = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i);
            let _ = socket.send_to(b"x", (IpAddr::V4(dst), 9));
        }
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        resolver_reads(&mesh.addr),
        again_before,
        "suppressed in the kernel or negative-cached"
    );
    stop(&mut node);
}

/// `meshfilter_resolver_requests` of the mesh: lookups it was asked for.
fn resolver_reads(mesh: &str) -> u64 {
    let metrics = http_get(&format!("http://{mesh}/metrics"));
    metrics
        .lines()
        .find(|l| l.starts_with("meshfilter_resolver_requests"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// `hex b0 b1 ...` arguments for bpftool.
fn hex_args(bytes: &[u8]) -> Vec<String> {
    std::iter::once("hex".to_string())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect()
}

fn ipcache_key(addr: [u8; 4], bits: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(&(32 + bits).to_ne_bytes());
    k.extend_from_slice(&[0, 0, 0, 1]);
    k.extend_from_slice(&addr);
    k.extend_from_slice(&[0; 12]);
    k
}

fn ipcache_value(identity: u32, tunnel: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&identity.to_ne_bytes());
    v.extend_from_slice(&tunnel);
    v.extend_from_slice(&[0; 12]);
    v.extend_from_slice(&[0, 0, 0, 0b10]);
    v
}

/// Cilium's pinned `cilium_ipcache_v2`, created with the agent's layout and flags
/// (LPM trie, 24-byte key and value, BPF_F_NO_PREALLOC | BPF_F_RDONLY_PROG), in a bpffs
/// instance of the test's own so the host's /sys/fs/bpf is left alone.
struct CiliumIpcache {
    mount: tempfile::TempDir,
    pin: PathBuf,
}

impl CiliumIpcache {
    fn create() -> CiliumIpcache {
        let mount = tempfile::tempdir().unwrap();
        sh(&["mount", "-t", "bpf", "bpf", mount.path().to_str().unwrap()]);
        let dir = mount.path().join("tc/globals");
        std::fs::create_dir_all(&dir).unwrap();
        let pin = dir.join("cilium_ipcache_v2");
        let map = CiliumIpcache { mount, pin };
        map.pin_new();
        map
    }

    /// Unpins the map, as the agent's `Recreate()` does first.
    fn unpin(&self) {
        std::fs::remove_file(&self.pin).unwrap();
    }

    /// Creates a fresh, empty map and pins it, as `Recreate()` does next.
    fn pin_new(&self) {
        sh(&[
            "bpftool",
            "map",
            "create",
            self.pin.to_str().unwrap(),
            "type",
            "lpm_trie",
            "key",
            "24",
            "value",
            "24",
            "entries",
            "512000",
            "name",
            "cilium_ipcache_v2",
            "flags",
            "129",
        ]);
    }

    /// What a cilium-agent on node A installs for cluster B: its node's pod CIDR as world
    /// tunnelled to the node, and a /32 per pod in `pods` (address, identity).
    fn install_cluster_b(&self, pods: &[(Ipv4Addr, u32)]) {
        self.update(
            &ipcache_key([198, 51, 100, 0], 24),
            &ipcache_value(9, [203, 0, 113, 2]),
        );
        for (pod, identity) in pods {
            self.update(
                &ipcache_key(pod.octets(), 32),
                &ipcache_value(*identity, [203, 0, 113, 2]),
            );
        }
    }

    fn update(&self, key: &[u8], value: &[u8]) {
        let mut args = vec![
            "bpftool".to_string(),
            "map".into(),
            "update".into(),
            "pinned".into(),
        ];
        args.push(self.pin.to_str().unwrap().into());
        args.push("key".into());
        args.extend(hex_args(key));
        args.push("value".into());
        args.extend(hex_args(value));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sh(&args);
    }

    fn id(&self) -> u64 {
        let out = sh(&[
            "bpftool",
            "-j",
            "map",
            "show",
            "pinned",
            self.pin.to_str().unwrap(),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("bpftool JSON");
        v["id"].as_u64().unwrap()
    }
}

impl Drop for CiliumIpcache {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pin);
        let _ = Command::new("umount").arg(self.mount.path()).status();
    }
}

#[test]
fn cilium_mode_reads_ciliums_map_and_leaves_its_program_alone() {
    let mesh = Mesh::start();
    let pods = Pods::new("c");
    let _server = Server::start(&pods.ns_b);
    // What a cilium-agent on node A would have installed: the remote node's pod CIDR as
    // world tunnelled to that node, and the /32 of the synced pod.
    let cilium = CiliumIpcache::create();
    cilium.install_cluster_b(&[(POD_B_GLOBAL, 131_074)]);
    let before = bpftool_dump(cilium.id());

    // A stand-in for Cilium's own program on the same hook, attached first.
    let stand_in = Datapath::load(&DatapathConfig::default()).expect("load the stand-in");
    stand_in
        .attach(&Attachment {
            interface: pods.host_a.clone(),
            direction: Direction::Ingress,
        })
        .unwrap();

    let (config, listen) = mesh.cilium_node_config("cilium", &pods.host_a, &cilium.pin);
    let mut node = spawn_node(&config, &listen);
    let st = status_json(&listen);
    let ours_before = st["datapath"]["packets"].as_u64().unwrap();
    let theirs_before = stand_in
        .stats()
        .get(meshfilter_common::ipcache::stat::PACKETS);
    assert_eq!(st["mode"], "cilium");
    assert_eq!(
        st["ipcacheMapId"].as_u64(),
        Some(cilium.id()),
        "reads Cilium's map, not a copy"
    );

    // Allow-first: both connect at once; the regional pod's miss is signalled and
    // resolved into the local etcd cache, where Cilium's agent picks it up.
    connect_from(&pods.ns_a, POD_B_GLOBAL, Duration::from_secs(3)).expect("synced pod");
    connect_from(&pods.ns_a, POD_B_REGIONAL, Duration::from_secs(3)).expect("allow-first pod");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cached = etcdctl(
            &mesh.local.endpoint(),
            &["get", "cilium/cache/ip/v1/cluster-b/198.51.100.7"],
        );
        if cached.contains(REGIONAL) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "resolved into the local cache: {:#}",
            status_json(&listen)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = status_json(&listen);
    assert_eq!(
        st["datapath"]["hit"].as_u64().map(|h| h > 0),
        Some(true),
        "the synced /32 hit in Cilium's map: {st:#}"
    );
    assert!(st["datapath"]["miss"].as_u64().unwrap() >= 1);
    assert_eq!(
        bpftool_dump(cilium.id()),
        before,
        "meshfilter never writes Cilium's map"
    );
    // Every packet that reached meshfilter's program also reached the next one. Both
    // counters are read together until no packet is between them (a late FIN or an IPv6
    // neighbour solicitation may be on its way).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (ours, theirs) = loop {
        let ours = status_json(&listen)["datapath"]["packets"]
            .as_u64()
            .unwrap()
            - ours_before;
        let theirs = stand_in
            .stats()
            .get(meshfilter_common::ipcache::stat::PACKETS)
            - theirs_before;
        if ours == theirs || Instant::now() > deadline {
            break (ours, theirs);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        ours > 0 && theirs == ours,
        "chain intact: meshfilter saw {ours}, the next program {theirs}"
    );
    stop(&mut node);
    assert_eq!(attached(&pods.host_a), 1, "only the stand-in remains");
    drop(stand_in);
}

/// The cilium-agent recreates its map at every start. While the pin is missing the node
/// keeps the program it has (and never creates the pin); once a new map is pinned the
/// program reads it: real packets to a pod only the new map holds hit, no miss.
#[test]
fn cilium_mode_follows_a_map_the_agent_recreates() {
    let mesh = Mesh::start();
    let pods = Pods::new("y");
    let _server = Server::start(&pods.ns_b);
    let cilium = CiliumIpcache::create();
    cilium.install_cluster_b(&[(POD_B_GLOBAL, 131_074)]);
    let first = cilium.id();
    let (config, listen) = mesh.cilium_node_config("recreate", &pods.host_a, &cilium.pin);
    let mut node = spawn_node(&config, &listen);
    assert_eq!(status_json(&listen)["ipcacheMapId"].as_u64(), Some(first));
    let counters = |listen: &str| {
        let st = status_json(listen);
        (
            st["datapath"]["hit"].as_u64().unwrap(),
            st["datapath"]["miss"].as_u64().unwrap(),
        )
    };
    let wait_status = |what: &str, done: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = status_json(&listen);
            if done(&st) {
                return st;
            }
            assert!(Instant::now() < deadline, "{what}: {st:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // The agent unpins its map: reported, not created, and the old map is still read.
    cilium.unpin();
    wait_status("pin reported missing", &|st| {
        st["ciliumMap"]["pinMissing"] == true
    });
    assert!(!cilium.pin.exists(), "meshfilter never creates the pin");
    let (hits, _) = counters(&listen);
    connect_from(&pods.ns_a, POD_B_GLOBAL, Duration::from_secs(3)).expect("synced pod");
    assert!(counters(&listen).0 > hits, "still a hit in the map held");

    // The agent pins its new map, which also has the regional pod.
    cilium.pin_new();
    cilium.install_cluster_b(&[(POD_B_GLOBAL, 131_074), (POD_B_REGIONAL, 131_073)]);
    let second = cilium.id();
    assert_ne!(first, second);
    let st = wait_status("rebound to the new map", &|st| {
        st["ipcacheMapId"].as_u64() == Some(second)
    });
    assert_eq!(st["ciliumMap"]["reopens"], 1, "{st:#}");
    assert_eq!(st["ciliumMap"]["pinMissing"], false);
    assert_eq!(
        attached(&pods.host_a),
        1,
        "the attachment was replaced, not added"
    );
    let (hits, misses) = counters(&listen);
    connect_from(&pods.ns_a, POD_B_REGIONAL, Duration::from_secs(3)).expect("regional pod");
    let (hits_after, misses_after) = counters(&listen);
    assert!(hits_after > hits, "the regional pod hit in the new map");
    assert_eq!(misses_after, misses, "no miss: the old map never had it");
    let metrics = http_get(&format!("http://{listen}/metrics"));
    assert!(
        metrics.contains("meshfilter_node_ipcache_reopens_total 1"),
        "{metrics}"
    );
    stop(&mut node);
    assert_eq!(attached(&pods.host_a), 0, "detached on SIGTERM");
}

#[test]
fn cilium_mode_refuses_a_missing_or_foreign_map() {
    let mesh = Mesh::start();
    let pods = Pods::new("m");
    let (config, _) = mesh.node_config(
        "missing",
        &pods.host_a,
        "ciliumIpcache: /sys/fs/bpf/no-such-dir/cilium_ipcache_v2\n",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("mode: standalone", "mode: cilium");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshfilter"))
        .args(["node", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no pinned map there"), "{stderr}");
    assert!(
        !Path::new("/sys/fs/bpf/no-such-dir").exists(),
        "never creates the pin"
    );
}

/// Standalone without the mesh API: the node reads the missed endpoint straight from the
/// owning cluster's etcd, named in a clustermesh directory.
#[test]
fn reads_the_owning_remote_etcd_directly_when_configured() {
    let mesh = Mesh::start();
    let pods = Pods::new("r");
    let _server = Server::start(&pods.ns_b);
    let (config, listen) = mesh.node_config(
        "direct",
        &pods.host_a,
        &format!(
            "clustersDir: {}\n",
            mesh.dir.path().join("clustermesh").display()
        ),
    );
    let text: String = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("meshApi:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, text).unwrap();
    let mut node = spawn_node(&config, &listen);
    let took = connect_from(&pods.ns_a, POD_B_REGIONAL, Duration::from_secs(5))
        .expect("connects through a direct remote lookup");
    assert!(
        took < Duration::from_millis(2500),
        "first retransmit, took {took:?}"
    );
    let st = status_json(&listen);
    let found = st["recent"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["address"] == "198.51.100.7" && r["from"] == "remote-etcd");
    assert!(found, "resolved from cluster B's etcd: {st:#}");
    assert_eq!(resolver_reads(&mesh.addr), 0, "the mesh was not asked");
    stop(&mut node);
}

/// The miss hook runs the filter modules of a mounted directory and follows their hot
/// reload: first a manifest whose miss hook resolves nothing (the SYN is dropped and never
/// answered), then cfp-scope (the next connection gets through on its first retransmit).
/// An ignore decision made by the old generation does not outlive the reload.
#[test]
fn the_miss_hook_follows_a_filter_reload() {
    let mesh = Mesh::start();
    let pods = Pods::new("h");
    let _server = Server::start(&pods.ns_b);
    let filters = tempfile::tempdir().unwrap();
    let cfp_scope: &[u8] = include_bytes!(concat!(
        env!("MESHFILTER_SHIPPED_FILTERS"),
        "/cfp-scope.wasm"
    ));
    std::fs::write(filters.path().join("cfp-scope.wasm"), cfp_scope).unwrap();
    let manifest = |text: &str| {
        let tmp = filters.path().join(".filters.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, filters.path().join("filters.yaml")).unwrap();
    };
    manifest("miss:\n  otherwise: closed\n");
    let (config, listen) = mesh.node_config(
        "reload",
        &pods.host_a,
        &format!("filters: {{directory: {}}}\n", filters.path().display()),
    );
    let mut node = spawn_node(&config, &listen);

    let refused = connect_from(&pods.ns_a, POD_B_REGIONAL, Duration::from_millis(2500));
    assert!(
        refused.is_err(),
        "the miss hook resolves nothing: {refused:?}"
    );
    let st = status_json(&listen);
    assert!(
        st["recent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["address"] == "198.51.100.7" && r["outcome"] == "ignored"),
        "ignored by generation 1: {st:#}"
    );

    manifest("miss:\n  chain:\n  - module: cfp-scope.wasm\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_get(&format!("http://{listen}/metrics")).contains("meshfilter_filter_generation 2")
    {
        assert!(Instant::now() < deadline, "generation 2 never loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = connect_from(&pods.ns_a, POD_B_REGIONAL, Duration::from_secs(5))
        .expect("connects once cfp-scope decides the miss");
    assert!(
        took < Duration::from_millis(2500),
        "first retransmit, took {took:?}"
    );
    stop(&mut node);
}

/// A resolved entry lives as long as the mesh's pin: once nobody resolves it again, it
/// leaves the local cache and then the standalone ipcache, and the next packet misses
/// again (and is resolved again).
#[test]
fn resolved_entries_expire_with_their_pin() {
    let mesh = Mesh::start_with("resolve: {pinTtl: 2s}\n");
    let pods = Pods::new("x");
    let _server = Server::start(&pods.ns_b);
    let (config, listen) = mesh.node_config("expiry", &pods.host_a, "");
    let mut node = spawn_node(&config, &listen);
    connect_from(&pods.ns_a, POD_B_REGIONAL, Duration::from_secs(5)).expect("resolved");
    let map_id = status_json(&listen)["ipcacheMapId"].as_u64().unwrap();
    let has_entry = || {
        bpftool_dump(map_id)
            .iter()
            .any(|(k, _)| k[0..4] == 64u32.to_ne_bytes() && k[8..12] == [198, 51, 100, 7])
    };
    assert!(has_entry(), "installed");
    let deadline = Instant::now() + Duration::from_secs(15);
    while has_entry() {
        assert!(Instant::now() < deadline, "the entry outlived its pin");
        std::thread::sleep(Duration::from_millis(200));
    }
    let cached = etcdctl(
        &mesh.local.endpoint(),
        &["get", "cilium/cache/ip/v1/cluster-b/198.51.100.7"],
    );
    assert!(cached.is_empty(), "gone from the local cache too: {cached}");
    let took = connect_from(&pods.ns_a, POD_B_REGIONAL, Duration::from_secs(5)).expect("again");
    assert!(
        took >= Duration::from_millis(900),
        "missed again, took {took:?}"
    );
    stop(&mut node);
}

/// The prefixes of a standalone ipcache as bpftool reads it, each with its identity and
/// tunnel endpoint, decoded from Cilium's layout (key: prefixlen counting the 32 bits of
/// cluster ID, pad and family; family at byte 7; the address from byte 8. Value:
/// identity, then the IPv4 tunnel endpoint).
fn ipcache_prefixes(map_id: u64) -> BTreeMap<String, (u32, [u8; 4])> {
    bpftool_dump(map_id)
        .into_iter()
        .map(|(k, v)| {
            let bits = u32::from_ne_bytes(k[0..4].try_into().unwrap()) - 32;
            let addr = match k[7] {
                1 => IpAddr::from(<[u8; 4]>::try_from(&k[8..12]).unwrap()),
                2 => IpAddr::from(<[u8; 16]>::try_from(&k[8..24]).unwrap()),
                family => panic!("family {family} in {k:?}"),
            };
            let identity = u32::from_ne_bytes(v[0..4].try_into().unwrap());
            let tunnel = <[u8; 4]>::try_from(&v[4..8]).unwrap();
            (format!("{addr}/{bits}"), (identity, tunnel))
        })
        .collect()
}

/// The state `meshfilter node` owns is its program's maps. After `kill -9` and a restart
/// they must hold exactly what the local cache says: every cached entry reinstalled
/// (the resolved one included while its pin lasts), and once the pin runs out, no /32 of
/// it left behind; and the address resolves again on its next miss.
#[test]
fn after_kill_9_and_restart_the_maps_hold_exactly_the_cache() {
    let mesh = Mesh::start_with("resolve: {pinTtl: 8s}\n");
    let pods = Pods::new("k");
    let _server = Server::start(&pods.ns_b);
    let (config, listen) = mesh.node_config("restart", &pods.host_a, "");
    let mut node = spawn_node(&config, &listen);
    connect_from(&pods.ns_a, POD_B_REGIONAL, Duration::from_secs(5)).expect("resolved");
    let first_map = status_json(&listen)["ipcacheMapId"].as_u64().unwrap();
    assert!(ipcache_prefixes(first_map).contains_key("198.51.100.7/32"));

    node.kill().unwrap();
    node.wait().unwrap();
    assert_eq!(
        attached(&pods.host_a),
        0,
        "the killed agent's program is gone"
    );

    let mut node = spawn_node(&config, &listen);
    assert_eq!(attached(&pods.host_a), 1, "attached once after the restart");
    let map = status_json(&listen)["ipcacheMapId"].as_u64().unwrap();
    let cache_has_regional = || {
        !etcdctl(
            &mesh.local.endpoint(),
            &["get", "cilium/cache/ip/v1/cluster-b/198.51.100.7"],
        )
        .is_empty()
    };
    assert!(
        cache_has_regional(),
        "the restart took longer than the 8 s pin; the test needs a longer pin"
    );
    let tunnel = [203, 0, 113, 2];
    // What the cache holds now: the synced pod, the pinned resolved pod, the remote pod
    // CIDR as world tunnelled to its node, and the world default routes.
    let mut want: BTreeMap<String, (u32, [u8; 4])> = BTreeMap::from([
        ("0.0.0.0/0".to_string(), (9, [0; 4])),
        ("::/0".to_string(), (10, [0; 4])),
        ("198.51.100.0/24".to_string(), (9, tunnel)),
        ("198.51.100.8/32".to_string(), (131_074, tunnel)),
        ("198.51.100.7/32".to_string(), (131_073, tunnel)),
    ]);
    assert!(
        meshfilter_tests::wait_for(Duration::from_secs(5), || ipcache_prefixes(map) == want),
        "after the restart, while pinned: {:?}, want {want:?}",
        ipcache_prefixes(map)
    );

    // The pin runs out: the entry leaves the cache, and the map with it.
    want.remove("198.51.100.7/32");
    assert!(
        meshfilter_tests::wait_for(Duration::from_secs(20), || ipcache_prefixes(map) == want),
        "after the pin ran out: {:?}, want {want:?}",
        ipcache_prefixes(map)
    );
    assert!(!cache_has_regional(), "the resolved entry left the cache");

    // Nothing stale: the next connection misses again and is resolved again.
    let took = connect_from(&pods.ns_a, POD_B_REGIONAL, Duration::from_secs(5)).expect("again");
    assert!(
        took >= Duration::from_millis(900),
        "missed and resolved again, took {took:?}"
    );
    stop(&mut node);
    assert_eq!(attached(&pods.host_a), 0);
}
