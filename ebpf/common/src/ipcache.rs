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

/// The part of [`IpcacheKey`] after the prefix length: the `data` of an LPM key as aya
/// spells it (`Key<IpcachePrefix>`), so program and userspace share one layout.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpcachePrefix {
    /// Cluster ID (0 for remote entries in Cilium's ipcache).
    pub cluster_id: u16,
    /// Padding.
    pub pad1: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Address in network byte order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
}

impl IpcachePrefix {
    /// An IPv4 address (host bits beyond the prefix must be zero for a stored prefix).
    pub const fn v4(addr: [u8; 4]) -> IpcachePrefix {
        let key = IpcacheKey::v4(addr, 32);
        key.prefix()
    }

    /// An IPv6 address.
    pub const fn v6(addr: [u8; 16]) -> IpcachePrefix {
        IpcachePrefix {
            cluster_id: 0,
            pad1: 0,
            family: FAMILY_IPV6,
            addr,
        }
    }

    /// Bits in an LPM key for a full-length lookup of this address family.
    pub const fn full_prefixlen(&self) -> u32 {
        if self.family == FAMILY_IPV6 {
            STATIC_PREFIX_BITS + 128
        } else {
            STATIC_PREFIX_BITS + 32
        }
    }
}

impl IpcacheKey {
    /// The key without its prefix length.
    pub const fn prefix(&self) -> IpcachePrefix {
        IpcachePrefix {
            cluster_id: self.cluster_id,
            pad1: self.pad1,
            family: self.family,
            addr: self.addr,
        }
    }

    /// Prefix length in address bits (the stored length minus [`STATIC_PREFIX_BITS`]).
    pub const fn address_bits(&self) -> u8 {
        let stored = self.prefixlen;
        stored.saturating_sub(STATIC_PREFIX_BITS) as u8
    }
}

/// Value of the mesh pod-CIDR map: which cluster owns a pod CIDR. The program treats an
/// address as a mesh pod only when it falls into one of these prefixes, so traffic to the
/// internet never turns into resolve requests.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshCidr {
    /// Cluster ID of the owner (Cilium's 1..=511), 0 when unknown.
    pub cluster_id: u16,
    /// Prefix length of the CIDR in address bits (LPM lookups do not report it).
    pub prefixlen: u8,
    /// Padding.
    pub pad: [u8; 5],
}

/// Which address of the packet missed.
pub mod direction {
    /// The destination (egress towards a remote pod).
    pub const DESTINATION: u8 = 0;
    /// The source (ingress from a remote pod, native routing).
    pub const SOURCE: u8 = 1;
}

/// One datapath miss, sent on the ring buffer: an address inside a mesh pod CIDR with no
/// ipcache entry, or whose longest match carries a world identity.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissEvent {
    /// The missed address, network byte order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// Tunnel endpoint of the covering ipcache entry (zero without one).
    pub tunnel_endpoint: [u8; 16],
    /// When the program saw it (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Interface the packet was seen on.
    pub ifindex: u32,
    /// Identity of the covering ipcache entry (a world identity, or 0 with no entry).
    pub covering_identity: u32,
    /// Cluster ID of the mesh pod CIDR the address is in (0: unknown).
    pub cluster_id: u16,
    /// Prefix length of that mesh pod CIDR in address bits.
    pub covering_prefixlen: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// [`direction`] of the address in the packet.
    pub direction: u8,
    /// Padding, keeps the size a multiple of 8 for the ring buffer.
    pub pad: [u8; 3],
}

