//! Loading, configuring and attaching the miss classifier, and the maps it shares with
//! userspace.
//!
//! Two modes: **standalone** keeps its own ipcache (Cilium's `cilium_ipcache_v2` layout)
//! that the agent fills from the local cache, for machines without the Cilium datapath;
//! **cilium** points the program's ipcache at Cilium's pinned map, which it only reads,
//! and attaches first in the TCX chain returning "next", so Cilium's programs see every
//! packet exactly as before.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{MapData, MapType, PerCpuArray, RingBuf};
use aya::programs::tc::{NlOptions, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader, TestRun as _, TestRunOptions};
use ipnet::IpNet;
use meshfilter_common::ipcache::{
    FAMILY_IPV4, FAMILY_IPV6, IpcacheKey, IpcachePrefix, MeshCidr, RemoteEndpointInfo, names, stat,
    verdict,
};
use parking_lot::Mutex;

use crate::caps;
use crate::error::DatapathError;

/// The compiled program, embedded at build time (empty when built without the `ebpf`
/// feature).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("MESHFILTER_EBPF_OBJECT"));

/// Where the ipcache the program reads comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpcacheMode {
    /// The program's own map, filled by the agent.
    Standalone,
    /// Cilium's pinned `cilium_ipcache_v2`, read only.
    Cilium {
        /// Pin path, usually `/sys/fs/bpf/tc/globals/cilium_ipcache_v2`.
        pin: PathBuf,
    },
}

/// What happens to a packet that missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissVerdict {
    /// Let it continue (allow first, resolve asynchronously).
    Pass,
    /// Drop it; the sender's retransmit finds the entry installed.
    Drop,
}

/// Which side of an interface the classifier sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Packets arriving on the interface (from a pod, on its host-side veth).
    Ingress,
    /// Packets leaving through the interface.
    Egress,
}

impl From<Direction> for TcAttachType {
    fn from(d: Direction) -> TcAttachType {
        match d {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }
}

/// Load-time settings of the program.
#[derive(Debug, Clone)]
pub struct DatapathConfig {
    /// Own or Cilium's ipcache.
    pub mode: IpcacheMode,
    /// An address is signalled at most once per window.
    pub dedup: Duration,
    /// Sustained events per second across all CPUs (0: unlimited).
    pub events_per_second: u32,
    /// Events allowed at once above the sustained rate.
    pub burst: u32,
    /// Pass or drop missed packets.
    pub verdict: MissVerdict,
    /// Also check source addresses.
    pub check_source: bool,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            mode: IpcacheMode::Standalone,
            dedup: Duration::from_secs(1),
            events_per_second: 1000,
            burst: 100,
            verdict: MissVerdict::Pass,
            check_source: false,
        }
    }
}

/// One attachment of the classifier.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Attachment {
    /// Interface name.
    pub interface: String,
    /// Ingress or egress.
    pub direction: Direction,
}

/// The loaded program and its maps.
pub struct Datapath {
    ebpf: Mutex<Ebpf>,
    ipcache: Mutex<LpmTrie<MapData, IpcachePrefix, RemoteEndpointInfo>>,
    mesh_cidrs: Mutex<LpmTrie<MapData, IpcachePrefix, MeshCidr>>,
    stats: PerCpuArray<MapData, u64>,
    ring: Mutex<Option<RingBuf<MapData>>>,
    attached: Mutex<Vec<Attachment>>,
    mode: IpcacheMode,
    program_id: u32,
    ipcache_id: u32,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("mode", &self.mode)
            .field("program_id", &self.program_id)
            .field("ipcache_id", &self.ipcache_id)
            .finish_non_exhaustive()
    }
}

/// The program's counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DatapathStats {
    /// `(name, value)` per counter, in `stat::*` order.
    pub counters: Vec<(&'static str, u64)>,
}

impl DatapathStats {
    /// One counter by its `stat::*` index.
    pub fn get(&self, index: u32) -> u64 {
        self.counters.get(index as usize).map_or(0, |c| c.1)
    }
}

impl Datapath {
    /// Whether this build embeds the eBPF program.
    pub fn available() -> bool {
        !OBJECT.is_empty()
    }

