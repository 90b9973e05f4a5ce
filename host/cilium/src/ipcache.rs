//! The endpoint value: one `IPIdentityPair` per pod IP, under
//! `cilium/state/ip/v1/default/<ip>` at a source and `cilium/cache/ip/v1/<cluster>/<ip>` in
//! a kvstoremesh cache.
//!
//! Mirrors `pkg/identity/identity.go` `IPIdentityPair` ("WARNING - STABLE API") and the
//! reader in `IPIdentityPair.Unmarshal`, which refuses a value whose IP does not reproduce
//! its key. The `SyncScope` field is the CFP-44921 extension (PoC `yuecong/cilium`), which
//! unmodified Cilium ignores.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::go_json::{self, null_as_default};
use crate::identity::identity_in_cluster_range;
use crate::keys::ClusterName;
use crate::value::{KvstoreValue, ValueError, parse_json};

/// A named port of an endpoint (mirrors `pkg/identity` `NamedPort`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    /// Port name, e.g. `http`.
    #[serde(rename = "Name", default, deserialize_with = "null_as_default")]
    pub name: String,
    /// Port number.
    #[serde(rename = "Port", default, deserialize_with = "null_as_default")]
    pub port: u16,
    /// Protocol as Cilium spells it, e.g. `TCP`.
    #[serde(rename = "Protocol", default, deserialize_with = "null_as_default")]
    pub protocol: String,
}

/// An endpoint IP and its security identity, as stored in the kvstore (mirrors
/// `pkg/identity` `IPIdentityPair`).
///
/// Reading is as tolerant as Go's: `null` or absent fields take their zero value, `Mask`
/// may be absent, `null` or base64, and the scope is accepted as `SyncScope` or `syncScope`
/// (Go matches names case-insensitively). Unknown fields are kept in [`extra`](Self::extra)
/// and written back. Writing follows Cilium's field order with `SyncScope` last; string
/// fields Cilium marks `omitempty` are left out when empty.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct IpIdentityPair {
    /// The endpoint IP (`IP`), canonical: IPv4-mapped IPv6 reads as IPv4, as Go prints it.
    #[serde(rename = "IP", with = "go_json::ip")]
    pub ip: IpAddr,
    /// `Mask` as raw bytes; `None` for a host entry (the normal case). A present mask makes
    /// the key `ip/len`.
    #[serde(
        rename = "Mask",
        default,
        deserialize_with = "go_json::opt_mask::deserialize"
    )]
    pub mask: Option<Vec<u8>>,
    /// IP of the node hosting the endpoint (`HostIP`), the ipcache tunnel endpoint; `None`
    /// when empty.
    #[serde(rename = "HostIP", default, with = "go_json::opt_ip")]
    pub host_ip: Option<IpAddr>,
    /// Numeric security identity (`ID`).
    #[serde(rename = "ID", default, deserialize_with = "null_as_default")]
    pub id: u32,
    /// IPsec key index (`Key`), 0 without encryption.
    #[serde(rename = "Key", default, deserialize_with = "null_as_default")]
    pub key: u8,
    /// Free-form metadata (`Metadata`), empty from clustermesh-apiserver.
    #[serde(rename = "Metadata", default, deserialize_with = "null_as_default")]
    pub metadata: String,
    /// Pod namespace (`K8sNamespace`).
    #[serde(rename = "K8sNamespace", default, deserialize_with = "null_as_default")]
    pub k8s_namespace: String,
    /// Pod name (`K8sPodName`).
    #[serde(rename = "K8sPodName", default, deserialize_with = "null_as_default")]
    pub k8s_pod_name: String,
    /// Pod UID (`K8sPodUID`, newest Cilium), from the endpoint's owner Pod reference.
    #[serde(rename = "K8sPodUID", default, deserialize_with = "null_as_default")]
    pub k8s_pod_uid: String,
    /// Pod service account (`K8sServiceAccount`).
    #[serde(
        rename = "K8sServiceAccount",
        default,
        deserialize_with = "null_as_default"
    )]
    pub k8s_service_account: String,
    /// Named ports (`NamedPorts`).
    #[serde(rename = "NamedPorts", default, deserialize_with = "null_as_default")]
    pub named_ports: Vec<NamedPort>,
    /// Raw CFP-44921 scope (`SyncScope`, also read as `syncScope`); `None` when absent or
    /// empty, which the CFP reads as global.
    #[serde(
        rename = "SyncScope",
        alias = "syncScope",
        default,
        deserialize_with = "non_empty"
    )]
    pub sync_scope: Option<String>,
    /// Fields this crate does not know, kept verbatim so a value round-trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Names written by [`IpIdentityPair`]'s own fields; an [`extra`](IpIdentityPair::extra)