/// Indexes of the per-CPU counters the program keeps (`STATS` map).
pub mod stat {
    /// Packets the classifier ran on.
    pub const PACKETS: u32 = 0;
    /// Packets that are neither IPv4 nor IPv6 (or too short to parse).
    pub const NOT_IP: u32 = 1;
    /// Addresses outside every mesh pod CIDR: not the program's business.
    pub const NOT_MESH: u32 = 2;
    /// Mesh addresses with a specific, non-world ipcache entry.
    pub const HIT: u32 = 3;
    /// Mesh addresses without one: misses.
    pub const MISS: u32 = 4;
    /// Misses signalled to userspace.
    pub const EMITTED: u32 = 5;
    /// Misses not signalled because the address was signalled within the dedup window.
    pub const SUPPRESSED: u32 = 6;
    /// Misses not signalled because the global rate limit was exhausted.
    pub const RATE_LIMITED: u32 = 7;
    /// Misses not signalled because the ring buffer was full (lost events).
    pub const RING_FULL: u32 = 8;
    /// Missed packets dropped (strict verdict).
    pub const MISS_DROPPED: u32 = 9;
    /// Missed packets passed (allow-first verdict).
    pub const MISS_PASSED: u32 = 10;
    /// Number of counters.
    pub const COUNT: u32 = 11;
    /// Counter names, indexed like the constants (metric label values).
    pub const NAMES: [&str; COUNT as usize] = [
        "packets",
        "not_ip",
        "not_mesh",
        "hit",
        "miss",
        "emitted",
        "suppressed",
        "rate_limited",
        "ring_full",
        "miss_dropped",
        "miss_passed",
    ];
}

/// What the program does with a packet that missed.
pub mod verdict {
    /// Let it through (Cilium's "allow first, resolve async" with a world-allow policy).
    pub const PASS: u32 = 0;
    /// Drop it (strict: the sender retransmits once the entry is installed).
    pub const DROP: u32 = 1;
}

/// Names of the program's maps and load-time globals, shared with the loader.
pub mod names {
    /// The classifier program.
    pub const PROGRAM: &str = "meshfilter_miss";
    /// The standalone ipcache (LPM trie with Cilium's layout).
    pub const IPCACHE: &str = "IPCACHE";
    /// Cilium's pinned ipcache map name.
    pub const CILIUM_IPCACHE: &str = "cilium_ipcache_v2";
    /// Mesh pod CIDRs (LPM trie of [`super::MeshCidr`]).
    pub const MESH_CIDRS: &str = "MESH_CIDRS";
    /// Ring buffer of [`super::MissEvent`].
    pub const MISSES: &str = "MISSES";
    /// Recently signalled addresses (LRU hash).
    pub const PENDING: &str = "PENDING";
    /// Global rate limiter state (one-element array).
    pub const RATE: &str = "RATE";
    /// Per-CPU counters.
    pub const STATS: &str = "STATS";
    /// Global: dedup window in nanoseconds (0 disables dedup).
    pub const DEDUP_NS: &str = "DEDUP_NS";
    /// Global: nanoseconds between events at the sustained rate (0 disables the limit).
    pub const RATE_INTERVAL_NS: &str = "RATE_INTERVAL_NS";
    /// Global: burst allowance in nanoseconds (burst events times the interval).
    pub const RATE_BURST_NS: &str = "RATE_BURST_NS";
    /// Global: [`super::verdict`] for missed packets.
    pub const MISS_VERDICT: &str = "MISS_VERDICT";
    /// Global: non-zero to also check the source address (ingress, native routing).
    pub const CHECK_SOURCE: &str = "CHECK_SOURCE";
}

/// Entries the standalone ipcache holds by default (Cilium's `IPCACHE_MAP_SIZE`); the
/// loader may set another size.
pub const IPCACHE_MAX_ENTRIES: u32 = 512_000;

/// Mesh pod CIDRs the program knows by default (one per remote node and pod CIDR); the
/// loader may set another size.
pub const MESH_CIDRS_MAX_ENTRIES: u32 = 16_384;

const _: () = assert!(core::mem::size_of::<IpcacheKey>() == 24);
const _: () = assert!(core::mem::size_of::<RemoteEndpointInfo>() == 24);
const _: () = assert!(core::mem::size_of::<MissEvent>().is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<IpcachePrefix>() == 20);
const _: () = assert!(core::mem::size_of::<MeshCidr>() == 8);

// The userspace loader reads and writes these through aya's typed maps.
#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` data without padding holes that matter and no pointers; any
    // bit pattern is a valid value.
    unsafe impl aya::Pod for super::IpcachePrefix {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RemoteEndpointInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MeshCidr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MissEvent {}
}

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
