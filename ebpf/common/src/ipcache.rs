//! Cilium's ipcache map layout (`cilium_ipcache_v2`, since Cilium 1.18) and the miss
//! event the meshfilter eBPF program sends to userspace.
//!
//! Mirrors `bpf/lib/eps.h` (`struct ipcache_key`, `struct remote_endpoint_info`) so the
//! program can read Cilium's pinned map and the node agent can write entries Cilium's
//! datapath understands. Both sides compile these exact structs.

/// Bits of the LPM key before the address (`IPCACHE_STATIC_PREFIX`): prefix length,
/// cluster ID, pad and family. A /32 IPv4 entry has prefix length 64.
pub const STATIC_PREFIX_BITS: u32 = 32;

/// `family` of an IPv4 key.
pub const FAMILY_IPV4: u8 = 1;
/// `family` of an IPv6 key.
pub const FAMILY_IPV6: u8 = 2;

/// Reserved identity `world` (single-stack clusters).
pub const WORLD_ID: u32 = 2;
/// Reserved identity `world-ipv4` (dual-stack clusters).
pub const WORLD_IPV4_ID: u32 = 9;
/// Reserved identity `world-ipv6` (dual-stack clusters).
pub const WORLD_IPV6_ID: u32 = 10;

/// Whether an identity means "outside the cluster": an ipcache hit carrying it for a
/// pod address is really a miss.
pub const fn is_world(identity: u32) -> bool {
    matches!(identity, WORLD_ID | WORLD_IPV4_ID | WORLD_IPV6_ID)
}

/// `struct ipcache_key` (24 bytes, packed): the LPM trie key.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpcacheKey {
    /// Prefix length in bits, counting [`STATIC_PREFIX_BITS`].
    pub prefixlen: u32,
    /// Cluster ID (0 for remote entries in Cilium's ipcache).
    pub cluster_id: u16,
    /// Padding.
    pub pad1: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Address in network byte order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
}

impl IpcacheKey {
    /// The key for IPv4 prefix `addr/bits`.
    pub const fn v4(addr: [u8; 4], bits: u8) -> IpcacheKey {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        IpcacheKey {
            prefixlen: STATIC_PREFIX_BITS + bits as u32,
            cluster_id: 0,
            pad1: 0,
            family: FAMILY_IPV4,
            addr: a,
        }
    }

    /// The key for IPv6 prefix `addr/bits`.
    pub const fn v6(addr: [u8; 16], bits: u8) -> IpcacheKey {
        IpcacheKey {
            prefixlen: STATIC_PREFIX_BITS + bits as u32,
            cluster_id: 0,
            pad1: 0,
            family: FAMILY_IPV6,
            addr,
        }
    }
}

/// Flag bits of [`RemoteEndpointInfo::flags`] (a C bitfield, least significant first).
pub mod flags {
    /// `flag_skip_tunnel`.
    pub const SKIP_TUNNEL: u8 = 1 << 0;
    /// `flag_has_tunnel_ep`.
    pub const HAS_TUNNEL_EP: u8 = 1 << 1;
    /// `flag_ipv6_tunnel_ep`.
    pub const IPV6_TUNNEL_EP: u8 = 1 << 2;
    /// `flag_remote_cluster`.
    pub const REMOTE_CLUSTER: u8 = 1 << 3;
}

/// `struct remote_endpoint_info` (24 bytes): the ipcache value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteEndpointInfo {
    /// Security identity.
    pub sec_identity: u32,
    /// Tunnel endpoint (the node); IPv4 in the first four bytes.
    pub tunnel_endpoint: [u8; 16],
    /// Padding.
    pub pad: u16,
    /// IPsec key index.
    pub key: u8,
    /// [`flags`] bits.
    pub flags: u8,
}

/// One datapath miss, sent on the ring buffer: an address with no entry more specific
/// than a pod-CIDR or world entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissEvent {
    /// The missed address, network byte order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// Tunnel endpoint of the covering entry, if `covering_prefixlen > 0`.
    pub tunnel_endpoint: [u8; 16],
    /// When the program saw it (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Interface the packet was seen on.
    pub ifindex: u32,
    /// Identity of the covering entry (a world identity, or 0 with no entry).
    pub covering_identity: u32,
    /// Prefix length of the covering entry in address bits (0: none).
    pub covering_prefixlen: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Padding, keeps the size a multiple of 8 for the ring buffer.
    pub pad: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<IpcacheKey>() == 24);
const _: () = assert!(core::mem::size_of::<RemoteEndpointInfo>() == 24);
const _: () = assert!(core::mem::size_of::<MissEvent>().is_multiple_of(8));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_cilium_layout() {
        let k = IpcacheKey::v4([10, 1, 2, 3], 32);
        let prefixlen = k.prefixlen;
        assert_eq!(prefixlen, 64, "a /32 has 32 + 32 bits");
        let (v4_24, v6_128) = (
            IpcacheKey::v4([10, 1, 2, 0], 24).prefixlen,
            IpcacheKey::v6([0; 16], 128).prefixlen,
        );
        assert_eq!((v4_24, v6_128), (56, 160));
        // The address starts at byte 8, as in `struct ipcache_key`.
        // SAFETY: IpcacheKey is repr(C, packed) plain data of 24 bytes.
        let bytes: [u8; 24] = unsafe { core::mem::transmute(k) };
        assert_eq!(&bytes[8..12], &[10, 1, 2, 3]);
        assert_eq!(bytes[7], FAMILY_IPV4);
    }

    #[test]
    fn world_identities() {
        assert!(is_world(2) && is_world(9) && is_world(10));
        assert!(!is_world(1) && !is_world(65_536));
    }
}
