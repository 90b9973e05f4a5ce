//! The cluster config under `cilium/cluster-config/<cluster>`, which agents require before
//! they watch a cluster.
//!
//! Mirrors `pkg/clustermesh/types` `CiliumClusterConfig` and
//! `CiliumClusterConfigCapabilities`: every field is `omitempty` (so `false`, `0` and `""`
//! are left out), except `capabilities`, a struct Go always writes, and
//! `serviceExportsEnabled`, a `*bool` written whenever it is set, `false` included.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::go_json::null_as_default;
use crate::keys::ClusterName;
use crate::value::{KvstoreValue, ValueError, parse_json};

/// A cluster's config (mirrors `CiliumClusterConfig`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CiliumClusterConfig {
    /// Cluster ID (`id`), 1..=255 or 1..=511.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_zero"
    )]
    pub id: u32,
    /// What the cluster's kvstore offers (`capabilities`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub capabilities: Capabilities,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Capabilities of a cluster's kvstore (mirrors `CiliumClusterConfigCapabilities`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Per-prefix sync canaries are written (`syncedCanaries`): readers wait for them.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_false"
    )]
    pub synced_canaries: bool,
    /// The data is a kvstoremesh mirror under `cilium/cache/...` (`cached`).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_false"
    )]
    pub cached: bool,
    /// Size of the mesh the cluster was built for, 255 or 511 (`maxConnectedClusters`);
    /// 0 when unset.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_zero"
    )]
    pub max_connected_clusters: u32,
    /// Whether MCS-API ServiceExports are exported (`serviceExportsEnabled`); `None` means
    /// the cluster predates MCS support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_exports_enabled: Option<bool>,
    /// Which service format the cluster exports (`endpointSlicesExportMode`).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "EndpointSlicesExportMode::is_services_only"
    )]
    pub endpoint_slices_export_mode: EndpointSlicesExportMode,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// How a cluster exports global services (`endpointSlicesExportMode`, set by the hidden
/// flag `--clustermesh-service-v2`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum EndpointSlicesExportMode {
    /// `""`: legacy `services/v1` only.
    #[default]
    ServicesOnly,
    /// `services-and-endpointslices`: both formats.
    ServicesAndEndpointSlices,
    /// `endpointslices-only`: `endpointslices/v1` only; legacy services are not exported.
    EndpointSlicesOnly,
    /// A mode this crate does not know, kept verbatim.
    Other(String),
}

impl EndpointSlicesExportMode {
    /// The value as Cilium spells it.
    pub fn as_str(&self) -> &str {
        match self {
            EndpointSlicesExportMode::ServicesOnly => "",
            EndpointSlicesExportMode::ServicesAndEndpointSlices => "services-and-endpointslices",
            EndpointSlicesExportMode::EndpointSlicesOnly => "endpointslices-only",
            EndpointSlicesExportMode::Other(other) => other,
        }
    }

    fn is_services_only(&self) -> bool {
        *self == EndpointSlicesExportMode::ServicesOnly
    }
}

impl From<String> for EndpointSlicesExportMode {
    fn from(text: String) -> Self {
        match text.as_str() {
            "" => EndpointSlicesExportMode::ServicesOnly,
            "services-and-endpointslices" => EndpointSlicesExportMode::ServicesAndEndpointSlices,
            "endpointslices-only" => EndpointSlicesExportMode::EndpointSlicesOnly,
            _ => EndpointSlicesExportMode::Other(text),
        }
    }
}

impl From<EndpointSlicesExportMode> for String {
    fn from(mode: EndpointSlicesExportMode) -> String {
        match mode {
            EndpointSlicesExportMode::Other(other) => other,
            known => known.as_str().to_owned(),
        }
    }
}

impl fmt::Display for EndpointSlicesExportMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `key` is the whole key, `cilium/cluster-config/<cluster>`, and is only named in errors.
impl KvstoreValue for CiliumClusterConfig {
    fn parse_with_limit(
        cluster: &ClusterName,
        key: &str,
        value: &[u8],
        max_len: usize,
    ) -> Result<Self, ValueError> {
        parse_json(cluster, key, value, max_len, "cluster config")
    }
}

impl CiliumClusterConfig {
    /// Whether a cluster with this config exports `resource`, as kvstoremesh enables its
    /// reflectors (`WithEnabledOverride`): service exports when `serviceExportsEnabled` is
    /// set at all, endpoint slices unless it exports services only, legacy services unless
    /// it exports endpoint slices only; endpoints, identities and nodes always.
    pub fn exports(&self, resource: crate::Resource) -> bool {
        let slices = &self.capabilities.endpoint_slices_export_mode;
        match resource {
            crate::Resource::ServiceExports => self.capabilities.service_exports_enabled.is_some(),
            crate::Resource::EndpointSlices => *slices != EndpointSlicesExportMode::ServicesOnly,
            crate::Resource::Services => *slices != EndpointSlicesExportMode::EndpointSlicesOnly,
            crate::Resource::Endpoints | crate::Resource::Identities | crate::Resource::Nodes => {
                true
            }
        }
    }

