//! Loading, configuring and attaching the miss classifier, and the maps it shares with
//! userspace.
//!
//! Two modes: **standalone** keeps its own ipcache (Cilium's `cilium_ipcache_v2` layout)
//! that the agent fills from the local cache, for machines without the Cilium datapath;
//! **cilium** binds the program's ipcache to Cilium's pinned map, which it only reads,
//! and attaches first in the TCX chain returning "next", so Cilium's programs see every
//! packet exactly as before.
//!
//! **Cilium recreates its map.** The cilium-agent unpins and recreates
//! `cilium_ipcache_v2` at every start (`Recreate()`), so a program bound to the map found
//! earlier goes on reading a copy nobody updates. [`Datapath::check_cilium_pin`] (polled
//! by [`Datapath::follow_cilium_pin`], and run before every attach) notices a new map
//! behind the pin by its kernel ID, loads a fresh copy of the program bound to it and to
//! the maps every copy shares (mesh CIDRs, miss ring, counters, dedup, rate limiter), and
//! swaps it into each attachment with one atomic link update: no packet goes
//! unclassified. The pin is only ever opened, never created; while it is missing (the
//! agent between unpin and pin) the old program stays attached and the gap is reported.

use std::net::IpAddr;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Map, MapData, MapType, PerCpuArray, RingBuf};
use aya::programs::links::Link as _;
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader, TestRun as _, TestRunOptions};
use ipnet::IpNet;
use meshfilter_common::ipcache::{
    FAMILY_IPV4, FAMILY_IPV6, IPCACHE_MAX_ENTRIES, IpcacheKey, IpcachePrefix,
    MESH_CIDRS_MAX_ENTRIES, MeshCidr, RemoteEndpointInfo, names, stat, verdict,
};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

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
    /// Entries of the standalone ipcache (Cilium's `IPCACHE_MAP_SIZE` by default); unused
    /// in cilium mode, where the map is Cilium's.
    pub ipcache_entries: u32,
    /// Entries of the mesh pod-CIDR map.
    pub mesh_cidr_entries: u32,
    /// How often the Cilium pin is checked for a recreated map (cilium mode).
    pub pin_poll: Duration,
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
            ipcache_entries: IPCACHE_MAX_ENTRIES,
            mesh_cidr_entries: MESH_CIDRS_MAX_ENTRIES,
            pin_poll: Duration::from_secs(1),
        }
    }
}

/// One attachment of the classifier.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Interface name.
    pub interface: String,
    /// Ingress or egress.
    pub direction: Direction,
}

/// Maps every copy of the program shares, so a copy rebound to a recreated Cilium map
/// keeps the agent's ring and counters, the mesh CIDRs and the dedup and rate-limit state.
const SHARED_MAPS: [&str; 5] = [
    names::MESH_CIDRS,
    names::MISSES,
    names::PENDING,
    names::RATE,
    names::STATS,
];

/// A map held open for binding into the next copy of the program.
struct SharedMap {
    name: &'static str,
    fd: OwnedFd,
    id: u32,
}

/// The loaded copy of the program and the links that attach it. The links are owned
/// here, apart from the copy, so they can be handed to the next copy.
struct Program {
    ebpf: Ebpf,
    links: Vec<(Attachment, SchedClassifierLink)>,
}

/// What is known about Cilium's pin (cilium mode).
struct CiliumPin {
    path: PathBuf,
    reopens: AtomicU64,
    missing: AtomicBool,
    missing_seen: AtomicU64,
    refused: AtomicU64,
    /// The map ID last refused, so a map that stays wrong is reported once.
    refused_id: AtomicU32,
    last_error: Mutex<Option<String>>,
}

