//! The meshfilter miss classifier (TC, ingress or egress).
//!
//! For every IPv4/IPv6 packet it looks the destination (and optionally the source) up in
//! the mesh pod-CIDR map; an address inside a remote cluster's pod CIDR whose longest
//! ipcache match is missing or carries a world identity is a *miss*: the datapath would
//! treat that pod as "world" and policy would drop it. The program signals the address on
//! a ring buffer (deduplicated per address and globally rate-limited in the kernel) so the
//! node agent can resolve and install it, and then passes or drops the packet as
//! configured. It never writes the ipcache: in Cilium mode that map is Cilium's.
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TcContext,
};
use meshfilter_common::ipcache::{
    FAMILY_IPV4, FAMILY_IPV6, IPCACHE_MAX_ENTRIES, IpcachePrefix, MESH_CIDRS_MAX_ENTRIES, MeshCidr,
    MissEvent, RemoteEndpointInfo, direction, is_world, stat, verdict,
};

/// The ipcache: our own in standalone mode, Cilium's pinned `cilium_ipcache_v2` in Cilium
/// mode (the loader binds the program to the map it opened from the pin, and rebinds a
/// fresh copy of the program when the agent recreates the map; the declaration matches
/// Cilium's layout).
#[map(name = "IPCACHE")]
static IPCACHE: LpmTrie<IpcachePrefix, RemoteEndpointInfo> =
    LpmTrie::with_max_entries(IPCACHE_MAX_ENTRIES, 0);

/// Pod CIDRs of the mesh's remote clusters.
#[map(name = "MESH_CIDRS")]
static MESH_CIDRS: LpmTrie<IpcachePrefix, MeshCidr> =
    LpmTrie::with_max_entries(MESH_CIDRS_MAX_ENTRIES, 0);