/// entry with one of these names is not written twice.
const KNOWN_FIELDS: [&str; 13] = [
    "IP",
    "Mask",
    "HostIP",
    "ID",
    "Key",
    "Metadata",
    "K8sNamespace",
    "K8sPodName",
    "K8sPodUID",
    "K8sServiceAccount",
    "NamedPorts",
    "SyncScope",
    "syncScope",
];

fn non_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// How to write an absent `Mask`: the one difference between Cilium releases that matters
/// when writing a host entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaskForm {
    /// Leave `Mask` out (newest Cilium: `omitempty`).
    #[default]
    Omit,
    /// Write `"Mask": null` (Cilium up to 1.19, where the field has no `omitempty`).
    Null,
}

impl IpIdentityPair {
    /// A host entry for `ip` with everything else empty.
    pub fn new(ip: IpAddr) -> Self {
        IpIdentityPair {
            ip: ip.to_canonical(),
            mask: None,
            host_ip: None,
            id: 0,
            key: 0,
            metadata: String::new(),
            k8s_namespace: String::new(),
            k8s_pod_name: String::new(),
            k8s_pod_uid: String::new(),
            k8s_service_account: String::new(),
            named_ports: Vec::new(),
            sync_scope: None,
            extra: Map::new(),
        }
    }

    /// The endpoint IP.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The hosting node's IP, if set.
    pub fn host_ip(&self) -> Option<IpAddr> {
        self.host_ip
    }

    /// The raw scope recorded at the source (`SyncScope`), `None` when absent or empty.
    /// `meshfilter_contract::scope::SyncScope::parse` gives it meaning.
    pub fn scope_raw(&self) -> Option<&str> {
        self.sync_scope.as_deref()
    }

    /// Whether this is a host entry (no mask), as `IsHost()`.
    pub fn is_host(&self) -> bool {
        self.mask.is_none()
    }

    /// The key suffix this value belongs under (`PrefixString()`): the IP alone for a host
    /// entry, else `ip/len`, where a non-prefix mask counts as length 0 as in Go.
    pub fn prefix_string(&self) -> String {
        match &self.mask {
            None => self.ip.to_string(),
            Some(mask) => format!("{}/{}", self.ip, go_json::mask_ones(mask).unwrap_or(0)),
        }
    }

    /// The entry as a prefix: `/32` or `/128` for a host entry. `None` if the mask is not a
    /// prefix mask or does not fit the address family.
    pub fn prefix(&self) -> Option<IpNet> {
        match &self.mask {
            None => Some(IpNet::from(self.ip)),
            Some(mask) => go_json::ipnet_from_parts(self.ip, mask).ok(),
        }
    }

    /// Whether [`id`](Self::id) may come from cluster `cluster_id` (see
    /// [`identity_in_cluster_range`]); agents drop entries for which this is false.
    pub fn identity_in_cluster_range(&self, cluster_id: u32, max_connected_clusters: u32) -> bool {
        identity_in_cluster_range(self.id, cluster_id, max_connected_clusters)
    }

    /// Compact JSON in the newest form (no `Mask` for a host entry).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        self.to_json_bytes_in(MaskForm::Omit)
    }

    /// Compact JSON, writing an absent mask as `form` says.
    pub fn to_json_bytes_in(&self, form: MaskForm) -> Vec<u8> {
        serde_json::to_vec(&PairJson { pair: self, form })
            .expect("an IpIdentityPair always serialises: string keys, no fallible fields")
    }
}

