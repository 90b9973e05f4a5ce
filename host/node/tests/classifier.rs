//! The classifier in the kernel through BPF_PROG_TEST_RUN: real program, real maps, no
//! interface. Needs root (CAP_BPF), as the whole test suite does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use meshfilter_common::ipcache::{WORLD_ID, WORLD_IPV4_ID, stat};
use meshfilter_node::events::Miss;
use meshfilter_node::index::endpoint_info;
use meshfilter_node::probe::{ipv4_frame, ipv6_frame};
use meshfilter_node::{Datapath, DatapathConfig, MissVerdict};

const TC_ACT_SHOT: i32 = 2;
const TC_ACT_UNSPEC: i32 = -1;

fn load(config: DatapathConfig) -> Datapath {
    Datapath::load(&config).expect("load the classifier (run as root after scripts/setup.sh)")
}

fn drain(dp: &Datapath, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<Miss> {
    let _ = dp;
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(Miss::decode(&item).expect("a well-formed event"));
    }
    out
}

const POD_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

#[test]
fn misses_hits_and_outsiders() {
    let dp = load(DatapathConfig {
        dedup: Duration::ZERO,
        events_per_second: 0,
        verdict: MissVerdict::Drop,
        ..Default::default()
    });
    let mut ring = dp.take_events().expect("ring");
    dp.upsert_mesh_cidr("198.51.100.0/24".parse().unwrap(), 2)
        .unwrap();
    let remote = Ipv4Addr::new(198, 51, 100, 7);

    // No ipcache entry at all: a miss, dropped, signalled with the mesh CIDR.
    let (verdict, _) = dp.test_run(&ipv4_frame(POD_A, remote), 1).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    let events = drain(&dp, &mut ring);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].addr, IpAddr::V4(remote));
    assert_eq!(
        events[0].mesh_cidr,
        Some("198.51.100.0/24".parse().unwrap())
    );
    assert_eq!(events[0].cluster_id, 2);
    assert_eq!(events[0].covering_identity, 0);
    assert!(events[0].ts_ns > 0);

    // The pod CIDR entry Cilium installs (world, tunnel to the node): still a miss, and
    // the event carries the covering identity and tunnel endpoint.
    let node = Ipv4Addr::new(203, 0, 113, 5);
    dp.upsert_ipcache(
        "198.51.100.0/24".parse().unwrap(),
        endpoint_info(WORLD_IPV4_ID, Some(IpAddr::V4(node)), 0),
    )
    .unwrap();
    let (verdict, _) = dp.test_run(&ipv4_frame(POD_A, remote), 1).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    let events = drain(&dp, &mut ring);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].covering_identity, WORLD_IPV4_ID);
    assert_eq!(events[0].tunnel_endpoint, Some(IpAddr::V4(node)));

    // The /32 arrives: a hit, passed to the next program, no event.
    dp.upsert_ipcache(
        "198.51.100.7/32".parse().unwrap(),
        endpoint_info(70_000, Some(IpAddr::V4(node)), 0),
    )
    .unwrap();
    let (verdict, _) = dp.test_run(&ipv4_frame(POD_A, remote), 1).unwrap();
    assert_eq!(verdict, TC_ACT_UNSPEC);
    assert!(drain(&dp, &mut ring).is_empty());

    // A /32 that carries world (e.g. a stale entry) is still a miss.
    dp.upsert_ipcache(
        "198.51.100.8/32".parse().unwrap(),
        endpoint_info(WORLD_ID, None, 0),
    )
    .unwrap();
    let (verdict, _) = dp
        .test_run(&ipv4_frame(POD_A, Ipv4Addr::new(198, 51, 100, 8)), 1)
        .unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(drain(&dp, &mut ring).len(), 1);

    // Outside every mesh CIDR: not ours, never signalled.
    let (verdict, _) = dp
        .test_run(&ipv4_frame(POD_A, Ipv4Addr::new(203, 0, 113, 9)), 1)
        .unwrap();
    assert_eq!(verdict, TC_ACT_UNSPEC);
    assert!(drain(&dp, &mut ring).is_empty());

    // Not IP (ARP): passed untouched.
    let mut arp = ipv4_frame(POD_A, remote);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(dp.test_run(&arp, 1).unwrap().0, TC_ACT_UNSPEC);

    let stats = dp.stats();
    assert_eq!(stats.get(stat::PACKETS), 6);
    assert_eq!(stats.get(stat::MISS), 3);
    assert_eq!(stats.get(stat::EMITTED), 3);
    assert_eq!(stats.get(stat::HIT), 1);
    assert_eq!(stats.get(stat::NOT_MESH), 1);
    assert_eq!(stats.get(stat::NOT_IP), 1);
    assert_eq!(stats.get(stat::MISS_DROPPED), 3);
}