/// Cilium's map as the datapath follows it, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliumMapStatus {
    /// The pin followed.
    pub pin: PathBuf,
    /// Kernel ID of the map the program reads now.
    pub map_id: u32,
    /// Times the program was rebound to a recreated map.
    pub reopens: u64,
    /// The pin is missing right now (the agent is recreating the map); the program still
    /// reads the map it had.
    pub pin_missing: bool,
    /// Times the pin was found missing.
    pub pin_missing_seen: u64,
    /// Times a map at the pin was refused (wrong layout) or could not be bound.
    pub refused: u64,
    /// The last problem, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What one look at Cilium's pin found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCheck {
    /// The program reads the map pinned there.
    Unchanged,
    /// A new map is pinned there; the program now reads it.
    Reopened {
        /// Kernel ID of the map read before.
        from: u32,
        /// Kernel ID of the map read now.
        to: u32,
    },
    /// Nothing is pinned there; the program keeps reading the map it had.
    Missing,
    /// Something unusable is pinned there, or binding to it failed; the program keeps
    /// reading the map it had.
    Refused {
        /// Why.
        reason: String,
    },
}

/// The loaded program and its maps.
pub struct Datapath {
    config: DatapathConfig,
    program: Mutex<Program>,
    ipcache: Mutex<LpmTrie<MapData, IpcachePrefix, RemoteEndpointInfo>>,
    mesh_cidrs: Mutex<LpmTrie<MapData, IpcachePrefix, MeshCidr>>,
    stats: PerCpuArray<MapData, u64>,
    ring: Mutex<Option<RingBuf<MapData>>>,
    shared: Vec<SharedMap>,
    program_id: AtomicU32,
    ipcache_id: AtomicU32,
    cilium: Option<CiliumPin>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("mode", &self.config.mode)
            .field("program_id", &self.program_id())
            .field("ipcache_id", &self.ipcache_id())
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