/// Miss events for userspace.
#[map(name = "MISSES")]
static MISSES: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Addresses signalled recently, with when: the in-kernel dedup.
#[map(name = "PENDING")]
static PENDING: LruHashMap<IpcachePrefix, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Global rate limiter: the theoretical arrival time of the next event (GCRA).
#[map(name = "RATE")]
static RATE: Array<u64> = Array::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `stat::*`.
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Dedup window: an address is signalled at most once per window (0: every miss).
#[unsafe(no_mangle)]
static DEDUP_NS: Global<u64> = Global::new(1_000_000_000);
/// Sustained rate as nanoseconds between events (0: unlimited).
#[unsafe(no_mangle)]
static RATE_INTERVAL_NS: Global<u64> = Global::new(0);
/// Burst as nanoseconds of credit (burst × interval).
#[unsafe(no_mangle)]
static RATE_BURST_NS: Global<u64> = Global::new(0);
/// `verdict::PASS` or `verdict::DROP` for a missed packet.
#[unsafe(no_mangle)]
static MISS_VERDICT: Global<u32> = Global::new(verdict::PASS);
/// Non-zero: also check the source address.
#[unsafe(no_mangle)]
static CHECK_SOURCE: Global<u32> = Global::new(0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

#[inline(always)]
fn bump(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// TC verdict that lets the packet continue: the next program in a TCX or cls_bpf chain
/// (Cilium's) still runs, so attaching beside Cilium changes nothing for hits.
const CONTINUE: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn meshfilter_miss(ctx: TcContext) -> i32 {
    bump(stat::PACKETS);
    let Ok(proto) = ctx.load::<u16>(12) else {
        bump(stat::NOT_IP);
        return CONTINUE;
    };
    let (family, src_off, dst_off) = match u16::from_be(proto) {
        ETH_P_IP => (FAMILY_IPV4, ETH_HLEN + 12, ETH_HLEN + 16),
        ETH_P_IPV6 => (FAMILY_IPV6, ETH_HLEN + 8, ETH_HLEN + 24),
        _ => {
            bump(stat::NOT_IP);
            return CONTINUE;
        }
    };
    let Some(dst) = load_addr(&ctx, family, dst_off) else {
        bump(stat::NOT_IP);
        return CONTINUE;
    };
    let missed = check(&ctx, &dst, direction::DESTINATION);
    let missed = if CHECK_SOURCE.load() != 0 {
        match load_addr(&ctx, family, src_off) {
            Some(src) => check(&ctx, &src, direction::SOURCE) || missed,
            None => missed,
        }
    } else {
        missed
    };
    if !missed {
        return CONTINUE;
    }
    if MISS_VERDICT.load() == verdict::DROP {
        bump(stat::MISS_DROPPED);
        TC_ACT_SHOT
    } else {
        bump(stat::MISS_PASSED);
        CONTINUE
    }
}

#[inline(always)]
fn load_addr(ctx: &TcContext, family: u8, offset: usize) -> Option<IpcachePrefix> {
    if family == FAMILY_IPV4 {
        let addr = ctx.load::<[u8; 4]>(offset).ok()?;
        Some(IpcachePrefix::v4(addr))
    } else {
        let addr = ctx.load::<[u8; 16]>(offset).ok()?;
        Some(IpcachePrefix::v6(addr))
    }
}

/// Whether `addr` misses; signals it if so (subject to dedup and the rate limit).
#[inline(always)]
fn check(ctx: &TcContext, addr: &IpcachePrefix, dir: u8) -> bool {
    let key = Key::new(addr.full_prefixlen(), *addr);
    let Some(mesh) = MESH_CIDRS.get(&key) else {
        bump(stat::NOT_MESH);
        return false;
    };
    let (covering_identity, tunnel_endpoint) = match IPCACHE.get(&key) {
        Some(info) if !is_world(info.sec_identity) => {
            bump(stat::HIT);
            return false;
        }
        Some(info) => (info.sec_identity, info.tunnel_endpoint),
        None => (0, [0; 16]),
    };
    bump(stat::MISS);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let window = DEDUP_NS.load();
    if window != 0 {
        // SAFETY: the value is a plain u64 read once; a concurrent update only changes
        // which of two nearly equal timestamps we see.
        if let Some(last) = unsafe { PENDING.get(addr) }
            && now.wrapping_sub(*last) < window
        {
            bump(stat::SUPPRESSED);
            return true;
        }
    }
    if !rate_admit(now) {
        bump(stat::RATE_LIMITED);
        return true;
    }
    if window != 0 {
        let _ = PENDING.insert(addr, now, 0);
    }
    match MISSES.reserve::<MissEvent>(0) {
        Some(mut entry) => {
            // SAFETY: `skb` is the live context pointer for this invocation.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            entry.write(MissEvent {
                addr: addr.addr,
                tunnel_endpoint,
                ts_ns: now,
                ifindex,
                covering_identity,
                cluster_id: mesh.cluster_id,
                covering_prefixlen: mesh.prefixlen,
                family: addr.family,
                direction: dir,
                pad: [0; 3],
            });
            entry.submit(0);
            bump(stat::EMITTED);
        }
        None => {
            // Forget the claim so the next packet retries once the ring drains.
            let _ = PENDING.remove(addr);
            bump(stat::RING_FULL);
        }
    }
    true
}

/// Generic cell rate algorithm on one shared slot. Updates race between CPUs (no lock);
/// the worst case is a few events beyond the burst, never a stuck limiter.
#[inline(always)]
fn rate_admit(now: u64) -> bool {
    let interval = RATE_INTERVAL_NS.load();
    if interval == 0 {
        return true;
    }
    let Some(slot) = RATE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a valid pointer into the one-element array map.
    let tat = unsafe { *slot };
    let tat = if tat < now { now } else { tat };
    if tat - now > RATE_BURST_NS.load() {
        return false;
    }
    // SAFETY: as above.
    unsafe { *slot = tat + interval };
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
