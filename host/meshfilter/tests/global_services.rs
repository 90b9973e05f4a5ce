//! Global services and the filters, on real etcd and real processes: a pod the export hook
//! keeps out of endpoint sync (not opted in) is still a backend of a global service in the
//! data a consuming cluster mirrors. Filters decide ipcache entries (endpoints); services
//! and MCS-API service exports are copied verbatim.

use meshfilter_local_etcd::EtcdServer;

use meshfilter_local_etcd::free_port;
use meshfilter_tests::etcdctl::{etcdctl, put_canaries};
use meshfilter_tests::meshfilter_binary;
use meshfilter_tests::process::{stop, wait_ready};

const SERVICE: &str = r#"{"cluster":"remote1","namespace":"shop","name":"web","frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.7.0.10":{"http":{"Protocol":"TCP","Port":8080}},"10.7.0.11":{"http":{"Protocol":"TCP","Port":8080}}},"labels":{},"selector":{"app":"web"},"includeExternal":true,"shared":true,"clusterID":7}"#;

fn endpoint(ip: &str, pod: &str, id: u32) -> String {
    format!(
        r#"{{"IP":"{ip}","Mask":null,"HostIP":"172.30.0.1","ID":{id},"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"{pod}"}}"#
    )
}

#[test]
fn a_pod_kept_out_of_endpoint_sync_is_still_a_global_service_backend() {
    // remote1's unfiltered clustermesh etcd, as clustermesh-apiserver writes it: web-0 opted
    // in (its identity carries the sync label), web-1 not; both back the global service.
    let source = EtcdServer::start("remote1-source");
    let export = EtcdServer::start("remote1-export");
    let local = EtcdServer::start("local");
    let s = source.endpoint();
    etcdctl(
        &s,
        &[
            "put",
            "cilium/cluster-config/remote1",
            r#"{"id":7,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#,
        ],
    );
    etcdctl(
        &s,
        &[
            "put",
            "cilium/state/nodes/v1/remote1/n1",
            r#"{"Name":"n1","Cluster":"remote1","IPAddresses":[{"Type":"InternalIP","IP":"172.30.0.1"}],"ClusterID":7}"#,
        ],
    );
    etcdctl(
        &s,
        &[
            "put",
            "cilium/state/identities/v1/id/459009",
            "k8s:app=web;k8s:clustermesh.cilium.io/sync=true;k8s:io.kubernetes.pod.namespace=shop;",
        ],
    );
    etcdctl(
        &s,
        &[
            "put",
            "cilium/state/identities/v1/id/459010",
            "k8s:app=web;k8s:io.kubernetes.pod.namespace=shop;",
        ],
    );
    etcdctl(
        &s,
        &[
            "put",
            "cilium/state/ip/v1/default/10.7.0.10",
            &endpoint("10.7.0.10", "web-0", 459009),
        ],
    );
    etcdctl(
        &s,
        &[
            "put",
            "cilium/state/ip/v1/default/10.7.0.11",
            &endpoint("10.7.0.11", "web-1", 459010),
        ],
    );
    etcdctl(
        &s,
        &["put", "cilium/state/services/v1/remote1/shop/web", SERVICE],
    );
    put_canaries(&s, "remote1");

    let dir = tempfile::tempdir().unwrap();
    // remote1's meshfilter export: opt-in, as deploy/filters/filters.yaml ships it.
    let export_addr = format!("127.0.0.1:{}", free_port());
    let export_config = dir.path().join("export.yaml");
    std::fs::write(
        &export_config,
        format!(
            "cluster: {{name: remote1}}\nsourceEtcd: {{endpoints: [{s}]}}\n\
             exportEtcd: {{endpoints: [{}]}}\nfilters: {{config: {{default: opt-in}}}}\nlisten: {export_addr}\n",
            export.endpoint()
        ),
    )
    .unwrap();
    let mut exporter =
        meshfilter_binary!().spawn(&["export", "--config", export_config.to_str().unwrap()]);
    wait_ready(&export_addr, "export");

    // The consuming cluster's meshfilter mesh reads remote1 from the export etcd.
    let clusters = dir.path().join("clustermesh");
    std::fs::create_dir(&clusters).unwrap();
    std::fs::write(
        clusters.join("remote1"),
        format!("endpoints:\n- {}\n", export.endpoint()),
    )
    .unwrap();
    let mesh_addr = format!("127.0.0.1:{}", free_port());
    let mesh_config = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh_config,
        format!(
            "cluster: {{name: local}}\nlocalEtcd: {{endpoints: [{}]}}\nclustersDir: {}\nlisten: {mesh_addr}\n",
            local.endpoint(),
            clusters.display()
        ),
    )
    .unwrap();
    let mut mesh = meshfilter_binary!().spawn(&["mesh", "--config", mesh_config.to_str().unwrap()]);
    wait_ready(&mesh_addr, "mesh");

    let l = local.endpoint();
    let ips = etcdctl(
        &l,
        &[
            "get",
            "--prefix",
            "--keys-only",
            "cilium/cache/ip/v1/remote1/",
        ],
    );
    assert!(
        ips.contains("10.7.0.10"),
        "the opted-in pod is mirrored: {ips}"
    );
    assert!(
        !ips.contains("10.7.0.11"),
        "the pod kept out has no ipcache entry: {ips}"
    );
    let service = etcdctl(
        &l,
        &[
            "get",
            "--print-value-only",
            "cilium/cache/services/v1/remote1/shop/web",
        ],
    );
    assert_eq!(
        service.trim(),
        SERVICE,
        "the global service is mirrored verbatim, the kept-out pod among its backends"
    );
    stop(&mut mesh, "mesh");
    stop(&mut exporter, "export");
}