/// `key` is the key suffix after `cilium/state/ip/v1/default/` or
/// `cilium/cache/ip/v1/<cluster>/`. Fails with [`ValueError::TooLarge`],
/// [`ValueError::Json`], or [`ValueError::IpKeyMismatch`] when
/// [`prefix_string`](IpIdentityPair::prefix_string) is not the key (Cilium's "IP address
/// does not match key").
impl KvstoreValue for IpIdentityPair {
    fn parse_with_limit(
        cluster: &ClusterName,
        key_suffix: &str,
        value: &[u8],
        max_len: usize,
    ) -> Result<Self, ValueError> {
        let pair: IpIdentityPair =
            parse_json(cluster, key_suffix, value, max_len, "ipcache entry")?;
        let value_prefix = pair.prefix_string();
        if value_prefix != key_suffix {
            return Err(ValueError::IpKeyMismatch {
                cluster: cluster.to_string(),
                key: key_suffix.to_owned(),
                value_prefix,
            });
        }
        Ok(pair)
    }
}

impl Serialize for IpIdentityPair {
    /// Writes the newest form; see [`IpIdentityPair::to_json_bytes_in`] for the other.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PairJson {
            pair: self,
            form: MaskForm::Omit,
        }
        .serialize(s)
    }
}

/// The written form of a pair: Cilium's field order, then unknown fields, then `SyncScope`.
struct PairJson<'a> {
    pair: &'a IpIdentityPair,
    form: MaskForm,
}

