//! Cilium mode against a map that the cilium-agent recreates, in the kernel: a map with
//! Cilium's layout and flags pinned in a bpffs of the test's own, the classifier attached
//! (TCX) to a veth interface, and `BPF_PROG_TEST_RUN` showing which map the program
//! reads. Then the pin is replaced as the agent's `Recreate()` does (unpin, create, pin).
//! Needs root.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Map, MapData};
use aya::programs::{SchedClassifier, TcAttachType};
use meshfilter_common::ipcache::{IpcachePrefix, RemoteEndpointInfo, stat};
use meshfilter_node::datapath::lpm_key;
use meshfilter_node::events::Miss;
use meshfilter_node::index::endpoint_info;
use meshfilter_node::probe::ipv4_frame;
use meshfilter_node::{
    Attachment, Datapath, DatapathConfig, DatapathError, Direction, IpcacheMode, MissVerdict,
    PinCheck,
};
use tokio_util::sync::CancellationToken;

const TC_ACT_SHOT: i32 = 2;
const TC_ACT_UNSPEC: i32 = -1;
const POD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
/// Cilium's flags on `cilium_ipcache_v2`: `BPF_F_NO_PREALLOC | BPF_F_RDONLY_PROG`.
const CILIUM_IPCACHE_FLAGS: u32 = 1 | 1 << 7;

fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(status.success(), "{args:?}");
}

