//! Reading miss events from the ring buffer without blocking the runtime.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::{MapData, RingBuf};
use ipnet::IpNet;
use meshfilter_common::ipcache::{FAMILY_IPV4, FAMILY_IPV6, MissEvent, direction};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One miss, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    /// The address that missed.
    pub addr: IpAddr,
    /// The mesh pod CIDR it is in, as the program found it.
    pub mesh_cidr: Option<IpNet>,
    /// Cluster ID that CIDR belongs to (0: unknown).
    pub cluster_id: u16,
    /// Identity of the covering ipcache entry (0: none).
    pub covering_identity: u32,
    /// Tunnel endpoint of the covering entry, if it has one.
    pub tunnel_endpoint: Option<IpAddr>,
    /// Interface index.
    pub ifindex: u32,
    /// Whether the source (not the destination) missed.
    pub source: bool,
    /// When the program saw it, CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
}

impl Miss {
    /// Decodes a ring buffer record; `None` for a record of the wrong size or family.
    pub fn decode(bytes: &[u8]) -> Option<Miss> {
        if bytes.len() < size_of::<MissEvent>() {
            return None;
        }
        // SAFETY: the length is checked; MissEvent is plain data valid for any bits.
        let ev: MissEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let ip = |raw: [u8; 16], family: u8| match family {
            FAMILY_IPV4 => Some(IpAddr::from([raw[0], raw[1], raw[2], raw[3]])),
            FAMILY_IPV6 => Some(IpAddr::from(raw)),
            _ => None,
        };
        let addr = ip(ev.addr, ev.family)?;
        let tunnel_endpoint = if ev.tunnel_endpoint == [0; 16] {
            None
        } else {
            // Cilium keeps IPv4 tunnel endpoints in the first four bytes either way.
            let v6 = ev.tunnel_endpoint[4..] != [0; 12];
            ip(
                ev.tunnel_endpoint,
                if v6 { FAMILY_IPV6 } else { FAMILY_IPV4 },
            )
        };
        let mesh_cidr = match ev.covering_prefixlen {
            0 => None,
            bits => IpNet::new(addr, bits).ok().map(|n| n.trunc()),
        };
        Some(Miss {
            addr,
            mesh_cidr,
            cluster_id: ev.cluster_id,
            covering_identity: ev.covering_identity,
            tunnel_endpoint,
            ifindex: ev.ifindex,
            source: ev.direction == direction::SOURCE,
            ts_ns: ev.ts_ns,
        })
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid pointer to a local struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Counters of the reader.
#[derive(Debug, Default)]
pub struct ReaderStats {
    /// Events read from the ring.
    pub received: AtomicU64,
    /// Events dropped because the queue to the resolver was full.
    pub overflow: AtomicU64,
    /// Records that did not decode.
    pub malformed: AtomicU64,
}

/// Drains the ring buffer into a bounded queue until cancelled. A full queue drops the
/// event (counted): the program signals the address again after its dedup window, so a
/// dropped event delays one resolution and never blocks the reader.
pub async fn read_events(
    ring: RingBuf<MapData>,
    queue: mpsc::Sender<Miss>,
    stats: Arc<ReaderStats>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
    let mut fd =
        unsafe { AsyncFd::register(ring) }.map_err(|e| std::io::Error::other(e.to_string()))?;
    loop {
        let mut guard = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            guard = fd.readable_mut() => guard?,
        };
        let ring = guard.get_inner_mut();
        while let Some(record) = ring.next() {
            stats.received.fetch_add(1, Ordering::Relaxed);
            let Some(miss) = Miss::decode(&record) else {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            drop(record);
            if queue.try_send(miss).is_err() {
                stats.overflow.fetch_add(1, Ordering::Relaxed);
            }
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ev: MissEvent) -> Vec<u8> {
        // SAFETY: MissEvent is plain data.
        let bytes: [u8; size_of::<MissEvent>()] = unsafe { std::mem::transmute(ev) };
        bytes.to_vec()
    }

    #[test]
    fn decodes_network_order_addresses() {
        let mut tunnel = [0u8; 16];
        tunnel[..4].copy_from_slice(&[192, 0, 2, 9]);
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 51, 100, 7]);
        let miss = Miss::decode(&record(MissEvent {
            addr,
            tunnel_endpoint: tunnel,
            ts_ns: 5,
            ifindex: 3,
            covering_identity: 2,
            cluster_id: 2,
            covering_prefixlen: 24,
            family: FAMILY_IPV4,
            direction: direction::DESTINATION,
            pad: [0; 3],
        }))
        .expect("decodes");
        assert_eq!(miss.addr, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(miss.tunnel_endpoint, Some("192.0.2.9".parse().unwrap()));
        assert_eq!(miss.mesh_cidr, Some("198.51.100.0/24".parse().unwrap()));
        assert!(!miss.source);
        assert_eq!(Miss::decode(&[0u8; 8]), None, "short record");
        // SAFETY: MissEvent is plain data; all zeroes is a valid value.
        let bad = record(MissEvent {
            family: 7,
            ..unsafe { std::mem::zeroed() }
        });
        assert_eq!(Miss::decode(&bad), None, "unknown family");
    }
}