    /// Checks capabilities, loads the object and the program (not attached yet).
    pub fn load(config: &DatapathConfig) -> Result<Datapath, DatapathError> {
        if !Self::available() {
            return Err(DatapathError::NotBuilt);
        }
        caps::require_bpf()?;
        raise_memlock();
        let dedup_ns = config.dedup.as_nanos().min(u64::MAX as u128) as u64;
        let interval_ns = match config.events_per_second {
            0 => 0u64,
            n => 1_000_000_000 / u64::from(n),
        };
        let burst_ns = interval_ns.saturating_mul(u64::from(config.burst.max(1)));
        let miss_verdict = match config.verdict {
            MissVerdict::Pass => verdict::PASS,
            MissVerdict::Drop => verdict::DROP,
        };
        let check_source = u32::from(config.check_source);
        let mut loader = EbpfLoader::new();
        loader
            .override_global(names::DEDUP_NS, &dedup_ns, true)
            .override_global(names::RATE_INTERVAL_NS, &interval_ns, true)
            .override_global(names::RATE_BURST_NS, &burst_ns, true)
            .override_global(names::MISS_VERDICT, &miss_verdict, true)
            .override_global(names::CHECK_SOURCE, &check_source, true);
        if let IpcacheMode::Cilium { pin } = &config.mode {
            check_cilium_map(pin)?;
            loader.map_pin_path(names::IPCACHE, pin.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(names::PROGRAM)
            .ok_or(DatapathError::Missing("program", names::PROGRAM))?
            .try_into()?;
        program.load()?;
        let program_id = program.info()?.id();
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or(DatapathError::Missing("map", name))
        };
        let ipcache_data = take(&mut ebpf, names::IPCACHE)?;
        let ipcache_id = match &ipcache_data {
            aya::maps::Map::LpmTrie(data) => data.info()?.id(),
            _ => 0,
        };
        let ipcache = LpmTrie::try_from(ipcache_data)?;
        let mesh_cidrs = LpmTrie::try_from(take(&mut ebpf, names::MESH_CIDRS)?)?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, names::STATS)?)?;
        let ring = RingBuf::try_from(take(&mut ebpf, names::MISSES)?)?;
        tracing::info!(program_id, ipcache_id, mode = ?config.mode, "eBPF program loaded");
        Ok(Datapath {
            ebpf: Mutex::new(ebpf),
            ipcache: Mutex::new(ipcache),
            mesh_cidrs: Mutex::new(mesh_cidrs),
            stats,
            ring: Mutex::new(Some(ring)),
            attached: Mutex::new(Vec::new()),
            mode: config.mode.clone(),
            program_id,
            ipcache_id,
        })
    }

    /// Kernel ID of the loaded program (as `bpftool prog show id` prints it).
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    /// Kernel ID of the ipcache map the program reads (`bpftool map dump id`).
    pub fn ipcache_id(&self) -> u32 {
        self.ipcache_id
    }

    /// The ipcache mode.
    pub fn mode(&self) -> &IpcacheMode {
        &self.mode
    }

    /// Attaches to an interface: first in its TCX chain on kernels with TCX, through a
    /// clsact qdisc otherwise (removing a copy an earlier crashed run left behind).
    pub fn attach(&self, attachment: &Attachment) -> Result<(), DatapathError> {
        let mut ebpf = self.ebpf.lock();
        let program: &mut SchedClassifier = ebpf
            .program_mut(names::PROGRAM)
            .ok_or(DatapathError::Missing("program", names::PROGRAM))?
            .try_into()?;
        let iface = attachment.interface.as_str();
        let attach_type = TcAttachType::from(attachment.direction);
        let attach_error = |source| DatapathError::Attach {
            interface: iface.to_string(),
            source,
        };
        if tcx_supported() {
            program
                .attach_with_options(
                    iface,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .map_err(attach_error)?;
        } else {
            if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
                tracing::debug!(iface, error = %e, "clsact qdisc present or not added");
            }
            // A netlink filter outlives its process: remove what a crashed run left.
            if aya::programs::tc::qdisc_detach_program(iface, attach_type, names::PROGRAM).is_ok() {
                tracing::warn!(iface, "removed a stale meshfilter classifier");
            }
            program
                .attach_with_options(
                    iface,
                    attach_type,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )
                .map_err(attach_error)?;
        }
        tracing::info!(iface, direction = ?attachment.direction, "classifier attached");
        self.attached.lock().push(attachment.clone());
        Ok(())
    }

    /// Interfaces the classifier is attached to.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.attached.lock().clone()
    }

    /// Detaches from every interface (also done when the datapath is dropped); a second
    /// call does nothing.
    pub fn detach_all(&self) {
        if self.attached.lock().is_empty() {
            return;
        }
        let mut ebpf = self.ebpf.lock();
        let Some(program) = ebpf.program_mut(names::PROGRAM) else {
            return;
        };
        let program: Result<&mut SchedClassifier, _> = program.try_into();
        if let Ok(program) = program {
            // Unloading drops every link the program owns, which detaches it.
            if let Err(e) = program.unload() {
                tracing::warn!(error = %e, "unloading the classifier");
            }
        }
        for a in self.attached.lock().drain(..) {
            tracing::info!(iface = %a.interface, "classifier detached");
        }
    }

    /// Takes the ring buffer of miss events (once).
    pub fn take_events(&self) -> Option<RingBuf<MapData>> {
        self.ring.lock().take()
    }

    /// Adds or replaces an ipcache entry (standalone mode only: Cilium's map is Cilium's).
    pub fn upsert_ipcache(
        &self,
        prefix: IpNet,
        info: RemoteEndpointInfo,
    ) -> Result<(), DatapathError> {
        self.require_standalone()?;
        let key = lpm_key(prefix);
        self.ipcache.lock().insert(&key, info, 0)?;
        Ok(())
    }

    /// Removes an ipcache entry (standalone only); a missing entry is not an error.
    pub fn remove_ipcache(&self, prefix: IpNet) -> Result<(), DatapathError> {
        self.require_standalone()?;
        match self.ipcache.lock().remove(&lpm_key(prefix)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Longest-prefix lookup of an address in the ipcache the program reads.
    pub fn lookup_ipcache(&self, addr: IpAddr) -> Option<RemoteEndpointInfo> {
        let key = lpm_key(IpNet::from(addr));
        self.ipcache.lock().get(&key, 0).ok()
    }

    /// Every ipcache entry as `(prefix, value)`.
    pub fn ipcache_entries(&self) -> Vec<(IpNet, RemoteEndpointInfo)> {
        let map = self.ipcache.lock();
        map.iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| Some((prefix_of(&k)?, v)))
            .collect()
    }

    /// Declares a prefix as a pod CIDR of a mesh cluster.
    pub fn upsert_mesh_cidr(&self, prefix: IpNet, cluster_id: u16) -> Result<(), DatapathError> {
        let value = MeshCidr {
            cluster_id,
            prefixlen: prefix.prefix_len(),
            pad: [0; 5],
        };
        self.mesh_cidrs.lock().insert(&lpm_key(prefix), value, 0)?;
        Ok(())
    }

    /// Removes a mesh pod CIDR; a missing one is not an error.
    pub fn remove_mesh_cidr(&self, prefix: IpNet) -> Result<(), DatapathError> {
        match self.mesh_cidrs.lock().remove(&lpm_key(prefix)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The program's counters, summed over CPUs.
    pub fn stats(&self) -> DatapathStats {
        let counters = (0..stat::COUNT)
            .map(|i| {
                let total = self
                    .stats
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().copied().sum())
                    .unwrap_or(0);
                (stat::NAMES[i as usize], total)
            })
            .collect();
        DatapathStats { counters }
    }

    /// Runs the program once on `frame` with `BPF_PROG_TEST_RUN` (no interface needed);
    /// returns the TC verdict and the kernel's mean run time.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(i32, Duration), DatapathError> {
        let ebpf = self.ebpf.lock();
        let program: &SchedClassifier = ebpf
            .program(names::PROGRAM)
            .ok_or(DatapathError::Missing("program", names::PROGRAM))?
            .try_into()?;
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: repeat.max(1),
            ..Default::default()
        })?;
        Ok((result.return_value as i32, result.duration))
    }

    fn require_standalone(&self) -> Result<(), DatapathError> {
        match self.mode {
            IpcacheMode::Standalone => Ok(()),
            IpcacheMode::Cilium { .. } => Err(DatapathError::ReadOnlyIpcache),
        }
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// The LPM key of a prefix in Cilium's layout.
pub fn lpm_key(prefix: IpNet) -> Key<IpcachePrefix> {
    let key = match prefix.trunc() {
        IpNet::V4(n) => IpcacheKey::v4(n.addr().octets(), n.prefix_len()),
        IpNet::V6(n) => IpcacheKey::v6(n.addr().octets(), n.prefix_len()),
    };
    Key::new(key.prefixlen, key.prefix())
}

fn prefix_of(key: &Key<IpcachePrefix>) -> Option<IpNet> {
    let data = key.data();
    let bits = key
        .prefix_len()
        .checked_sub(meshfilter_common::ipcache::STATIC_PREFIX_BITS)?;
    let addr = match data.family {
        FAMILY_IPV4 => IpAddr::from([data.addr[0], data.addr[1], data.addr[2], data.addr[3]]),
        FAMILY_IPV6 => IpAddr::from(data.addr),
        _ => return None,
    };
    IpNet::new(addr, bits as u8).ok()
}

/// Refuses to run against something that is not Cilium's ipcache layout, and never
/// creates the pin (aya would create a fresh map at a missing pin path).
fn check_cilium_map(pin: &Path) -> Result<(), DatapathError> {
    let bad = |reason: String| DatapathError::CiliumMap {
        path: pin.to_path_buf(),
        reason,
    };
    if !pin.exists() {
        return Err(bad(
            "no pinned map there: is the Cilium agent running on this node?".into(),
        ));
    }
    let map = MapData::from_pin(pin).map_err(|e| bad(e.to_string()))?;
    let info = map.info().map_err(|e| bad(e.to_string()))?;
    let map_type = info.map_type().map_err(|e| bad(e.to_string()))?;
    if map_type != MapType::LpmTrie || info.key_size() != 24 || info.value_size() != 24 {
        return Err(bad(format!(
            "expected an LPM trie with 24-byte keys and values (cilium_ipcache_v2), found {map_type:?} with {}-byte keys and {}-byte values",
            info.key_size(),
            info.value_size()
        )));
    }
    Ok(())
}

/// TCX links (kernel 6.6+) are owned by a file descriptor, so a crashed agent leaves
/// nothing attached; older kernels get classic clsact filters.
fn tcx_supported() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; raise it where allowed.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
    }
}