    /// Checks capabilities, loads the object and the program (not attached yet). In
    /// cilium mode the pinned map must be there with Cilium's layout.
    pub fn load(config: &DatapathConfig) -> Result<Datapath, DatapathError> {
        if !Self::available() {
            return Err(DatapathError::NotBuilt);
        }
        caps::require_bpf()?;
        raise_memlock();
        let cilium = match &config.mode {
            IpcacheMode::Standalone => None,
            IpcacheMode::Cilium { pin } => {
                let opened = open_cilium_map(pin).map_err(|problem| DatapathError::CiliumMap {
                    path: pin.clone(),
                    reason: problem.to_string(),
                })?;
                Some((pin.clone(), opened))
            }
        };
        let bind: Vec<Binding<'_>> = cilium
            .iter()
            .map(|(_, (map, id))| (names::IPCACHE, map.fd().as_fd(), *id))
            .collect();
        let (mut ebpf, program_id) = load_program(config, &bind)?;
        drop(bind);
        let mut shared = Vec::with_capacity(SHARED_MAPS.len());
        for name in SHARED_MAPS {
            let data = ebpf
                .map(name)
                .and_then(map_data)
                .ok_or(DatapathError::Missing("map", name))?;
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|error| DatapathError::Bind { map: name, error })?;
            shared.push(SharedMap {
                name,
                fd,
                id: data.info()?.id(),
            });
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or(DatapathError::Missing("map", name))
        };
        let own_ipcache = take(&mut ebpf, names::IPCACHE)?;
        let (ipcache_data, ipcache_id, cilium) = match cilium {
            // The program's own placeholder now names Cilium's map too; userspace reads
            // through the handle opened from the pin.
            Some((path, (data, id))) => (
                Map::LpmTrie(data),
                id,
                Some(CiliumPin {
                    path,
                    reopens: AtomicU64::new(0),
                    missing: AtomicBool::new(false),
                    missing_seen: AtomicU64::new(0),
                    refused: AtomicU64::new(0),
                    refused_id: AtomicU32::new(0),
                    last_error: Mutex::new(None),
                }),
            ),
            None => {
                let id = map_data(&own_ipcache)
                    .ok_or(DatapathError::Missing("map", names::IPCACHE))?
                    .info()?
                    .id();
                (own_ipcache, id, None)
            }
        };
        let ipcache = LpmTrie::try_from(ipcache_data)?;
        let mesh_cidrs = LpmTrie::try_from(take(&mut ebpf, names::MESH_CIDRS)?)?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, names::STATS)?)?;
        let ring = RingBuf::try_from(take(&mut ebpf, names::MISSES)?)?;
        tracing::info!(program_id, ipcache_id, mode = ?config.mode, "eBPF program loaded");
        Ok(Datapath {
            config: config.clone(),
            program: Mutex::new(Program {
                ebpf,
                links: Vec::new(),
            }),
            ipcache: Mutex::new(ipcache),
            mesh_cidrs: Mutex::new(mesh_cidrs),
            stats,
            ring: Mutex::new(Some(ring)),
            shared,
            program_id: AtomicU32::new(program_id),
            ipcache_id: AtomicU32::new(ipcache_id),
            cilium,
        })
    }

    /// Kernel ID of the loaded program (as `bpftool prog show id` prints it); it changes
    /// when the program is rebound to a recreated Cilium map.
    pub fn program_id(&self) -> u32 {
        self.program_id.load(Ordering::Relaxed)
    }

    /// Kernel ID of the ipcache map the program reads (`bpftool map dump id`).
    pub fn ipcache_id(&self) -> u32 {
        self.ipcache_id.load(Ordering::Relaxed)
    }

    /// The ipcache mode.
    pub fn mode(&self) -> &IpcacheMode {
        &self.config.mode
    }

    /// Attaches to an interface: first in its TCX chain on kernels with TCX, through a
    /// clsact qdisc otherwise (removing a copy an earlier crashed run left behind). In
    /// cilium mode the pin is checked first, so a map recreated since loading is the one
    /// read from the first packet on.
    pub fn attach(&self, attachment: &Attachment) -> Result<(), DatapathError> {
        if let Some(check) = self.check_cilium_pin() {
            tracing::debug!(?check, "Cilium's ipcache pin checked before attaching");
        }
        let mut program = self.program.lock();
        let classifier = classifier_mut(&mut program.ebpf)?;
        let link = attach_classifier(classifier, attachment)?;
        tracing::info!(iface = %attachment.interface, direction = ?attachment.direction, "classifier attached");
        program.links.push((attachment.clone(), link));
        Ok(())
    }

    /// Interfaces the classifier is attached to.
    pub fn attachments(&self) -> Vec<Attachment> {
        let program = self.program.lock();
        program.links.iter().map(|(a, _)| a.clone()).collect()
    }

    /// Detaches from every interface (also done when the datapath is dropped); a second
    /// call does nothing.
    pub fn detach_all(&self) {
        let links = std::mem::take(&mut self.program.lock().links);
        for (attachment, link) in links {
            match link.detach() {
                Ok(()) => tracing::info!(iface = %attachment.interface, "classifier detached"),
                Err(e) => {
                    tracing::warn!(iface = %attachment.interface, error = %e, "detaching the classifier")
                }
            }
        }
    }

    /// Looks at Cilium's pin (cilium mode; `None` in standalone mode) and rebinds the
    /// program when a new map is pinned there. Blocking: a rebind loads and verifies a
    /// copy of the program.
    pub fn check_cilium_pin(&self) -> Option<PinCheck> {
        let cilium = self.cilium.as_ref()?;
        let span = tracing::info_span!("cilium_pin", pin = %cilium.path.display());
        let _entered = span.enter();
        // One check at a time: the program lock also orders it with attach and detach.
        let mut program = self.program.lock();
        let current = self.ipcache_id();
        let (map, id) = match open_cilium_map(&cilium.path) {
            Ok(opened) => opened,
            Err(PinProblem::Missing) => {
                if !cilium.missing.swap(true, Ordering::Relaxed) {
                    cilium.missing_seen.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        map_id = current,
                        "Cilium's ipcache pin is missing (agent restarting?); still reading the map it held"
                    );
                }
                return Some(PinCheck::Missing);
            }
            Err(PinProblem::Foreign(id, reason)) => return Some(cilium.refuse(id, reason)),
            Err(problem) => return Some(cilium.refuse(0, problem.to_string())),
        };
        if cilium.missing.swap(false, Ordering::Relaxed) {
            tracing::info!(map_id = id, "Cilium's ipcache pin is back");
        }
        if id == current {
            return Some(PinCheck::Unchanged);
        }
        match self.rebind(&mut program, map, id) {
            Ok(()) => {
                cilium.reopens.fetch_add(1, Ordering::Relaxed);
                *cilium.last_error.lock() = None;
                tracing::info!(
                    from = current,
                    to = id,
                    program_id = self.program_id(),
                    "Cilium recreated its ipcache: the program now reads the new map"
                );
                Some(PinCheck::Reopened {
                    from: current,
                    to: id,
                })
            }
            Err(e) => Some(cilium.refuse(id, format!("binding to map {id}: {e}"))),
        }
    }

    /// Checks Cilium's pin every `pin_poll` until cancelled (cilium mode; returns at once
    /// in standalone mode). Each check runs off the async workers.
    pub async fn follow_cilium_pin(self: Arc<Self>, cancel: CancellationToken) {
        if self.cilium.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(self.config.pin_poll.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let datapath = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || datapath.check_cilium_pin()).await {
                tracing::warn!(error = %e, "checking Cilium's ipcache pin");
            }
        }
    }

    /// Cilium's map as followed so far (`None` in standalone mode).
    pub fn cilium_map(&self) -> Option<CiliumMapStatus> {
        let c = self.cilium.as_ref()?;
        Some(CiliumMapStatus {
            pin: c.path.clone(),
            map_id: self.ipcache_id(),
            reopens: c.reopens.load(Ordering::Relaxed),
            pin_missing: c.missing.load(Ordering::Relaxed),
            pin_missing_seen: c.missing_seen.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            last_error: c.last_error.lock().clone(),
        })
    }

    /// Loads a copy of the program bound to `map` and the shared maps, and swaps it into
    /// every link of `program` (an atomic replace of the link's program: the old copy runs
    /// until the new one does).
    fn rebind(&self, program: &mut Program, map: MapData, id: u32) -> Result<(), DatapathError> {
        let (mut ebpf, program_id) = {
            let mut bind: Vec<Binding<'_>> = self
                .shared
                .iter()
                .map(|s| (s.name, s.fd.as_fd(), s.id))
                .collect();
            bind.push((names::IPCACHE, map.fd().as_fd(), id));
            load_program(&self.config, &bind)?
        };
        let classifier = classifier_mut(&mut ebpf)?;
        let mut links = Vec::with_capacity(program.links.len());
        for (attachment, link) in std::mem::take(&mut program.links) {
            let replaced = classifier
                .attach_to_link(link)
                .and_then(|id| classifier.take_link(id));
            match replaced {
                Ok(link) => links.push((attachment, link)),
                Err(e) => {
                    // The old link is gone with the failed update: attach anew, so the
                    // interface is not left without the classifier.
                    tracing::error!(iface = %attachment.interface, error = %e, "replacing the program in place failed; attaching it again");
                    match attach_classifier(classifier, &attachment) {
                        Ok(link) => links.push((attachment, link)),
                        Err(e) => {
                            tracing::error!(iface = %attachment.interface, error = %e, "the classifier is no longer attached here")
                        }
                    }
                }
            }
        }
        // The old copy is unloaded here; its links now run the new one.
        program.ebpf = ebpf;
        program.links = links;
        *self.ipcache.lock() = LpmTrie::try_from(Map::LpmTrie(map))?;
        self.ipcache_id.store(id, Ordering::Relaxed);
        self.program_id.store(program_id, Ordering::Relaxed);
        Ok(())
    }

    /// Takes the ring buffer of miss events (once).
    pub fn take_events(&self) -> Option<RingBuf<MapData>> {
        self.ring.lock().take()
    }

    /// Adds or replaces an ipcache entry (standalone mode only: Cilium's map is Cilium's).
    /// A full map is [`DatapathError::MapFull`].
    pub fn upsert_ipcache(
        &self,
        prefix: IpNet,
        info: RemoteEndpointInfo,
    ) -> Result<(), DatapathError> {
        self.require_standalone()?;
        let key = lpm_key(prefix);
        self.ipcache
            .lock()
            .insert(&key, info, 0)
            .map_err(|e| map_write_error(names::IPCACHE, e))
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

    /// Declares a prefix as a pod CIDR of a mesh cluster. A full map is
    /// [`DatapathError::MapFull`].
    pub fn upsert_mesh_cidr(&self, prefix: IpNet, cluster_id: u16) -> Result<(), DatapathError> {
        let value = MeshCidr {
            cluster_id,
            prefixlen: prefix.prefix_len(),
            pad: [0; 5],
        };
        self.mesh_cidrs
            .lock()
            .insert(&lpm_key(prefix), value, 0)
            .map_err(|e| map_write_error(names::MESH_CIDRS, e))
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

    /// Runs the current copy of the program once on `frame` with `BPF_PROG_TEST_RUN` (no
    /// interface needed); returns the TC verdict and the kernel's mean run time.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(i32, Duration), DatapathError> {
        let program = self.program.lock();
        let classifier: &SchedClassifier = program
            .ebpf
            .program(names::PROGRAM)
            .ok_or(DatapathError::Missing("program", names::PROGRAM))?
            .try_into()?;
        let result = classifier.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: repeat.max(1),
            ..Default::default()
        })?;
        Ok((result.return_value as i32, result.duration))
    }

    fn require_standalone(&self) -> Result<(), DatapathError> {
        match self.config.mode {
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

impl CiliumPin {
    /// Records a refused map and says so: counted and logged once per map (a map that
    /// stays wrong is seen at every poll), every time when its ID is unknown (0).
    fn refuse(&self, id: u32, reason: String) -> PinCheck {
        if id == 0 || self.refused_id.swap(id, Ordering::Relaxed) != id {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::error!(map_id = id, %reason, "not switching to the map at Cilium's pin; still reading the map held");
        }
        *self.last_error.lock() = Some(reason.clone());
        PinCheck::Refused { reason }
    }
}

/// A map to bind into a copy of the program: its name in the object, a descriptor of the
/// map to use instead of a fresh one, and that map's kernel ID.
type Binding<'a> = (&'static str, BorrowedFd<'a>, u32);

/// Loads one copy of the program. Each binding replaces the map the loader created under
/// its name before the program goes to the verifier, so the copy uses the given map
/// instead: how copies share maps, and how the program reads Cilium's map without the
/// loader ever being given the pin path (where a missing pin would make it create one).
/// Returns the copy and its program ID.
fn load_program(
    config: &DatapathConfig,
    bind: &[Binding<'_>],
) -> Result<(Ebpf, u32), DatapathError> {
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
    // In cilium mode the ipcache is bound to Cilium's map: the loader's own is a
    // one-entry placeholder.
    let ipcache_entries = match config.mode {
        IpcacheMode::Standalone => config.ipcache_entries.max(1),
        IpcacheMode::Cilium { .. } => 1,
    };
    let mut loader = EbpfLoader::new();
    loader
        .override_global(names::DEDUP_NS, &dedup_ns, true)
        .override_global(names::RATE_INTERVAL_NS, &interval_ns, true)
        .override_global(names::RATE_BURST_NS, &burst_ns, true)
        .override_global(names::MISS_VERDICT, &miss_verdict, true)
        .override_global(names::CHECK_SOURCE, &check_source, true)
        .map_max_entries(names::IPCACHE, ipcache_entries)
        .map_max_entries(names::MESH_CIDRS, config.mesh_cidr_entries.max(1));
    let mut ebpf = loader.load(OBJECT)?;
    for &(name, fd, _) in bind {
        let placeholder = ebpf
            .map(name)
            .and_then(map_data)
            .ok_or(DatapathError::Missing("map", name))?
            .fd()
            .as_fd()
            .as_raw_fd();
        // SAFETY: `placeholder` is a descriptor the loader owns (inside `ebpf`, alive for
        // the whole call) and the not yet loaded program's instructions name; `fd` is open
        // (borrowed). dup2 atomically makes the placeholder's number refer to `fd`'s map;
        // the loader still owns and later closes that number, `fd` stays the caller's.
        if unsafe { libc::dup2(fd.as_raw_fd(), placeholder) } < 0 {
            return Err(DatapathError::Bind {
                map: name,
                error: std::io::Error::last_os_error(),
            });
        }
    }
    let classifier = classifier_mut(&mut ebpf)?;
    classifier.load()?;
    let info = classifier.info()?;
    // The verifier resolved the descriptors: make sure it saw the bound maps.
    if let Some(ids) = info.map_ids()? {
        for &(name, _, id) in bind {
            if !ids.contains(&id) {
                return Err(DatapathError::Bind {
                    map: name,
                    error: std::io::Error::other(format!(
                        "the loaded program uses maps {ids:?}, not {id}"
                    )),
                });
            }
        }
    }
    Ok((ebpf, info.id()))
}

fn classifier_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DatapathError> {
    Ok(ebpf
        .program_mut(names::PROGRAM)
        .ok_or(DatapathError::Missing("program", names::PROGRAM))?
        .try_into()?)
}

/// Attaches `classifier` (first in the TCX chain, or by netlink without TCX) and hands
/// the link over to the caller.
fn attach_classifier(
    classifier: &mut SchedClassifier,
    attachment: &Attachment,
) -> Result<SchedClassifierLink, DatapathError> {
    let iface = attachment.interface.as_str();
    let attach_type = TcAttachType::from(attachment.direction);
    let attach_error = |source| DatapathError::Attach {
        interface: iface.to_string(),
        error: source,
    };
    let id = if tcx_supported() {
        classifier
            .attach_with_options(
                iface,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(attach_error)?
    } else {
        if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
            tracing::debug!(iface, error = %e, "clsact qdisc present or not added");
        }
        // A netlink filter outlives its process: remove what a crashed run left.
        if aya::programs::tc::qdisc_detach_program(iface, attach_type, names::PROGRAM).is_ok() {
            tracing::warn!(iface, "removed a stale meshfilter classifier");
        }
        classifier
            .attach_with_options(
                iface,
                attach_type,
                TcAttachOptions::Netlink(NlOptions::default()),
            )
            .map_err(attach_error)?
    };
    Ok(classifier.take_link(id)?)
}

/// The kernel object behind the map kinds the program declares.
fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::LpmTrie(data)
        | Map::RingBuf(data)
        | Map::LruHashMap(data)
        | Map::Array(data)
        | Map::PerCpuArray(data) => Some(data),
        _ => None,
    }
}

/// A failed map write, with a full map told apart: `ENOSPC` from an LPM trie, `E2BIG`
/// from hash maps.
fn map_write_error(map: &'static str, error: aya::maps::MapError) -> DatapathError {
    if let aya::maps::MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) = &error
        && matches!(io_error.raw_os_error(), Some(libc::ENOSPC | libc::E2BIG))
    {
        return DatapathError::MapFull { map };
    }
    DatapathError::Map(error)
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

/// Why the map at Cilium's pin cannot be used.
#[derive(Debug, thiserror::Error)]
enum PinProblem {
    /// Nothing is pinned there.
    #[error("no pinned map there: is the Cilium agent running on this node?")]
    Missing,
    /// The pin could not be opened.
    #[error("opening the pin: {0}")]
    Unreadable(aya::maps::MapError),
    /// Something else than Cilium's ipcache is pinned there (map ID, what it is).
    #[error("{1}")]
    Foreign(u32, String),
}

/// Opens the map pinned at `pin` if it has Cilium's ipcache layout, with its kernel ID.
/// Only ever opens (`BPF_OBJ_GET`): a missing pin stays missing.
fn open_cilium_map(pin: &Path) -> Result<(MapData, u32), PinProblem> {
    let map = match MapData::from_pin(pin) {
        Ok(map) => map,
        Err(aya::maps::MapError::SyscallError(aya::sys::SyscallError { io_error, .. }))
            if io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            return Err(PinProblem::Missing);
        }
        Err(e) => return Err(PinProblem::Unreadable(e)),
    };
    let info = map.info().map_err(PinProblem::Unreadable)?;
    let map_type = info.map_type().map_err(PinProblem::Unreadable)?;
    if map_type != MapType::LpmTrie || info.key_size() != 24 || info.value_size() != 24 {
        return Err(PinProblem::Foreign(
            info.id(),
            format!(
                "expected an LPM trie with 24-byte keys and values (cilium_ipcache_v2), found {map_type:?} with {}-byte keys and {}-byte values (map {})",
                info.key_size(),
                info.value_size(),
                info.id()
            ),
        ));
    }
    Ok((map, info.id()))
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