/// A bpffs instance of the test's own (the host's /sys/fs/bpf is left alone), unmounted
/// with every pin in it on drop.
struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    fn mount() -> Bpffs {
        let dir = tempfile::tempdir().unwrap();
        sh(&["mount", "-t", "bpf", "bpf", dir.path().to_str().unwrap()]);
        Bpffs { dir }
    }

    /// Where the agent pins the map (`tc/globals/cilium_ipcache_v2`), its directory made.
    fn cilium_pin(&self) -> PathBuf {
        let globals = self.dir.path().join("tc/globals");
        std::fs::create_dir_all(&globals).unwrap();
        globals.join("cilium_ipcache_v2")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A veth pair to attach to (one end), deleted on drop.
struct Veth(String);

impl Veth {
    fn new(tag: &str) -> Veth {
        let name = format!("mf{tag}{}", std::process::id() % 100_000);
        let peer = format!("{name}p");
        let _ = Command::new("ip")
            .args(["link", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&[
            "ip", "link", "add", &name, "type", "veth", "peer", "name", &peer,
        ]);
        sh(&["ip", "link", "set", &name, "up"]);
        Veth(name)
    }

    /// IDs of the programs attached to its TCX ingress.
    fn attached(&self) -> Vec<u32> {
        let (_, programs) =
            SchedClassifier::query_tcx(&self.0, TcAttachType::Ingress).expect("query TCX");
        programs.iter().map(|p| p.id()).collect()
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// `bpf(BPF_MAP_CREATE)`: the agent creates its map itself, without an object file.
fn create_map(map_type: u32, key: u32, value: u32, entries: u32, flags: u32) -> OwnedFd {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    let mut name = [0u8; 16];
    name[..14].copy_from_slice(b"cilium_ipcache");
    let attr = MapCreate {
        map_type,
        key_size: key,
        value_size: value,
        max_entries: entries,
        map_flags: flags,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: name,
    };
    // SAFETY: BPF_MAP_CREATE (0) reads `size_of::<MapCreate>()` bytes of a live,
    // initialised attribute struct laid out as the head of `union bpf_attr`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &attr as *const MapCreate,
            size_of::<MapCreate>() as u32,
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor the kernel just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// A map as the cilium-agent creates it, holding a /32 for each of `hosts`, pinned at
/// `pin`. Returns its kernel ID.
fn pin_cilium_map(pin: &Path, hosts: &[(Ipv4Addr, u32)]) -> u32 {
    let fd = create_map(BPF_MAP_TYPE_LPM_TRIE, 24, 24, 512_000, CILIUM_IPCACHE_FLAGS);
    let data = MapData::from_fd(fd).unwrap();
    data.pin(pin).unwrap();
    let id = data.info().unwrap().id();
    let mut map: LpmTrie<MapData, IpcachePrefix, RemoteEndpointInfo> =
        LpmTrie::try_from(Map::LpmTrie(data)).unwrap();
    for (addr, identity) in hosts {
        map.insert(
            &lpm_key(IpAddr::V4(*addr).into()),
            endpoint_info(*identity, None, 0),
            0,
        )
        .unwrap();
    }
    id
}

fn run(dp: &Datapath, dst: Ipv4Addr) -> i32 {
    dp.test_run(&ipv4_frame(POD, dst), 1).unwrap().0
}

fn drain(ring: &mut aya::maps::RingBuf<MapData>) -> Vec<Miss> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(Miss::decode(&item).expect("a well-formed event"));
    }
    out
}

const A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
const C: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);

#[test]
fn follows_a_map_the_agent_recreates() {
    let bpffs = Bpffs::mount();
    let pin = bpffs.cilium_pin();
    let first = pin_cilium_map(&pin, &[(A, 70_000)]);
    let dp = Arc::new(
        Datapath::load(&DatapathConfig {
            mode: IpcacheMode::Cilium { pin: pin.clone() },
            dedup: Duration::ZERO,
            events_per_second: 0,
            verdict: MissVerdict::Drop,
            pin_poll: Duration::from_millis(50),
            ..Default::default()
        })
        .expect("load in cilium mode"),
    );
    let mut ring = dp.take_events().expect("ring");
    dp.upsert_mesh_cidr("198.51.100.0/24".parse().unwrap(), 2)
        .unwrap();
    assert_eq!(dp.ipcache_id(), first);
    assert_eq!(run(&dp, A), TC_ACT_UNSPEC, "A is in the first map");
    let loaded = dp.program_id();

    // The agent restarts before we attach: attaching reads the new map from the start.
    std::fs::remove_file(&pin).unwrap();
    let second = pin_cilium_map(&pin, &[(B, 70_001)]);
    let veth = Veth::new("pin");
    dp.attach(&Attachment {
        interface: veth.0.clone(),
        direction: Direction::Ingress,
    })
    .unwrap();
    assert_eq!(dp.ipcache_id(), second, "rebound on attach");
    assert_ne!(dp.program_id(), loaded, "a new copy of the program");
    assert_eq!(veth.attached(), [dp.program_id()]);
    assert_eq!(run(&dp, B), TC_ACT_UNSPEC, "B is in the second map");
    assert_eq!(run(&dp, A), TC_ACT_SHOT, "A is not");
    // The copy writes the ring and the mesh CIDRs the first copy was given.
    let events = drain(&mut ring);
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].addr, events[0].cluster_id), (IpAddr::V4(A), 2));

    // Between unpin and pin: the pin is missing; it is never created, and the program
    // keeps reading the map it holds.
    std::fs::remove_file(&pin).unwrap();
    assert_eq!(dp.check_cilium_pin(), Some(PinCheck::Missing));
    assert!(!pin.exists(), "the pin is never created by us");
    let status = dp.cilium_map().unwrap();
    assert!(status.pin_missing);
    assert_eq!((status.pin_missing_seen, status.reopens), (1, 1));
    assert_eq!(run(&dp, B), TC_ACT_UNSPEC, "still the second map");

    // The agent pins its new map; the poller notices and swaps the attached program.
    let attached_before = dp.program_id();
    let cancel = CancellationToken::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let poller = rt.spawn(dp.clone().follow_cilium_pin(cancel.clone()));
    let third = pin_cilium_map(&pin, &[(C, 70_002)]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while dp.ipcache_id() != third {
        assert!(
            Instant::now() < deadline,
            "not rebound to map {third}: {:?}",
            dp.cilium_map()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    cancel.cancel();
    rt.block_on(poller).unwrap();
    let status = dp.cilium_map().unwrap();
    assert_eq!(status.reopens, 2);
    assert!(!status.pin_missing);
    assert_ne!(dp.program_id(), attached_before);
    assert_eq!(
        veth.attached(),
        [dp.program_id()],
        "the link runs the new copy, and only it"
    );
    assert_eq!(dp.attachments().len(), 1);
    assert_eq!(run(&dp, C), TC_ACT_UNSPEC, "C is in the third map");
    assert_eq!(run(&dp, B), TC_ACT_SHOT, "B is not");
    assert_eq!(drain(&mut ring).len(), 1);
    assert_eq!(dp.check_cilium_pin(), Some(PinCheck::Unchanged));
    // Counters are shared by every copy: nothing was lost across the swaps.
    let stats = dp.stats();
    assert_eq!(stats.get(stat::PACKETS), 6);
    assert_eq!(stats.get(stat::HIT), 4);
    assert_eq!(stats.get(stat::MISS), 2);

    // Something else at the pin is refused; the program keeps reading the third map.
    std::fs::remove_file(&pin).unwrap();
    let foreign = MapData::from_fd(create_map(BPF_MAP_TYPE_HASH, 4, 4, 16, 0)).unwrap();
    foreign.pin(&pin).unwrap();
    let refused = dp.check_cilium_pin();
    assert!(
        matches!(&refused, Some(PinCheck::Refused { reason }) if reason.contains("LPM trie")),
        "{refused:?}"
    );
    assert_eq!(dp.ipcache_id(), third);
    assert_eq!(run(&dp, C), TC_ACT_UNSPEC);
    // Seen again at the next poll: still refused, counted once.
    assert!(matches!(
        dp.check_cilium_pin(),
        Some(PinCheck::Refused { .. })
    ));
    let status = dp.cilium_map().unwrap();
    assert_eq!((status.refused, status.reopens), (1, 2));
    assert!(status.last_error.is_some());

    dp.detach_all();
    assert!(veth.attached().is_empty(), "detached");
}

#[test]
fn a_missing_pin_is_refused_and_never_created() {
    let bpffs = Bpffs::mount();
    let pin = bpffs.cilium_pin();
    let err = Datapath::load(&DatapathConfig {
        mode: IpcacheMode::Cilium { pin: pin.clone() },
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(&err, DatapathError::CiliumMap { reason, .. } if reason.contains("no pinned map there")),
        "{err}"
    );
    assert!(!pin.exists(), "loading never creates the pin");

    // A map of another layout is refused too.
    let foreign = MapData::from_fd(create_map(BPF_MAP_TYPE_LPM_TRIE, 8, 4, 16, 1)).unwrap();
    foreign.pin(&pin).unwrap();
    let err = Datapath::load(&DatapathConfig {
        mode: IpcacheMode::Cilium { pin },
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("24-byte keys"), "{err}");
}
