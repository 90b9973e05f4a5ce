//! How Go's `encoding/json` spells the `net` types Cilium stores, for serde `with`.
//!
//! - `net.IP` is text; a nil IP is written as `""` and `""` or `null` read back as nil.
//!   Go keeps IPv4 in the 16-byte IPv4-mapped form and prints it dotted, so `::ffff:a.b.c.d`
//!   and `a.b.c.d` are the same address: readers here canonicalise to IPv4.
//! - `net.IPMask` is a byte slice, so standard base64 with padding; nil is `null`.
//! - `net.IPNet` (and Cilium's `cidr.CIDR`, which embeds it) is `{"IP": ..., "Mask": ...}`.
//! - A JSON `null` for a string, number, bool, slice or map leaves Go's zero value.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipnet::IpNet;
use serde::de::Error as _;
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Reads `null` as `T::default()`, as Go leaves the zero value for `null`.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Parses IP text as Go's `net.ParseIP` does and returns the address Go would print.
pub(crate) fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Length of the leading run of one bits if `mask` is ones followed by zeros (Go's
/// `IPMask.Size()` when it succeeds); `None` for a non-canonical mask.
pub(crate) fn mask_ones(mask: &[u8]) -> Option<u32> {
    let mut ones = 0;
    let mut seen_zero = false;
    for &byte in mask {
        if seen_zero && byte != 0 {
            return None;
        }
        let leading = byte.leading_ones();
        if leading < 8 {
            // The rest of this byte must be zero.
            if byte << leading != 0 {
                return None;
            }
            seen_zero = true;
        }
        ones += leading;
    }
    Some(ones)
}

/// Base64 text of a `net.IPMask`, as Go writes a byte slice.
pub(crate) fn encode_mask(mask: &[u8]) -> String {
    BASE64.encode(mask)
}

/// Network mask bytes for a prefix: 4 bytes for IPv4, 16 for IPv6, as `net.ParseCIDR`
/// produces them.
pub(crate) fn mask_bytes(net: &IpNet) -> Vec<u8> {
    match net.netmask() {
        IpAddr::V4(m) => m.octets().to_vec(),
        IpAddr::V6(m) => m.octets().to_vec(),
    }
}

/// Builds a prefix from Go's `IP` + `Mask` pair. A 16-byte mask on an IPv4 address is
/// accepted when its first 96 bits are set, as Go's `IPNet.String()` does.
pub(crate) fn ipnet_from_parts(ip: IpAddr, mask: &[u8]) -> Result<IpNet, String> {
    let ones = mask_ones(mask)
        .ok_or_else(|| format!("mask {} is not a prefix mask", BASE64.encode(mask)))?;
    let len = match (ip, mask.len()) {
        (IpAddr::V4(_), 4) | (IpAddr::V6(_), 16) => ones,
        (IpAddr::V4(_), 16) if ones >= 96 => ones - 96,
        _ => {
            return Err(format!(
                "mask of {} bytes does not fit address {ip}",
                mask.len()
            ));
        }
    };
    let len = u8::try_from(len).map_err(|_| format!("prefix length {len} out of range"))?;
    IpNet::new(ip, len).map_err(|e| e.to_string())
}

/// `net.IP` that must be present and valid.
pub(crate) mod ip {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(ip: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(ip)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
        let text = String::deserialize(d)?;
        parse_ip(&text).ok_or_else(|| D::Error::custom(format!("invalid IP address {text:?}")))
    }
}

/// `net.IP` that may be nil: written as `""`, read from `""`, `null` or absence.
pub(crate) mod opt_ip {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_str(""),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) if text.is_empty() => Ok(None),
            Some(text) => parse_ip(&text)
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("invalid IP address {text:?}"))),
        }
    }
}

/// `net.IPMask` for reading: base64 text, or `null` / absent for nil (writers use
/// [`encode_mask`] and decide how to spell nil).
pub(crate) mod opt_mask {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => BASE64
                .decode(text.as_bytes())
                .map(Some)
                .map_err(|e| D::Error::custom(format!("mask {text:?} is not base64: {e}"))),
        }
    }
}

