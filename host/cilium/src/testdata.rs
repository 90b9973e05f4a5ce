//! Cilium's own conversion vectors (clustermesh-apiserver testdata, source cluster
//! `cluster3`, cluster ID 3), shared by the unit tests of every module.

/// Two Namespaces and two CiliumEndpoints (multi-document YAML).
pub(crate) const ENDPOINTS_INPUT: &str = include_str!("../testdata/ciliumendpoints-input.yaml");
/// The `cilium/state/ip/v1/default/<ip>` keys and values for [`ENDPOINTS_INPUT`].
pub(crate) const ENDPOINTS_EXPECTED: &str =
    include_str!("../testdata/ciliumendpoints-expected.json");
/// Two CiliumNodes (multi-document YAML).
pub(crate) const NODES_INPUT: &str = include_str!("../testdata/ciliumnodes-input.yaml");
/// The `cilium/state/nodes/v1/cluster3/<node>` keys and values for [`NODES_INPUT`].
pub(crate) const NODES_EXPECTED: &str = include_str!("../testdata/ciliumnodes-expected.json");
/// An identity key and value, a cluster config, and sync canary keys.
pub(crate) const MISC: &str = include_str!("../testdata/misc.json");

/// The entries of one of the `*-expected.json` objects: (key, value).
pub(crate) fn expected_entries(json: &str) -> Vec<(String, serde_json::Value)> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).expect("expected file is a JSON object");
    map.into_iter().collect()
}