#[test]
fn ipv6_misses() {
    let dp = load(DatapathConfig {
        dedup: Duration::ZERO,
        events_per_second: 0,
        ..Default::default()
    });
    let mut ring = dp.take_events().expect("ring");
    dp.upsert_mesh_cidr("2001:db8:2::/64".parse().unwrap(), 3)
        .unwrap();
    let src: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
    let dst: Ipv6Addr = "2001:db8:2::42".parse().unwrap();
    let (verdict, _) = dp.test_run(&ipv6_frame(src, dst), 1).unwrap();
    assert_eq!(
        verdict, TC_ACT_UNSPEC,
        "the default verdict passes (allow first)"
    );
    let events = drain(&dp, &mut ring);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].addr, IpAddr::V6(dst));
    assert_eq!(events[0].cluster_id, 3);
    assert_eq!(
        events[0].mesh_cidr,
        Some("2001:db8:2::/64".parse().unwrap())
    );
    dp.upsert_ipcache(
        "2001:db8:2::42/128".parse().unwrap(),
        endpoint_info(70_001, None, 0),
    )
    .unwrap();
    dp.test_run(&ipv6_frame(src, dst), 1).unwrap();
    assert!(drain(&dp, &mut ring).is_empty());
    assert_eq!(dp.stats().get(stat::MISS_PASSED), 1);
}

#[test]
fn dedup_window_suppresses_repeats() {
    let dp = load(DatapathConfig {
        dedup: Duration::from_secs(30),
        events_per_second: 0,
        ..Default::default()
    });
    let mut ring = dp.take_events().expect("ring");
    dp.upsert_mesh_cidr("198.51.100.0/24".parse().unwrap(), 2)
        .unwrap();
    let frame = ipv4_frame(POD_A, Ipv4Addr::new(198, 51, 100, 7));
    for _ in 0..50 {
        dp.test_run(&frame, 1).unwrap();
    }
    // One run repeated 1000 times in the kernel: all suppressed too.
    dp.test_run(&frame, 1000).unwrap();
    assert_eq!(
        drain(&dp, &mut ring).len(),
        1,
        "one event per address per window"
    );
    let stats = dp.stats();
    assert_eq!(stats.get(stat::EMITTED), 1);
    assert_eq!(stats.get(stat::SUPPRESSED), 1049);
    // Another address is not held back by the first one's window.
    dp.test_run(&ipv4_frame(POD_A, Ipv4Addr::new(198, 51, 100, 8)), 1)
        .unwrap();
    assert_eq!(drain(&dp, &mut ring).len(), 1);
}

#[test]
fn global_rate_limit_caps_distinct_addresses() {
    // 10 per second with a burst of 20: a burst of 500 distinct addresses yields about
    // 20 events (plus what accrues during the loop), the rest counted as rate-limited.
    let dp = load(DatapathConfig {
        dedup: Duration::from_secs(30),
        events_per_second: 10,
        burst: 20,
        ..Default::default()
    });
    let mut ring = dp.take_events().expect("ring");
    dp.upsert_mesh_cidr("198.18.0.0/15".parse().unwrap(), 2)
        .unwrap();
    let started = std::time::Instant::now();
    for i in 0..500u32 {
        let dst = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i);
        dp.test_run(&ipv4_frame(POD_A, dst), 1).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let events = drain(&dp, &mut ring).len() as f64;
    let allowed = 21.0 + 10.0 * elapsed;
    assert!(
        events >= 20.0 && events <= allowed,
        "{events} events in {elapsed:.3}s"
    );
    let stats = dp.stats();
    assert_eq!(
        stats.get(stat::EMITTED) + stats.get(stat::RATE_LIMITED),
        500
    );
}