/// Go's `net.IPNet` as it appears in JSON.
#[derive(Deserialize)]
struct IpNetWire {
    #[serde(rename = "IP", with = "ip")]
    ip: IpAddr,
    #[serde(rename = "Mask", deserialize_with = "opt_mask::deserialize", default)]
    mask: Option<Vec<u8>>,
}

impl IpNetWire {
    fn into_ipnet<E: serde::de::Error>(self) -> Result<IpNet, E> {
        let mask = self
            .mask
            .ok_or_else(|| E::custom(format!("CIDR {} has no mask", self.ip)))?;
        ipnet_from_parts(self.ip, &mask).map_err(E::custom)
    }
}

/// Writes one prefix as `{"IP": ..., "Mask": ...}`, keeping host bits as given.
struct IpNetRef<'a>(&'a IpNet);

impl Serialize for IpNetRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("IPNet", 2)?;
        st.serialize_field("IP", &self.0.addr().to_string())?;
        st.serialize_field("Mask", &encode_mask(&mask_bytes(self.0)))?;
        st.end()
    }
}

/// `*cidr.CIDR`: an `IPNet` object, or `null` for nil.
pub(crate) mod opt_ipnet {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(net: &Option<IpNet>, s: S) -> Result<S::Ok, S::Error> {
        match net {
            Some(net) => IpNetRef(net).serialize(s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNet>, D::Error> {
        Option::<IpNetWire>::deserialize(d)?
            .map(IpNetWire::into_ipnet)
            .transpose()
    }
}

/// `[]*cidr.CIDR`: a list of `IPNet` objects, or `null` for a nil slice.
pub(crate) mod opt_ipnet_list {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        nets: &Option<Vec<IpNet>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match nets {
            Some(nets) => s.collect_seq(nets.iter().map(IpNetRef)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<IpNet>>, D::Error> {
        Option::<Vec<IpNetWire>>::deserialize(d)?
            .map(|nets| nets.into_iter().map(IpNetWire::into_ipnet).collect())
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_is_what_go_prints() {
        // (input, what Go's net.IP.String() prints)
        let cases = [
            ("10.244.1.79", "10.244.1.79"),
            ("::ffff:10.244.1.79", "10.244.1.79"),
            ("FD00:10:244:1:0:0:0:D643", "fd00:10:244:1::d643"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
            ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),
            ("::1.2.3.4", "::102:304"),
            ("::", "::"),
            ("::1", "::1"),
        ];
        for (input, go) in cases {
            assert_eq!(
                parse_ip(input).map(|ip| ip.to_string()).as_deref(),
                Some(go),
                "{input}"
            );
        }
        for bad in ["", "010.1.1.1", "10.1.1", "fe80::1%eth0", "1.2.3.4/32"] {
            assert_eq!(parse_ip(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn mask_size_follows_go() {
        assert_eq!(mask_ones(&[255, 255, 255, 0]), Some(24));
        assert_eq!(mask_ones(&[255, 255, 255, 255]), Some(32));
        assert_eq!(mask_ones(&[255, 254, 0, 0]), Some(15));
        assert_eq!(mask_ones(&[]), Some(0));
        assert_eq!(mask_ones(&[255, 0, 255, 0]), None);
        assert_eq!(mask_ones(&[0b1010_0000, 0, 0, 0]), None);
    }

    #[test]
    fn ipnet_from_go_parts() {
        let v4: IpAddr = "10.244.0.0".parse().unwrap();
        assert_eq!(
            ipnet_from_parts(v4, &[255, 255, 255, 0])
                .unwrap()
                .to_string(),
            "10.244.0.0/24"
        );
        let mut mapped = [255u8; 16];
        mapped[15] = 0;
        assert_eq!(
            ipnet_from_parts(v4, &mapped).unwrap().to_string(),
            "10.244.0.0/24"
        );
        assert!(ipnet_from_parts(v4, &[255, 255]).is_err());
        assert!(ipnet_from_parts(v4, &[255, 0, 255, 0]).is_err());
        let v6: IpAddr = "fd00:10:244::".parse().unwrap();
        let net =
            ipnet_from_parts(v6, &BASE64.decode("//////////8AAAAAAAAAAA==").unwrap()).unwrap();
        assert_eq!(net.to_string(), "fd00:10:244::/64");
        assert_eq!(BASE64.encode(mask_bytes(&net)), "//////////8AAAAAAAAAAA==");
    }
}