impl Serialize for PairJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.pair;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("IP", &p.ip.to_string())?;
        match (&p.mask, self.form) {
            (Some(mask), _) => m.serialize_entry("Mask", &go_json::encode_mask(mask))?,
            (None, MaskForm::Null) => m.serialize_entry("Mask", &())?,
            (None, MaskForm::Omit) => {}
        }
        m.serialize_entry(
            "HostIP",
            &p.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        )?;
        m.serialize_entry("ID", &p.id)?;
        m.serialize_entry("Key", &p.key)?;
        m.serialize_entry("Metadata", &p.metadata)?;
        for (name, value) in [
            ("K8sNamespace", &p.k8s_namespace),
            ("K8sPodName", &p.k8s_pod_name),
            ("K8sPodUID", &p.k8s_pod_uid),
            ("K8sServiceAccount", &p.k8s_service_account),
        ] {
            if !value.is_empty() {
                m.serialize_entry(name, value)?;
            }
        }
        if !p.named_ports.is_empty() {
            m.serialize_entry("NamedPorts", &p.named_ports)?;
        }
        for (name, value) in &p.extra {
            if !KNOWN_FIELDS.contains(&name.as_str()) {
                m.serialize_entry(name, value)?;
            }
        }
        if let Some(scope) = &p.sync_scope {
            m.serialize_entry("SyncScope", scope)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::keys::parse_key;
    use crate::testdata;
    use crate::value::DEFAULT_MAX_VALUE_LEN;

    fn c3() -> ClusterName {
        ClusterName::new("cluster3").unwrap()
    }

    fn parse_value(key: &str, value: &Value) -> Result<IpIdentityPair, ValueError> {
        IpIdentityPair::parse(&c3(), key, &serde_json::to_vec(value).unwrap())
    }

    fn reserialised(pair: &IpIdentityPair) -> Value {
        serde_json::from_slice(&pair.to_json_bytes()).unwrap()
    }

    #[test]
    fn cilium_samples_round_trip() {
        let entries = testdata::expected_entries(testdata::ENDPOINTS_EXPECTED);
        assert_eq!(entries.len(), 4);
        for (key, value) in entries {
            let suffix = parse_key(&key).unwrap().suffix;
            let pair = parse_value(suffix, &value).unwrap();
            assert_eq!(reserialised(&pair), value, "{key}");
            assert_eq!(pair.prefix_string(), suffix);
        }
    }

    #[test]
    fn writes_cilium_field_order_compactly() {
        let mut pair = IpIdentityPair::new("10.244.2.74".parse().unwrap());
        pair.host_ip = Some("172.18.0.2".parse().unwrap());
        pair.id = 199475;
        pair.key = 5;
        pair.k8s_namespace = "bar".into();
        pair.k8s_pod_name = "cep-002".into();
        pair.k8s_pod_uid = "cep-pod-uid".into();
        pair.k8s_service_account = "default".into();
        pair.named_ports = vec![NamedPort {
            name: "http".into(),
            port: 8080,
            protocol: "TCP".into(),
        }];
        pair.sync_scope = Some("regional".into());
        pair.extra.insert("Zzz".into(), json!(1));
        assert_eq!(
            String::from_utf8(pair.to_json_bytes()).unwrap(),
            r#"{"IP":"10.244.2.74","HostIP":"172.18.0.2","ID":199475,"Key":5,"Metadata":"","K8sNamespace":"bar","K8sPodName":"cep-002","K8sPodUID":"cep-pod-uid","K8sServiceAccount":"default","NamedPorts":[{"Name":"http","Port":8080,"Protocol":"TCP"}],"Zzz":1,"SyncScope":"regional"}"#
        );
        assert_eq!(serde_json::to_vec(&pair).unwrap(), pair.to_json_bytes());
    }

    #[test]
    fn mask_null_absent_and_base64() {
        // The form Cilium up to 1.19 writes (ciliumendpoints.txtar).
        let legacy = json!({"IP":"10.244.1.79","Mask":null,"HostIP":"172.18.0.3","ID":199472,
            "Key":0,"Metadata":"","K8sNamespace":"foo","K8sPodName":"cep-001",
            "K8sServiceAccount":"default"});
        let pair = parse_value("10.244.1.79", &legacy).unwrap();
        assert!(pair.is_host());
        let again: Value = serde_json::from_slice(&pair.to_json_bytes_in(MaskForm::Null)).unwrap();
        assert_eq!(again, legacy);
        let mut newest = legacy.clone();
        newest.as_object_mut().unwrap().remove("Mask");
        assert_eq!(reserialised(&pair), newest);
        assert_eq!(parse_value("10.244.1.79", &newest).unwrap(), pair);

        // A CIDR entry: the key carries the prefix length.
        let cidr = json!({"IP":"10.0.0.0","Mask":"/wAAAA==","HostIP":"","ID":16777217,"Key":0,
            "Metadata":""});
        let pair = parse_value("10.0.0.0/8", &cidr).unwrap();
        assert_eq!(pair.mask.as_deref(), Some(&[255u8, 0, 0, 0][..]));
        assert_eq!(pair.prefix().unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(pair.host_ip(), None);
        assert_eq!(reserialised(&pair), cidr);
        assert!(matches!(
            parse_value("10.0.0.0", &cidr),
            Err(ValueError::IpKeyMismatch { value_prefix, .. }) if value_prefix == "10.0.0.0/8"
        ));
        assert!(matches!(
            parse_value("10.0.0.0/8", &json!({"IP":"10.0.0.0","Mask":"not base64!"})),
            Err(ValueError::Json { .. })
        ));
    }

    #[test]
    fn unknown_fields_survive() {
        let value = json!({"IP":"10.0.0.1","HostIP":"192.168.0.1","CiliumIP":"10.0.0.9","ID":300,
            "Key":0,"Metadata":"m","Future":{"nested":[1,2,{"x":null}]},"SyncScope":"regional"});
        let pair = parse_value("10.0.0.1", &value).unwrap();
        assert_eq!(pair.extra.len(), 2);
        assert_eq!(reserialised(&pair), value);
    }

    #[test]
    fn scope_accepted_in_both_spellings_written_once() {
        for name in ["SyncScope", "syncScope"] {
            let value = json!({"IP":"10.0.0.1","HostIP":"","ID":1,"Key":0,"Metadata":"",
                name: "regional"});
            let pair = parse_value("10.0.0.1", &value).unwrap();
            assert_eq!(pair.scope_raw(), Some("regional"), "{name}");
            let text = String::from_utf8(pair.to_json_bytes()).unwrap();
            assert!(text.ends_with(r#","SyncScope":"regional"}"#), "{text}");
            assert!(!text.contains("syncScope"), "{text}");
        }
        let empty = json!({"IP":"10.0.0.1","SyncScope":""});
        assert_eq!(parse_value("10.0.0.1", &empty).unwrap().scope_raw(), None);
        let absent = json!({"IP":"10.0.0.1"});
        assert_eq!(parse_value("10.0.0.1", &absent).unwrap().scope_raw(), None);
    }

    #[test]
    fn nulls_read_as_go_zero_values() {
        let value = json!({"IP":"10.0.0.1","HostIP":null,"ID":null,"Key":null,"Metadata":null,
            "K8sNamespace":null,"NamedPorts":null});
        let pair = parse_value("10.0.0.1", &value).unwrap();
        assert_eq!(pair, IpIdentityPair::new("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn key_must_be_the_canonical_ip() {
        // Go prints the canonical form (RFC 5952, dotted IPv4), whatever the value's spelling.
        let v6 = json!({"IP":"FD00:10:244:1:0:0:0:D643","HostIP":"172.18.0.3","ID":1,"Key":0,
            "Metadata":""});
        let pair = parse_value("fd00:10:244:1::d643", &v6).unwrap();
        assert_eq!(reserialised(&pair)["IP"], "fd00:10:244:1::d643");
        assert!(parse_value("FD00:10:244:1:0:0:0:D643", &v6).is_err());
        let mapped = json!({"IP":"::ffff:10.0.0.1"});
        assert_eq!(
            parse_value("10.0.0.1", &mapped).unwrap().ip(),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn errors_name_cluster_and_key() {
        let c = c3();
        let err = parse_value("10.0.0.2", &json!({"IP":"10.0.0.1"})).unwrap_err();
        assert!(
            matches!(&err, ValueError::IpKeyMismatch { cluster, key, value_prefix }
            if cluster == "cluster3" && key == "10.0.0.2" && value_prefix == "10.0.0.1")
        );
        assert_eq!(
            err.to_string(),
            "cluster cluster3, key 10.0.0.2: IP address does not match key (value is for 10.0.0.1)"
        );

        let err = IpIdentityPair::parse(&c, "10.0.0.1", b"{\"IP\":").unwrap_err();
        assert!(
            matches!(&err, ValueError::Json { cluster, key, kind: "ipcache entry", .. }
            if cluster == "cluster3" && key == "10.0.0.1")
        );
        assert!(
            err.to_string()
                .starts_with("cluster cluster3, key 10.0.0.1: malformed ipcache entry")
        );

        for bad in [
            r#"{"IP":"10.0.0.300"}"#,
            r#"{"IP":"10.0.0.1","Key":256}"#,
            r#"{"HostIP":"x"}"#,
            "[]",
        ] {
            assert!(
                matches!(
                    IpIdentityPair::parse(&c, "10.0.0.1", bad.as_bytes()),
                    Err(ValueError::Json { .. })
                ),
                "{bad}"
            );
        }

        let mut big = br#"{"IP":"10.0.0.1","Metadata":""#.to_vec();
        big.resize(DEFAULT_MAX_VALUE_LEN, b'x');
        big.extend_from_slice(b"\"}");
        let err = IpIdentityPair::parse(&c, "10.0.0.1", &big).unwrap_err();
        assert!(
            matches!(&err, ValueError::TooLarge { cluster, key, len, limit }
            if cluster == "cluster3" && key == "10.0.0.1" && *len == DEFAULT_MAX_VALUE_LEN + 2
                && *limit == DEFAULT_MAX_VALUE_LEN)
        );
        assert!(
            IpIdentityPair::parse_with_limit(&c, "10.0.0.1", &big, 2 * DEFAULT_MAX_VALUE_LEN)
                .is_ok()
        );
        assert!(matches!(
            IpIdentityPair::parse_with_limit(&c, "10.0.0.1", br#"{"IP":"10.0.0.1"}"#, 8),
            Err(ValueError::TooLarge {
                len: 17,
                limit: 8,
                ..
            })
        ));
    }

    #[test]
    fn identity_range_of_the_entry() {
        let mut pair = IpIdentityPair::new("10.0.0.1".parse().unwrap());
        pair.id = 199472; // cluster 3 << 16 | 2096
        assert!(pair.identity_in_cluster_range(3, 255));
        assert!(!pair.identity_in_cluster_range(4, 255));
        pair.id = 2; // reserved: world
        assert!(pair.identity_in_cluster_range(4, 255));
    }
}