#[test]
fn checks_source_addresses_when_asked() {
    let dp = load(DatapathConfig {
        dedup: Duration::ZERO,
        events_per_second: 0,
        check_source: true,
        ..Default::default()
    });
    let mut ring = dp.take_events().expect("ring");
    dp.upsert_mesh_cidr("198.51.100.0/24".parse().unwrap(), 2)
        .unwrap();
    // Ingress from a remote pod to a local address outside the mesh CIDRs.
    dp.test_run(&ipv4_frame(Ipv4Addr::new(198, 51, 100, 9), POD_A), 1)
        .unwrap();
    let events = drain(&dp, &mut ring);
    assert_eq!(events.len(), 1);
    assert!(events[0].source);
    assert_eq!(events[0].addr, "198.51.100.9".parse::<IpAddr>().unwrap());
}

/// Per-packet cost on hit and on miss, as the kernel measures it (printed; the closing
/// figures come from `meshfilter node bench`, this only guards against a regression by
/// an order of magnitude).
#[test]
fn per_packet_cost_is_small() {
    let dp = load(DatapathConfig {
        dedup: Duration::from_secs(60),
        ..Default::default()
    });
    dp.upsert_mesh_cidr("198.51.100.0/24".parse().unwrap(), 2)
        .unwrap();
    dp.upsert_ipcache(
        "198.51.100.7/32".parse().unwrap(),
        endpoint_info(70_000, None, 0),
    )
    .unwrap();
    let (_, hit) = dp
        .test_run(&ipv4_frame(POD_A, Ipv4Addr::new(198, 51, 100, 7)), 100_000)
        .unwrap();
    let (_, miss) = dp
        .test_run(&ipv4_frame(POD_A, Ipv4Addr::new(198, 51, 100, 8)), 100_000)
        .unwrap();
    eprintln!("per packet: hit {hit:?}, suppressed miss {miss:?}");
    assert!(hit < Duration::from_micros(5) && miss < Duration::from_micros(5));
}

/// A full map refuses a new entry with `MapFull` (and the entry is not there), while
/// entries already in it can still be changed.
#[test]
fn a_full_map_refuses_new_entries() {
    let dp = load(DatapathConfig {
        ipcache_entries: 4,
        mesh_cidr_entries: 2,
        ..Default::default()
    });
    for i in 1..=4u8 {
        dp.upsert_ipcache(
            format!("198.51.100.{i}/32").parse().unwrap(),
            endpoint_info(70_000 + u32::from(i), None, 0),
        )
        .expect("room for four");
    }
    let fifth: ipnet::IpNet = "198.51.100.5/32".parse().unwrap();
    let err = dp
        .upsert_ipcache(fifth, endpoint_info(70_005, None, 0))
        .unwrap_err();
    assert!(
        matches!(
            err,
            meshfilter_node::DatapathError::MapFull { map: "IPCACHE" }
        ),
        "{err}"
    );
    assert_eq!(dp.ipcache_entries().len(), 4);
    assert!(dp.ipcache_entries().iter().all(|(net, _)| *net != fifth));

    dp.upsert_mesh_cidr("198.51.100.0/24".parse().unwrap(), 2)
        .unwrap();
    dp.upsert_mesh_cidr("198.51.101.0/24".parse().unwrap(), 2)
        .unwrap();
    let err = dp
        .upsert_mesh_cidr("198.51.102.0/24".parse().unwrap(), 2)
        .unwrap_err();
    assert!(
        matches!(
            err,
            meshfilter_node::DatapathError::MapFull { map: "MESH_CIDRS" }
        ),
        "{err}"
    );
    // An entry already there can still change.
    dp.upsert_ipcache(
        "198.51.100.2/32".parse().unwrap(),
        endpoint_info(80_000, None, 0),
    )
    .expect("in-place update of a full map");
    // Room again after a removal.
    dp.remove_ipcache("198.51.100.1/32".parse().unwrap())
        .unwrap();
    dp.upsert_ipcache(fifth, endpoint_info(70_005, None, 0))
        .expect("room after a removal");
}