    /// Compact JSON, as Cilium writes it.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self)
            .expect("a CiliumClusterConfig always serialises: string keys, no fallible fields")
    }

    /// The config kvstoremesh writes into its local etcd for a cluster it mirrors: this
    /// one with `syncedCanaries` and `cached` set, everything else copied.
    pub fn as_cached(&self) -> Self {
        let mut cached = self.clone();
        cached.capabilities.synced_canaries = true;
        cached.capabilities.cached = true;
        cached
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testdata;

    fn round_trip(value: &Value) -> (CiliumClusterConfig, Value) {
        let c = ClusterName::new("cluster3").unwrap();
        let config = CiliumClusterConfig::parse(
            &c,
            "cilium/cluster-config/cluster3",
            &serde_json::to_vec(value).unwrap(),
        )
        .unwrap();
        let again = serde_json::from_slice(&config.to_json_bytes()).unwrap();
        (config, again)
    }

    #[test]
    fn exported_resources_follow_the_capabilities() {
        use crate::Resource;
        use crate::Resource::*;
        let parse = |v: Value| {
            let c = ClusterName::new("c").unwrap();
            CiliumClusterConfig::parse(&c, "k", v.to_string().as_bytes()).unwrap()
        };
        let legacy = parse(json!({"id": 1, "capabilities": {"syncedCanaries": true}}));
        let exported = |c: &CiliumClusterConfig| {
            Resource::ALL
                .iter()
                .filter(|r| c.exports(**r))
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(exported(&legacy), [Endpoints, Identities, Nodes, Services]);
        let both = parse(
            json!({"id": 1, "capabilities": {"serviceExportsEnabled": false,
            "endpointSlicesExportMode": "services-and-endpointslices"}}),
        );
        assert_eq!(exported(&both).len(), 6);
        let v2 = parse(
            json!({"id": 1, "capabilities": {"endpointSlicesExportMode": "endpointslices-only"}}),
        );
        assert_eq!(
            exported(&v2),
            [Endpoints, Identities, Nodes, EndpointSlices]
        );
    }

    #[test]
    fn cilium_sample_round_trips() {
        let misc: Value = serde_json::from_str(testdata::MISC).unwrap();
        let value = &misc["cluster-config"]["value"];
        let (config, again) = round_trip(value);
        assert_eq!(&again, value);
        assert_eq!(config.id, 3);
        assert!(config.capabilities.synced_canaries && !config.capabilities.cached);
        assert_eq!(config.capabilities.max_connected_clusters, 255);
        assert_eq!(config.capabilities.service_exports_enabled, Some(false));
        assert_eq!(
            config.capabilities.endpoint_slices_export_mode,
            EndpointSlicesExportMode::ServicesAndEndpointSlices
        );
    }

    #[test]
    fn omitempty_as_in_go() {
        // clusterconfig.txtar: cached absent when false, serviceExportsEnabled printed.
        let text = r#"{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":false}}"#;
        let (config, _) = round_trip(&serde_json::from_str(text).unwrap());
        assert_eq!(String::from_utf8(config.to_json_bytes()).unwrap(), text);

        // Nothing set: Go still writes the capabilities struct.
        assert_eq!(
            CiliumClusterConfig::default().to_json_bytes(),
            br#"{"capabilities":{}}"#
        );
        let (config, again) = round_trip(
            &json!({"id":1,"capabilities":{"cached":false,"serviceExportsEnabled":null}}),
        );
        assert_eq!(config.capabilities.service_exports_enabled, None);
        assert_eq!(again, json!({"id":1,"capabilities":{}}));
        let (config, _) = round_trip(&json!({"id":1}));
        assert_eq!(config.capabilities, Capabilities::default());
    }

    #[test]
    fn as_cached_is_what_kvstoremesh_writes() {
        let config: CiliumClusterConfig = serde_json::from_value(json!({"id":3,"capabilities":{
            "syncedCanaries":true,"maxConnectedClusters":511,"serviceExportsEnabled":true,
            "endpointSlicesExportMode":"endpointslices-only"}}))
        .unwrap();
        let cached: Value = serde_json::from_slice(&config.as_cached().to_json_bytes()).unwrap();
        assert_eq!(
            cached,
            json!({"id":3,"capabilities":{"syncedCanaries":true,"cached":true,
                "maxConnectedClusters":511,"serviceExportsEnabled":true,
                "endpointSlicesExportMode":"endpointslices-only"}})
        );
        let bare = CiliumClusterConfig {
            id: 9,
            ..Default::default()
        }
        .as_cached();
        assert_eq!(
            bare.to_json_bytes(),
            br#"{"id":9,"capabilities":{"syncedCanaries":true,"cached":true}}"#
        );
    }

    #[test]
    fn unknown_fields_and_modes_survive() {
        let value = json!({"id":4,"future":[1],"capabilities":{"syncedCanaries":true,
            "endpointSlicesExportMode":"something-new","newCapability":{"a":true}}});
        let (config, again) = round_trip(&value);
        assert_eq!(again, value);
        assert_eq!(
            config.capabilities.endpoint_slices_export_mode,
            EndpointSlicesExportMode::Other("something-new".into())
        );
    }

    #[test]
    fn errors_name_cluster_and_key() {
        let c = ClusterName::new("cluster3").unwrap();
        let err =
            CiliumClusterConfig::parse(&c, "cilium/cluster-config/cluster3", br#"{"id":"three"}"#)
                .unwrap_err();
        assert!(err.to_string().starts_with(
            "cluster cluster3, key cilium/cluster-config/cluster3: malformed cluster config value"
        ));
    }
}
